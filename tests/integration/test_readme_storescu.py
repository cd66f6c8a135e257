"""The README's storescu line sends compressed chest films to a running cxrd, exactly as printed.

Without transfer-syntax options storescu proposes only uncompressed syntaxes and abandons a batch at
its first compressed file; the README points to `deploy/storescu-cxrd.cfg`. This runs the README's
own line (only host, port and files replaced) with the real dcmtk storescu.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from storage.models import Instance

REPO = Path(__file__).resolve().parents[2]


def _readme_storescu_batch_line() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("storescu -xf ")]
    assert len(lines) == 1, "the README shows one storescu line for compressed batches"
    return shlex.split(lines[0].split("#")[0])


def _stored(state_dir: Path) -> int:
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    try:
        with engine.connect() as c:
            return c.execute(select(func.count()).select_from(Instance)).scalar()
    finally:
        engine.dispose()


@pytest.mark.slow
def test_the_readme_storescu_line_sends_a_mixed_compressed_batch(daemon_factory, shared_data, tmp_path):
    films = tmp_path / "films"
    films.mkdir()
    sources = [*sorted((shared_data / "dicom" / "derived").glob("*.dcm")),
               shared_data / "dicom" / "chest" / "wg04_RG1_J2KI.dcm",
               *sorted((shared_data / "dicom" / "chest").glob("siim-acr_*.dcm"))]
    for src in sources:  # RLE, JPEG 2000 lossless and lossy, JPEG baseline and explicit VR
        (films / src.name).symlink_to(src)
    d = daemon_factory().start()
    argv = _readme_storescu_batch_line()
    host_at = argv.index("127.0.0.1")
    argv[host_at + 1] = str(d.dicom_port)
    argv[-1] = str(films)
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not re.search(r"^E:", run.stderr, re.M), run.stderr
    assert _stored(d.state_dir) == len(sources)

    # what the README warns about: the plain line stops at the first compressed file
    d2 = daemon_factory().start()
    plain = subprocess.run(["storescu", "-aec", "CXRD", "127.0.0.1", str(d2.dicom_port),
                            *map(str, sorted(films.iterdir()))], capture_output=True, text=True, timeout=300)
    assert "unable to convert dataset" in plain.stderr
    assert _stored(d2.state_dir) < len(sources)
