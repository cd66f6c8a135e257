"""Adjustments to pynetdicom internals on the receive path, kept in one place."""
