"""The console benchmark still runs end to end: a tiny SQLite state (real `cxrd init`, a chained
trail that must verify, images, predictions, models), a real `cxrd console`, every page and the
CLI reference in the table. Sizes are tiny so this checks the script, not the figures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PAGES = ("console: search, one study", "console: search, one day", "console: search, family over a month",
         "console: search, everything, first page", "console: search, everything, older link x2",
         "console: events per day, 30 days", "console: operations dashboard, 24 h", "console: models",
         "cli: audit query, one study (in-process)", "cli: audit query, everything, first page (in-process)")


def test_console_benchmark_runs_on_a_tiny_state(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRD_")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "console.py"), "--rows", "2000", "--images", "200",
                        "--backends", "sqlite", "--repeat", "1", "--deep", "2", "--cli-subprocess", "0", "--models", "0",
                        "--tmp", str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "chain verified" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| sqlite |")]
    for page in PAGES:
        assert any(f"| {page}" in line for line in rows), (page, r.stdout[-3000:])
    # the scratch state is removed afterwards
    assert not any(tmp_path.iterdir())
