"""Keep freed image-sized buffers in the process instead of handing them back to the kernel.

Every image passes through several fresh buffers of 1-30 MB: received PDUs, the dataset, the
float32 pixel array, the resized tensor. glibc serves blocks that large with mmap, or trims them
off the heap top once freed. So each new buffer is new pages, and the page faults cost more than
the copying itself (docs/performance.md has the measurement).

The thresholds below keep blocks up to 32 MiB (glibc's largest allowed mmap threshold) on the
heap, and give memory back only when more than 256 MiB is free at its top. The price could be a
resident size up to that much higher after a burst of large images; in practice the resident size
after a burst stays about what glibc's defaults give. Where glibc is not the C library (musl, macOS), nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cxrd.allocator")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Apply the thresholds above; True when glibc accepted them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("allocator thresholds not accepted by this C library")
    return ok
