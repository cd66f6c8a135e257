"""Settings for cxrd: the typed schema, and loading it from TOML and the environment."""
from config.loader import ConfigError, load_settings, redacted
from config.schema import Settings

__all__ = ["ConfigError", "Settings", "load_settings", "redacted"]
