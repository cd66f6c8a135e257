"""How large a PDU an accepted association may send us, and what happens to one that is larger.

Every PDU starts with a 32-bit length chosen by the peer. Before anything else is known about a
peer, that word must not decide how much memory we hold: `01 00 FF FF FF FF` announces a 4 GiB
A-ASSOCIATE-RQ. So every PDU reader of an association cxrd accepted checks the length against
`largest_pdu` before it allocates or reads the body, and hands a larger one to `refuse`, which
sends an A-ABORT and closes the connection without reading further.

This holds whether or not the receive adjustments (`daemon.dicom.patches`) are installed: their
reader checks the bound itself and says so (`enforces_pdu_limit`); when pynetdicom's own reader is
in place, the SCP gives each accepted association `read_pdu_data` below instead (`bind`), which is
pynetdicom's reader with the check. Associations cxrd requests (the results sender's) are
untouched: they talk to the PACS we chose.
"""
from __future__ import annotations

import logging
import struct
from types import MethodType
from typing import Callable

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")
_LOG = logging.getLogger("pynetdicom.dul")  # pynetdicom's own messages, under its logger

# The largest PDU a peer may send before its association is accepted. An A-ASSOCIATE-RQ carries at
# most 128 presentation contexts (odd IDs 1-255); with 64-character UIDs and one transfer syntax
# each that is about 18 KB, plus a few KB of user information (role selection, extended
# negotiation). 64 KiB leaves room for several transfer syntaxes per context while bounding what an
# unauthenticated connection can make us hold.
PREASSOCIATION_MAX_PDU = 64 * 1024

# FSM states in which the association is accepted (PS3.8 9.2: Sta6 established, Sta7-12 release).
_ACCEPTED_STATES = frozenset({"Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12"})

_PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT, source: service provider; reason: invalid PDU parameter value (PS3.8 9.3.8).
_ABORT = A_ABORT_RQ()
_ABORT.source = 0x02
_ABORT.reason_diagnostic = 0x06
_ABORT_BYTES = _ABORT.encode()

_upstream_read_pdu = DULServiceProvider._read_pdu_data

# The upstream function `read_pdu_data` restates (with the bound added); its source is pinned in
# tests/daemon/dicom/test_pdu_limits.py, so an upgrade that changes it is re-read before release.
REPLACES = {"pynetdicom.dul.DULServiceProvider._read_pdu_data": _upstream_read_pdu}


def largest_pdu(dul: DULServiceProvider) -> int | None:
    """The largest PDU length field we accept now; None = no bound (`dicom.max_pdu = 0`, accepted,
    on an association without a data set bound).

    Until the association is accepted: `PREASSOCIATION_MAX_PDU`. After: the Maximum Length we
    advertised (a P-DATA-TF's length field counts its variable field, PS3.8 D.1), never less than
    the pre-association bound; with `max_pdu = 0`, what one message may hold
    (`cxrd_max_message_bytes`, set by `dataset_limits`), since no larger PDU could be kept anyway.
    Read in the DUL thread, which also moves the state machine, so the state seen here is the one
    the PDU arrives in."""
    if dul.state_machine.current_state not in _ACCEPTED_STATES:
        return PREASSOCIATION_MAX_PDU
    ours = dul.assoc.acceptor.maximum_length
    if ours:
        return max(ours, PREASSOCIATION_MAX_PDU)
    return getattr(dul, "cxrd_max_message_bytes", None)


def refuse(dul: DULServiceProvider, pdu_type: int, pdu_length: int, limit: int) -> None:
    """Abort for a PDU longer than `limit` without reading its body: send an A-ABORT and report
    the transport closed (Evt17), so the state machine closes the socket and frees the slot."""
    event(log, "pdu.refused", logging.WARNING, host=dul.assoc.requestor.address,
          pdu_type=f"0x{pdu_type:02X}", length=pdu_length, limit=limit)
    raw = dul.socket.socket if dul.socket is not None else None
    if raw is not None:
        try:
            raw.sendall(_ABORT_BYTES)
        except (OSError, ValueError):
            pass  # the peer is gone already; closing is all that is left
    dul.event_queue.put("Evt17")


def cut_off(dul: DULServiceProvider) -> None:
    """Abort an accepted association from inside the state machine (Evt19: A-ABORT, as pynetdicom
    does for an invalid DIMSE message) and read nothing more from it: once the A-ABORT is out
    (Sta13), the transport is closed instead of reading and ignoring whatever the peer still sends."""
    dul.cxrd_cut_off = True  # type: ignore[attr-defined]
    dul.event_queue.put("Evt19")


def read_header(dul: DULServiceProvider) -> tuple[bytes, int, int] | None:
    """The next PDU's 6-byte header, type and length; None once the state machine has been told why
    there is nothing to read (Evt17: closed or short; Evt19: an unknown PDU type), as upstream does,
    or after `cut_off` (nothing is read)."""
    if getattr(dul, "cxrd_cut_off", False):
        if dul.state_machine.current_state == "Sta13" and dul.socket is not None:
            dul.socket.close()  # Evt17 once: the state machine goes to Sta1
        return None
    try:
        head = dul.socket.recv(6)
    except (OSError, TimeoutError):
        _LOG.error("Connection closed before the entire PDU was received")
        dul.event_queue.put("Evt17")
        return None
    if len(head) != 6:
        dul.event_queue.put("Evt17")
        return None
    pdu_type, _, pdu_length = struct.unpack(">BBL", head)
    if pdu_type not in _PDU_TYPES:
        _LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        dul.event_queue.put("Evt19")
        return None
    return bytes(head), pdu_type, pdu_length


def enforces_pdu_limit(reader: Callable) -> Callable:
    """Mark a PDU reader that checks `largest_pdu` itself (the adjusted reader)."""
    reader.enforces_pdu_limit = True  # type: ignore[attr-defined]
    return reader


def bind(dul: DULServiceProvider) -> None:
    """Make sure this accepted association's PDU reader checks the bound: if the class's reader
    does not (pynetdicom's own), this association reads with `read_pdu_data`."""
    if not getattr(type(dul)._read_pdu_data, "enforces_pdu_limit", False):
        dul._read_pdu_data = MethodType(read_pdu_data, dul)  # type: ignore[method-assign]


@enforces_pdu_limit
def read_pdu_data(self: DULServiceProvider) -> None:
    """pynetdicom's `_read_pdu_data`, with the length checked before the body is read.

    Same events as upstream (Evt17 for a closed or short read, Evt19 for an unknown type or an
    undecodable PDU); upstream's error messages without its tracebacks, which say nothing a peer's
    closed connection needs."""
    sock = self.socket
    header = read_header(self)
    if header is None:
        return
    head, pdu_type, pdu_length = header
    limit = largest_pdu(self)
    if limit is not None and pdu_length > limit:
        refuse(self, pdu_type, pdu_length, limit)
        return
    try:
        body = sock.recv(pdu_length)
    except (OSError, TimeoutError):
        _LOG.error("Connection closed before the entire PDU was received")
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        _LOG.error(f"The received PDU is shorter than expected ({6 + len(body)} of "
                   f"{6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    try:
        pdu, fsm_event = self._decode_pdu(head + body)
    except Exception:
        _LOG.error("Unable to decode the received PDU data")
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(fsm_event)
    self._recv_pdu.put(pdu)
