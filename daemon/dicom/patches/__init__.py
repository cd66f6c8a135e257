"""cxrd's adjustments to pynetdicom's receive path (and one pydicom check), installed as one.

Each module here replaces an upstream function with one that keeps its contract and does less
work per image or per association; why each exists is in its own docstring and in
docs/performance.md. What must stay true of the set:

- `install()` is the one entry point, called once by the service before the SCP starts. Starting
  the SCP installs nothing, so the SCP works, more slowly, on stock pynetdicom.
- They are installed only on exactly the library versions they were written for (`WRITTEN_FOR`)
  and only while the source of every upstream function they replace still hashes to the value
  pinned in `PINNED`. Otherwise nothing is installed, one log line says why, and cxrd serves with
  stock pynetdicom: an upgrade costs speed, never correctness. The operator can also switch them
  off (`dicom.receive_adjustments = false`).
- They act on associations cxrd accepted. An association cxrd requests (the results sender's)
  runs pynetdicom's own code whether or not they are installed. The exception is `uid_checks`, a
  memo of a pure function that answers exactly as pydicom does, which cannot tell who asks.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Callable

import pydicom
import pynetdicom

from daemon.dicom.patches import fast_recv, reactor_waits, store_rsp, uid_checks
from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")

WRITTEN_FOR = {"pynetdicom": "3.0.4", "pydicom": "3.0.2"}

# sha256 of `inspect.getsource(...)` of every upstream function the adjustments replace. When an
# upgrade changes one, re-read that function, check the adjustment still keeps its contract, and
# re-pin (tests/daemon/dicom/patches/test_pinned_upstream.py prints the current values).
PINNED = {
    "pynetdicom.transport.AssociationSocket.recv":
        "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
    "pynetdicom.dul.DULServiceProvider._read_pdu_data":
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "pynetdicom.dul.DULServiceProvider.run_reactor":
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.association.Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg":
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
    "pydicom.uid.UID.is_valid":
        "5c38fc3862d1fa310326f21003e26f2d66344776512b5a571a37c99173c72f4a",
}

_ADJUSTMENTS = (reactor_waits, fast_recv, store_rsp, uid_checks)


def running_versions() -> dict[str, str]:
    """The versions of the libraries as the running process imported them."""
    return {"pynetdicom": pynetdicom.__version__, "pydicom": pydicom.__version__}


def upstream() -> dict[str, Callable]:
    """Every upstream function an adjustment replaces, by qualified name, as upstream wrote it."""
    out: dict[str, Callable] = {}
    for module in _ADJUSTMENTS:
        out.update(module.REPLACES)
    return out


def source_sha256(function: Callable) -> str:
    """sha256 of the function's source text; "unavailable" where the source cannot be read."""
    try:
        return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
    except (OSError, TypeError):
        return "unavailable"


def changed_upstream() -> list[str]:
    """Qualified names of replaced upstream functions whose source is not the pinned one."""
    return sorted(name for name, function in upstream().items()
                  if PINNED.get(name) != source_sha256(function))


def refusal(enabled: bool = True) -> str | None:
    """Why the adjustments must not be installed in this process, or None if they may."""
    if not enabled:
        return "switched off (dicom.receive_adjustments = false)"
    running = running_versions()
    if running != WRITTEN_FOR:
        return ("written for " + ", ".join(f"{k} {v}" for k, v in WRITTEN_FOR.items())
                + "; running " + ", ".join(f"{k} {v}" for k, v in running.items()))
    changed = changed_upstream()
    if changed:
        return "upstream source differs from the pinned source: " + ", ".join(changed)
    return None


def install(enabled: bool = True) -> bool:
    """Install every adjustment, or none (logging why); True if installed. Idempotent."""
    reason = refusal(enabled)
    if reason is not None:
        event(log, "dicom.adjustments", logging.INFO if not enabled else logging.WARNING,
              installed="no", pynetdicom="stock", reason=reason)
        return False
    for module in _ADJUSTMENTS:
        module.install()
    event(log, "dicom.adjustments", installed="yes", **running_versions())
    return True


def uninstall() -> None:
    """Put every replaced upstream function back (tests; a running daemon never needs it)."""
    for module in _ADJUSTMENTS:
        module.uninstall()


def installed() -> bool:
    """True while any adjustment is installed in this process."""
    return any(module.installed() for module in _ADJUSTMENTS)

