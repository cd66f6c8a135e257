"""Read a PDU in a few large socket reads instead of pynetdicom's 4 KiB ones.

pynetdicom's `AssociationSocket.recv` loops over `socket.recv(4096)` and grows a bytearray, so a
1 MB image costs ~256 system calls and as many Python loop turns. On this machine that was ~0.5 ms
of CPU per image, in the thread that holds the GIL while the image arrives. Here the PDU is read
straight into a buffer of its final size, as much per call as the kernel has. Contract unchanged:
block until `nr_bytes` are read; return what arrived if the peer closed; exceptions (timeouts,
resets) propagate to pynetdicom, which handles them as before.
"""
from __future__ import annotations

from pynetdicom.transport import AssociationSocket

_original = AssociationSocket.recv


def install() -> None:
    """Use `recv` below for every association (idempotent)."""
    AssociationSocket.recv = recv  # type: ignore[method-assign]


def uninstall() -> None:
    AssociationSocket.recv = _original  # type: ignore[method-assign]


def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    buf = bytearray(nr_bytes)
    got = 0
    with memoryview(buf) as view:
        while got < nr_bytes:
            n = self.socket.recv_into(view[got:], nr_bytes - got)
            if not n:  # connection closed: what arrived, as pynetdicom's own recv returns
                break
            got += n
    if got < nr_bytes:
        del buf[got:]
    return buf
