"""`python -m config` prints the documented default settings file (config/cxrd.toml)."""
from config.loader import documented_toml

print(documented_toml(), end="")
