"""One module per area of the console, each with a module-level `routes` list (see `app.PAGES`)."""
