"""Read a PDU in a few large socket reads instead of pynetdicom's 4 KiB ones.

pynetdicom's `AssociationSocket.recv` loops over `socket.recv(4096)` and grows a bytearray: one
system call and one Python loop turn per 4 KiB of every image, in the thread that holds the GIL
while the image arrives. Here the PDU is read straight into a buffer of its final size, as much
per call as the kernel has. Contract unchanged: block until `nr_bytes` are read; return what
arrived if the peer closed; exceptions (timeouts, resets) propagate to pynetdicom, which handles
them as before.

`read_pdu_data` replaces the DUL's own PDU reader for the same reason at the next level up:
pynetdicom copies each P-DATA-TF body several times before the DIMSE layer sees it (appended to
the header, `bytes()` of the whole PDU for an event nobody listens to, a slice per PDV item, a
slice without the message control header). Here the header and body are read into one buffer and
a P-DATA-TF is decoded from a memoryview, so its PDV values are views of that buffer, copied once,
into the DIMSE message's data set. Every other PDU type, or any association with EVT_DATA_RECV /
EVT_PDU_RECV handlers bound, goes through pynetdicom's own `_decode_pdu` exactly as before; the
FSM events for short reads, unknown types and undecodable PDUs are unchanged (Evt17, Evt19).
Like every reader of an accepted association it checks the peer's length field against
`daemon.dicom.pdu_limits.largest_pdu` before it allocates: the buffer is sized from the PDU's
length only once that length is within what we accept.

Only associations cxrd accepted take these paths; an association we requested (the results
sender's) reads with pynetdicom's own code whether or not this is installed.
"""
from __future__ import annotations

import logging

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket

from daemon.dicom import pdu_limits

_original = AssociationSocket.recv
_original_read_pdu = DULServiceProvider._read_pdu_data
_LOG = logging.getLogger("pynetdicom.dul")  # pynetdicom's own messages, under its logger

# The upstream functions this module replaces, by qualified name (their source is pinned).
REPLACES = {"pynetdicom.transport.AssociationSocket.recv": _original,
            "pynetdicom.dul.DULServiceProvider._read_pdu_data": _original_read_pdu}


def install() -> None:
    """Put `recv` and `read_pdu_data` below in place (idempotent); they act on accepted associations only."""
    AssociationSocket.recv = recv  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]


def uninstall() -> None:
    AssociationSocket.recv = _original  # type: ignore[method-assign]
    DULServiceProvider._read_pdu_data = _original_read_pdu  # type: ignore[method-assign]


def installed() -> bool:
    return AssociationSocket.recv is recv


@pdu_limits.enforces_pdu_limit
def read_pdu_data(self: DULServiceProvider) -> None:
    """One PDU from the socket into the FSM's queues (pynetdicom's `_read_pdu_data` contract)."""
    if not self.assoc.is_acceptor:
        _original_read_pdu(self)
        return
    sock = self.socket
    header = pdu_limits.read_header(self)
    if header is None:
        return
    head, pdu_type, pdu_length = header
    limit = pdu_limits.largest_pdu(self)
    try:
        if limit is None:  # dicom.max_pdu = 0 and accepted: grow with what arrives, as upstream does
            buf = bytearray(head)
            buf += _original(sock, pdu_length)
            got = len(buf) - 6
        elif pdu_length > limit:
            pdu_limits.refuse(self, pdu_type, pdu_length, limit)
            return
        else:
            buf = bytearray(6 + pdu_length)
            buf[:6] = head
            got = _recv_into(sock.socket, memoryview(buf)[6:], pdu_length)
    except (OSError, TimeoutError):
        _LOG.error("Connection closed before the entire PDU was received")
        self.event_queue.put("Evt17")
        return
    if got != pdu_length:
        _LOG.error(f"The received PDU is shorter than expected ({6 + got} of {6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    try:
        if pdu_type == 0x04 and not (self.assoc.get_handlers(evt.EVT_DATA_RECV)
                                     or self.assoc.get_handlers(evt.EVT_PDU_RECV)):
            pdu, event = P_DATA_TF(), "Evt10"
            pdu.decode(memoryview(buf))  # PDV values become views of `buf`, not copies
        else:
            pdu, event = self._decode_pdu(buf)
    except Exception:
        _LOG.error("Unable to decode the received PDU data")
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _recv_into(raw_socket, view: memoryview, nr_bytes: int) -> int:  # noqa: ANN001 - socket or SSLSocket
    got = 0
    while got < nr_bytes:
        n = raw_socket.recv_into(view[got:], nr_bytes - got)
        if not n:  # connection closed
            break
        got += n
    return got


def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    if not self.assoc.is_acceptor:
        return _original(self, nr_bytes)
    buf = bytearray(nr_bytes)
    with memoryview(buf) as view:
        got = _recv_into(self.socket, view, nr_bytes)
    if got < nr_bytes:  # connection closed: what arrived, as pynetdicom's own recv returns
        del buf[got:]
    return buf
