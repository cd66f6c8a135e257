"""Standard DICOM UIDs are checked for conformance once per process, not ~1,400 times per association.

Negotiating one association with dcmtk's storescu (128 presentation contexts, three transfer
syntaxes each) made pynetdicom validate ~1,400 UIDs, each through pydicom's `UID.is_valid` regular
expression, mostly the same few hundred SOP Class and Transfer Syntax UIDs under the DICOM root.
That was several milliseconds of CPU per association, holding the GIL, and many senders open an
association per study or per image. The answer for a given string never changes, so UIDs under
the DICOM root (1.2.840.10008.) are remembered; there are a few hundred, and the memo stops
growing at `_LIMIT` so a peer inventing UIDs cannot grow it. Every other UID (instance UIDs, which
never repeat) is checked as before.
"""
from __future__ import annotations

from pydicom.uid import UID

_DICOM_ROOT = "1.2.840.10008."
_LIMIT = 4096
_original = UID.is_valid
_known: dict[str, bool] = {}


def install() -> None:
    """Memoise `UID.is_valid` for standard UIDs (idempotent)."""
    UID.is_valid = property(_is_valid)  # type: ignore[method-assign, assignment]


def uninstall() -> None:
    UID.is_valid = _original  # type: ignore[method-assign]


def _is_valid(self: UID) -> bool:
    if not self.startswith(_DICOM_ROOT):
        return _original.fget(self)
    known = _known.get(self)
    if known is None:
        known = _original.fget(self)
        if len(_known) < _LIMIT:
            _known[str(self)] = known
    return known
