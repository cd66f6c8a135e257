"""The allocator thresholds are applied through glibc's mallopt; on this (glibc) system they must
be accepted, and an image-sized buffer must then come from the heap rather than a fresh mmap."""
from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from daemon.ops import allocator


def test_glibc_accepts_the_thresholds_and_large_blocks_stay_on_the_heap():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc >= 2.33")

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    assert allocator.keep_large_buffers()
    before = libc.mallinfo2().hblks  # blocks currently served by mmap
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(24 * 1024 * 1024)  # a 7 MB radiograph as float32
    try:
        assert libc.mallinfo2().hblks == before  # with glibc's defaults this is one more mmap'd block
    finally:
        libc.free(block)
