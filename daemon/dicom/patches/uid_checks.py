"""Standard DICOM UIDs are checked for conformance once per process, not once per mention.

Negotiating an association makes pynetdicom validate every abstract and transfer syntax UID the
peer proposes, each through pydicom's `UID.is_valid` regular expression: for a sender proposing
every storage class, the same few hundred SOP Class and Transfer Syntax UIDs under the DICOM root,
again for every association, holding the GIL, and many senders open an association per study or
per image. The answer for a given string never changes, so UIDs under the DICOM root
(1.2.840.10008.) are remembered; there are a few hundred, and the memo stops growing at `_LIMIT`
so a peer inventing UIDs cannot grow it. Every other UID (instance UIDs, which never repeat) is
checked as before.

This is the one adjustment that is process-wide rather than limited to accepted associations
(`UID.is_valid` cannot tell who asks); it is safe because it returns pydicom's own answer for
every string, which a test checks.
"""
from __future__ import annotations

from pydicom.uid import UID

_DICOM_ROOT = "1.2.840.10008."
_LIMIT = 4096
_original = UID.is_valid
_known: dict[str, bool] = {}

# The upstream function this module replaces, by qualified name (its source is pinned).
REPLACES = {"pydicom.uid.UID.is_valid": _original.fget}


def install() -> None:
    """Memoise `UID.is_valid` for standard UIDs (idempotent)."""
    UID.is_valid = property(_is_valid)  # type: ignore[method-assign, assignment]


def uninstall() -> None:
    UID.is_valid = _original  # type: ignore[method-assign]


def installed() -> bool:
    current = UID.__dict__["is_valid"]
    return isinstance(current, property) and current.fget is _is_valid


def _is_valid(self: UID) -> bool:
    if not self.startswith(_DICOM_ROOT):
        return _original.fget(self)
    known = _known.get(self)
    if known is None:
        known = _original.fget(self)
        if len(_known) < _LIMIT:
            _known[str(self)] = known
    return known
