"""What several benchmarks share: free loopback ports, real-pixel DICOM copies, a storescu push."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
NIH_DICOM = DATA / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm"
ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk otherwise waits ~40 ms per message (Nagle)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def make_files(src: Path, out: Path, n: int, prefix: str = "") -> list[Path]:
    """n copies of a real radiograph (decompressed to Explicit VR LE) with fresh UIDs."""
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    study = generate_uid()
    paths = []
    for i in range(n):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        p = out / f"{prefix}{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def push(port: int, aec: str, files: list[Path]) -> float:
    """Send files over one association with dcmtk storescu; returns seconds taken."""
    t0 = time.perf_counter()
    r = subprocess.run(["storescu", "-aec", aec, "--max-pdu", "131072", "127.0.0.1", str(port),
                        *map(str, files)], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0 or "Store Failed" in r.stderr:
        raise SystemExit(f"storescu failed against {aec}: {r.stderr[-400:]}")
    return elapsed
