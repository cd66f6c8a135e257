"""The web console (see daemon/console/app.py)."""
