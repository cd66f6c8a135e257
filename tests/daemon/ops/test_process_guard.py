"""A daemon holding keys must not be dumpable: no core file, no ptrace from same-user processes."""
from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import resource
from daemon.ops import process_guard
before = process_guard.is_dumpable()
process_guard.forbid_core_dumps()
print(before, process_guard.is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE))
"""


def test_forbid_core_dumps_clears_the_flag_and_the_limit():
    # In a child process: the flag cannot be set back once cleared, and pytest must stay dumpable.
    r = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    before, after, limit = r.stdout.splitlines()[0].split(" ", 2)
    assert before == "True"
    assert after == "False"
    assert limit == "(0, 0)"

