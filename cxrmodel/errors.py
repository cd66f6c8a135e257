"""The one exception family callers of `cxrmodel` handle.

Messages are a single line and never contain patient data (no names, IDs, UIDs from the file),
so the daemon can log them and print them as they are.
"""
from __future__ import annotations


class ModelError(Exception):
    """Anything the model library cannot do with what it was given (bad image, bad weights, no model)."""


class ImageError(ModelError):
    """The input is not a single-frame grayscale radiograph we can read."""


class NoModelError(ModelError):
    """The registry holds no model (or no current one) yet."""

    def __init__(self, message: str | None = None):
        super().__init__(message or "no model is installed yet: run `cxrd train` or "
                                    "`cxrd model import FILE --format ...` (then `cxrd model promote`)")


class IntegrityError(ModelError):
    """A model's weights file does not match the sha256 recorded in its manifest."""


class DuplicateModelError(ModelError):
    """The weights being added are the very file (same sha256, same format and mapping) of a version
    already in the registry; `version` names it."""

    def __init__(self, message: str, version: str):
        super().__init__(message)
        self.version = version
