"""Ingest throughput: dcmtk storescu pushing real-pixel chest DICOMs over one association to
cxrd, to dcmtk's bare storescp and to Orthanc, all measured in the same run.

    .venv/bin/python benchmarks/ingest.py [--n1 200] [--n7 40] [--rounds 4]

1 MB images: NIH 00000001_000 (1024x1024, 8-bit, Explicit VR LE) with fresh UIDs.
7 MB images: NEMA WG04 RG1 (1955x1841, 15-bit CR) decompressed to Explicit VR LE, fresh UIDs.
cxrd does de-identification, AES-GCM encryption, an fsync of the object file (its directory entry
was made durable ahead of time), a database commit and an audit row per image; storescp only
writes files (no fsync); Orthanc writes files and its index.

Rounds alternate which of Orthanc and cxrd goes first, because on this VM the later slot is often
the slower one; an even number of rounds (the default, 4) gives each the later slot equally often,
so the median carries no slot bias. The summary also prints the median ratio by slot.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, ENV, NIH_DICOM, free_port, make_files, push, wait_port


def start_storescp(work: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "--max-pdu", "131072", "-od", str(out), "-aet", "STORESCP", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, "STORESCP"


def start_orthanc(work: Path) -> tuple[subprocess.Popen, int, str]:
    port, http = free_port(), free_port()
    cfg = {"Name": "bench", "StorageDirectory": str(work / "orthanc-db"), "IndexDirectory": str(work / "orthanc-db"),
           "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
           "DicomAlwaysAllowStore": True, "MaximumPduLength": 131072, "StorageCompression": False}
    (work / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, "ORTHANC"


def start_cxrd(work: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    env = {**ENV, "CXRD_STORAGE__STATE_DIR": str(work / "cxrd"), "CXRD_DICOM__PORT": str(port),
           "CXRD_DICOM__BIND": "127.0.0.1", "CXRD_STORAGE__MIN_FREE_MB": "64", "CXRD_HTTP__PORT": str(free_port()),
           "CXRD_RETRAIN__ENABLED": "false", "CXRD_MODEL__WORKERS": "0", "CXRD_LOG__LEVEL": "warning",
           "CXRD_DICOM__MAX_PDU": "131072"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("cxrd")), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, "CXRD"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=200, help="number of ~1 MB images")
    ap.add_argument("--n7", type=int, default=40, help="number of ~7 MB images")
    ap.add_argument("--rounds", type=int, default=4,
                    help="measure every target this many times, alternating order (even: balanced slots)")
    args = ap.parse_args()
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk orthanc")
    with tempfile.TemporaryDirectory(prefix="cxrd-bench-") as tmp:
        work = Path(tmp)
        warm = 5  # first association, imports, page cache: not measured, not re-sent
        sets = {"1MB": make_files(NIH_DICOM, work / "in1", args.n1 + warm),
                "7MB": make_files(DATA / "dicom/chest/wg04_RG1_J2KI.dcm", work / "in7", args.n7 + warm)}
        print(f"{'round':5} {'target':10} {'set':4} {'n':>5} {'MB each':>8} {'inst/s':>8} {'MB/s':>7}")
        starters = {"storescp": start_storescp, "orthanc": start_orthanc, "cxrd": start_cxrd}
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            # Alternate the order of Orthanc and cxrd: on this VM the later slot was often slower.
            order = ("storescp", "orthanc", "cxrd") if r % 2 == 0 else ("storescp", "cxrd", "orthanc")
            for label, files in sets.items():
                for name in order:
                    rate = _measure(starters[name], work / f"{name}-{label}-{r}", files, warm)
                    results.setdefault((name, label), []).append(rate)
                    size = files[0].stat().st_size / 1e6
                    print(f"{r:5d} {name:10} {label:4} {len(files) - warm:5d} {size:8.2f} {rate:8.1f} "
                          f"{rate * size:7.1f}", flush=True)
        for label in sets:
            ratios = [c / o for c, o in zip(results[("cxrd", label)], results[("orthanc", label)])]
            bare = [c / b for c, b in zip(results[("cxrd", label)], results[("storescp", label)])]
            first, second = ratios[1::2], ratios[0::2]  # rounds where cxrd went first / second
            by_slot = (f"; cxrd first {statistics.median(first):.2f}x, second {statistics.median(second):.2f}x"
                       if first else "")
            print(f"cxrd / orthanc ({label}): median {statistics.median(ratios):.2f}x "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}{by_slot}); "
                  f"cxrd / storescp: median {statistics.median(bare):.2f}x")


def _measure(starter, target: Path, files: list[Path], warm: int) -> float:  # noqa: ANN001
    """Images/s of one push to a freshly started target (after `warm` unmeasured images)."""
    target.mkdir()
    os.sync()  # the previous target's unsynced writes must not be flushed during this one's fsyncs
    time.sleep(1)
    proc, port, aec = starter(target)
    try:
        push(port, aec, files[:warm])
        elapsed = push(port, aec, files[warm:])
    finally:
        proc.terminate()
        proc.wait(30)
    shutil.rmtree(target, ignore_errors=True)
    return (len(files) - warm) / elapsed


if __name__ == "__main__":
    main()
