"""MLLP framing: frames found across reads, a hard size bound whatever the peer sends, time-outs."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from daemon.hl7.framing import CHUNK, FrameReader, FrameTimeout, FrameTooLarge, FramingError, frame


class FakeSock:
    """recv() hands out the given pieces one by one, then EOF; counts the bytes handed out."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)
        self.given = 0

    def recv(self, n: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            self.pieces.insert(0, piece[n:])
            piece = piece[:n]
        self.given += len(piece)
        return piece

    def settimeout(self, t: float | None) -> None:
        pass


def test_frames_across_reads_and_between_frame_newlines():
    data = frame(b"MSH|one") + b"\r\n" + frame(b"MSH|two")
    sock = FakeSock([data[i:i + 3] for i in range(0, len(data), 3)])
    r = FrameReader(sock, 1024, 5, 5)
    assert r.next_frame() == b"MSH|one"
    assert r.next_frame() == b"MSH|two"
    assert r.next_frame() is None


def test_oversize_frame_is_refused_after_reading_at_most_the_bound_plus_one_chunk():
    limit = 10_000
    endless = [b"\x0bMSH|^~\\&|RIS|H|CXRD|F|2026||ORU^R01|C1|P|2.5.1\r"] + [b"x" * CHUNK] * 1000  # 64 MiB
    sock = FakeSock(endless)
    with pytest.raises(FrameTooLarge) as exc:
        FrameReader(sock, limit, 5, 5).next_frame()
    assert sock.given <= limit + 2 * CHUNK  # nothing like the 64 MiB offered
    assert exc.value.head.startswith(b"MSH|") and len(exc.value.head) <= 2048


def test_a_frame_exactly_at_the_bound_passes_one_byte_over_does_not():
    assert FrameReader(FakeSock([frame(b"M" * 100)]), 100, 5, 5).next_frame() == b"M" * 100
    with pytest.raises(FrameTooLarge):
        FrameReader(FakeSock([frame(b"M" * 101)]), 100, 5, 5).next_frame()


@pytest.mark.parametrize("data", [b"MSH|no start block\x1c\r", b"\x0bMSH|cut off"])
def test_bytes_outside_a_frame_or_a_cut_frame_are_framing_errors(data):
    with pytest.raises(FramingError):
        FrameReader(FakeSock([data]), 1000, 5, 5).next_frame()


def test_a_trickling_frame_times_out_on_the_read_deadline():
    a, b = socket.socketpair()
    try:
        def trickle() -> None:
            b.sendall(b"\x0bMSH|")
            for _ in range(20):
                time.sleep(0.1)
                try:
                    b.sendall(b"x")
                except OSError:
                    return
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(FrameTimeout):
            FrameReader(a, 1000, idle_timeout_s=30, read_timeout_s=0.5).next_frame()
        assert time.monotonic() - t0 < 2  # the read deadline, not the idle time-out, and not each byte's
    finally:
        a.close()
        b.close()


def test_an_idle_connection_times_out_between_frames():
    a, b = socket.socketpair()
    try:
        with pytest.raises(socket.timeout):
            FrameReader(a, 1000, idle_timeout_s=0.3, read_timeout_s=30).next_frame()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("data", [
    b"\x0bMSH|one\x1c\x0bMSH|two\x1c\r",   # EB then the next frame: no CR
    b"\x0bMSH|one\x1cx" + b"y" * 5000,      # EB then more text, never a CR
])
def test_an_end_block_without_cr_is_a_framing_error_at_once(data):
    """It used to be read as message text until the size bound or the read time-out (30 s of a
    connection slot), then answered AR "too large" for a message that was not."""
    sock = FakeSock([data[i:i + 7] for i in range(0, len(data), 7)] + [b"z"] * 100000)
    with pytest.raises(FramingError, match="end block"):
        FrameReader(sock, 1 << 20, 5, 5).next_frame()
    assert sock.given < len(data) + 7


def test_an_end_block_split_from_its_cr_across_reads_still_ends_the_frame():
    sock = FakeSock([b"\x0bMSH|one\x1c", b"\r"])
    assert FrameReader(sock, 1024, 5, 5).next_frame() == b"MSH|one"
