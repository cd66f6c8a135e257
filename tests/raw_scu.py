"""A minimal DICOM Storage SCU on raw sockets, for tests that must send bytes no well-behaved SCU
would: data sets that are not what they claim, fragments that never end, deflate streams that
inflate to gigabytes. It builds the PDUs itself (PS3.8 9.3), so nothing on our side parses or
checks what is sent, and it costs little CPU per C-STORE (no pynetdicom threads on this side)."""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.3811.99"

ABORTED = "aborted"   # the peer sent an A-ABORT
CLOSED = "closed"     # the connection closed (or reset) without one
TIMED_OUT = "timed out"  # no answer within the socket's timeout
RELEASED = "released"    # the peer answered an A-RELEASE-RQ we sent


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def associate_rq(called: str, calling: str, contexts: list[tuple[str, list[str]]], max_pdu: int = 0) -> bytes:
    """An A-ASSOCIATE-RQ proposing `contexts` (abstract syntax, transfer syntaxes) with IDs 1, 3, 5..."""
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT)
    for i, (abstract, syntaxes) in enumerate(contexts):
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes)
        body += item(0x20, bytes([(2 * i + 1) & 0xFF, 0, 0, 0]) + sub)  # past 128 contexts IDs repeat
    body += item(0x50, item(0x51, struct.pack(">L", max_pdu)) + item(0x52, IMPLEMENTATION_UID))
    return pdu(0x01, body)


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set (implicit VR little endian, PS3.7 9.3.1.1), data set present."""
    rest = (_element(0, 0x0002, _uid(sop_class)) + _element(0, 0x0100, struct.pack("<H", 0x0001))
            + _element(0, 0x0110, struct.pack("<H", message_id & 0xFFFF))
            + _element(0, 0x0700, struct.pack("<H", 0)) + _element(0, 0x0800, struct.pack("<H", 0))
            + _element(0, 0x1000, _uid(sop_instance)))
    return _element(0, 0x0000, struct.pack("<L", len(rest))) + rest


def pdata(context_id: int, control: int, value: bytes) -> bytes:
    """One P-DATA-TF with one PDV (control: bit 0 command, bit 1 last fragment)."""
    return pdu(0x04, struct.pack(">LBB", len(value) + 2, context_id, control) + value)


def command_status(command: bytes) -> int | None:
    """Status (0000,0900) of an implicit VR little endian command set, None if absent."""
    at = 0
    while at + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHL", command, at)
        if (group, elem) == (0, 0x0900) and length == 2:
            return struct.unpack_from("<H", command, at + 8)[0]
        at += 8 + length
    return None


@dataclass
class Association:
    """An established association on a raw socket; `accepted` maps abstract/transfer syntax to context ID."""
    sock: socket.socket
    accepted: dict[tuple[str, str], int] = field(default_factory=dict)
    peer_max_pdu: int = 16384
    message_id: int = 0
    dead: bool = False
    timed_out: bool = False

    def recv_pdu(self) -> tuple[int, bytes] | None:
        head = self._recv_exact(6)
        if head is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", head)
        body = self._recv_exact(length)
        return None if body is None else (pdu_type, body)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                self.timed_out = True
                return None
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def store(self, sop_class: str, transfer_syntax: str, sop_instance: str, data: bytes) -> int | str:
        """Send one C-STORE with `data` as its data set, as is; the response status, ABORTED or CLOSED."""
        cx = self.accepted[(sop_class, transfer_syntax)]
        self.message_id += 1
        chunk = max(self.peer_max_pdu - 6, 1024) if self.peer_max_pdu else 1 << 20
        try:
            self.sock.sendall(pdata(cx, 0x03, c_store_command(sop_class, sop_instance, self.message_id)))
            view = memoryview(data)
            for start in range(0, max(len(data), 1), chunk):
                last = start + chunk >= len(data)
                self.sock.sendall(pdata(cx, 0x02 if last else 0x00, bytes(view[start:start + chunk])))
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            return self._ended()
        return self.response()

    def response(self) -> int | str:
        """The status of the next DIMSE response, ABORTED or CLOSED."""
        command = b""
        while True:
            got = self.recv_pdu()
            if got is None:
                return self._ended(TIMED_OUT if self.timed_out else CLOSED)
            pdu_type, body = got
            if pdu_type == 0x07:
                return self._ended(ABORTED)
            if pdu_type == 0x06:
                return self._ended(RELEASED)
            if pdu_type != 0x04:
                return self._ended(CLOSED)
            at = 0
            while at + 6 <= len(body):
                length, _, control = struct.unpack_from(">LBB", body, at)
                if control & 1:
                    command += body[at + 6:at + 4 + length]
                    if control & 2:
                        status = command_status(command)
                        return status if status is not None else self._ended(CLOSED)
                at += 4 + length

    def _ended(self, how: str = CLOSED) -> str:
        self.dead = True
        self.close()
        return how

    def release(self) -> None:
        if not self.dead:
            try:
                self.sock.sendall(pdu(0x05, bytes(4)))
                self.recv_pdu()
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def associate(port: int, contexts: list[tuple[str, list[str]]], *, called: str = "CXRD",
              calling: str = "FUZZER", timeout: float = 30.0, patience: float = 15.0) -> Association:
    """Open an association on 127.0.0.1:port, asking again while it is rejected (every slot still
    held by associations just aborted) for up to `patience` seconds; AssertionError if never accepted."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return _associate(port, contexts, called, calling, timeout)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _associate(port: int, contexts: list[tuple[str, list[str]]], called: str, calling: str,
               timeout: float) -> Association:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc = Association(sock)
    sock.sendall(associate_rq(called, calling, contexts))
    got = assoc.recv_pdu()
    if got is None or got[0] != 0x02:
        assoc.close()
        raise AssertionError(f"association not accepted: {got[0] if got else 'closed'}")
    body = got[1]
    at = 68
    ids = {2 * i + 1: abstract for i, (abstract, _) in enumerate(contexts)}
    while at + 4 <= len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, at)
        value = body[at + 4:at + 4 + length]
        if item_type == 0x21 and value[2] == 0:  # presentation context, accepted
            sub = value[4:]
            ts = sub[4:4 + struct.unpack_from(">H", sub, 2)[0]].rstrip(b"\0").decode()
            assoc.accepted[(ids[value[0]], ts)] = value[0]
        elif item_type == 0x50:
            sub_at = 0
            while sub_at + 4 <= len(value):
                sub_type, _, sub_len = struct.unpack_from(">BBH", value, sub_at)
                if sub_type == 0x51:
                    assoc.peer_max_pdu = struct.unpack_from(">L", value, sub_at + 4)[0]
                sub_at += 4 + sub_len
        at += 4 + length
    return assoc
