"""Exception types of `storage` that callers must handle.

Every message is one line and safe to print or log: it may name an object id (a pseudonymous UID),
a file path or a key id, never a patient attribute. The daemon maps these to DICOM statuses and CLI
exit codes; nothing deeper (cryptography, OS errors) should escape to a user as a traceback.
"""
from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised on purpose by `storage`."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used right now; the same request may succeed later.

    Deliberately not a StorageError: callers treat those as final (a result parked, an image failed),
    whereas this one calls for a retry (a DICOM sender gets 0xA700, `/readyz` answers 503). Raised by
    `storage.db` (the message names the URL without its password) and by `storage.rows` (the message
    names only the driver's exception type).
    """


class KeyFileError(StorageError):
    """The master key file or keyring is missing, unreadable, malformed or too permissive."""


class KeyringError(StorageError):
    """A key-encryption-key operation was refused (unknown id, retiring the primary or one in use)."""


class VaultError(StorageError):
    """An object could not be stored or read from the encrypted vault."""


class ObjectNotFoundError(VaultError):
    """No object with this id is in the vault."""

    def __init__(self, object_id: str):
        super().__init__(f"vault object {object_id} not found")
        self.object_id = object_id


class TamperError(VaultError):
    """Authentication failed: the bytes were changed, swapped, truncated or sealed under another key.

    Never comes with partial plaintext. Callers should audit it as a security alert
    (`storage.audit.append(..., event_type="security.tamper", object_uid=err.object_id)`).
    """

    def __init__(self, object_id: str, reason: str = "authentication failed"):
        super().__init__(f"object {object_id} failed integrity check ({reason}): "
                         "tampered, truncated, swapped or sealed under another key")
        self.object_id = object_id
        self.reason = reason


class DeidError(StorageError):
    """A dataset could not be de-identified (e.g. it lacks a SOP Instance UID)."""


class ReidError(StorageError):
    """A re-identification lookup was refused or found nothing."""


class AuditError(StorageError):
    """An audit event could not be recorded (unknown event type, bad details)."""
