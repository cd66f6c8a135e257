"""Keep the master key and decoded images out of core dumps and out of other processes' reach.

The daemon holds the master key, the re-identification key and decoded radiographs in memory. A core
dump would write all of them to disk in clear, and a dumpable process can be read through
/proc/PID/mem or ptrace by any process of the same user. `cxrd serve` therefore sets the core-size
limit to zero and clears the dumpable flag before it loads a key. The systemd unit sets LimitCORE=0
as well; this covers a daemon started by hand or by another supervisor.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc.prctl(option, arg, 0, 0, 0)


def forbid_core_dumps() -> None:
    """No core file, and no ptrace or /proc/PID/mem access from other processes of the same user.

    Raises OSError if the kernel refuses; the caller must not go on to load keys then."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux") and _prctl(PR_SET_DUMPABLE, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_DUMPABLE, 0) failed")


def is_dumpable() -> bool:
    """Whether this process could still produce a core dump (for tests and the start-up log)."""
    if resource.getrlimit(resource.RLIMIT_CORE)[0] != 0:
        return True
    return sys.platform.startswith("linux") and _prctl(PR_GET_DUMPABLE) != 0
