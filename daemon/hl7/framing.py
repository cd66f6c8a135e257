"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <SB> message <EB><CR>, read with a hard bound.

Every byte is the peer's: a frame has no length field, so memory is bounded by `max_bytes`, never
by anything the peer says. A frame that grows past it is refused with only its first bytes kept
(enough to address an AR at its sender); bytes before a start block other than CR/LF between frames
are a framing error (the connection is closed: we cannot know where the next message begins), and
so is an end block followed by anything but CR (EB is not a character any HL7 text may hold). A
frame must be complete within `read_timeout_s` of its first byte, so a peer trickling bytes cannot
hold a connection slot forever; between frames the socket's own (idle) time-out applies.
"""
from __future__ import annotations

import socket
import time
from typing import Protocol

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
HEAD_BYTES = 2048  # what is kept of an oversize frame: its MSH segment, to address the AR
CHUNK = 65536


class FramingError(Exception):
    """The stream is not MLLP (or ended inside a frame); the connection must be closed."""


class FrameTooLarge(Exception):
    """A frame grew past the bound; `head` holds its first bytes (for the AR's MSH)."""

    def __init__(self, head: bytes, limit: int):
        super().__init__(f"message larger than {limit} bytes")
        self.head = head


class FrameTimeout(Exception):
    """A frame was not complete within the read time-out."""


class Sock(Protocol):
    def recv(self, n: int) -> bytes: ...
    def settimeout(self, t: float | None) -> None: ...


class FrameReader:
    """Reads frames from one connection; keeps at most `max_bytes` + one chunk in memory."""

    def __init__(self, sock: Sock, max_bytes: int, idle_timeout_s: float, read_timeout_s: float):
        self.sock = sock
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self._buf = bytearray()

    def _recv(self, deadline: float | None) -> bytes:
        if deadline is None:
            self.sock.settimeout(self.idle_timeout_s)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameTimeout("message not complete within the read time-out")
            self.sock.settimeout(left)
        try:
            return self.sock.recv(CHUNK)
        except socket.timeout:
            if deadline is None:
                raise
            raise FrameTimeout("message not complete within the read time-out") from None

    def next_frame(self) -> bytes | None:
        """The payload of the next frame, or None when the peer closed cleanly between frames.
        Raises FramingError, FrameTooLarge, FrameTimeout, or socket.timeout when idle too long."""
        deadline: float | None = None
        while True:  # skip CR/LF between frames; find the start block
            stripped = self._buf.lstrip(b"\r\n")
            del self._buf[:len(self._buf) - len(stripped)]
            if self._buf:
                if self._buf[:1] != SB:
                    raise FramingError("data outside an MLLP frame (no start block)")
                break
            data = self._recv(None)
            if not data:
                return None
            self._buf += data
        deadline = time.monotonic() + self.read_timeout_s
        scanned = 1
        while True:
            end = self._buf.find(EB + CR, scanned)
            stray = self._buf.find(EB, scanned, len(self._buf) - 1 if end == -1 else end)
            if stray != -1:  # an end block not followed by CR: where the message ends is unknowable
                raise FramingError("end block without carriage return")
            if end != -1:
                payload = bytes(self._buf[1:end])
                del self._buf[:end + 2]
                if len(payload) > self.max_bytes:
                    raise FrameTooLarge(payload[:HEAD_BYTES], self.max_bytes)
                return payload
            if len(self._buf) - 1 > self.max_bytes + 1:  # +1: a trailing EB may still be waiting for CR
                raise FrameTooLarge(bytes(self._buf[1:1 + HEAD_BYTES]), self.max_bytes)
            scanned = max(1, len(self._buf) - 1)
            data = self._recv(deadline)
            if not data:
                raise FramingError("connection closed inside an MLLP frame")
            self._buf += data


def frame(message: bytes) -> bytes:
    return SB + message + EB + CR
