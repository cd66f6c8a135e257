"""Everything that persists: database, encrypted vault, keys, de-identification, audit chain."""
