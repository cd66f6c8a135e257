"""Per-image cost of the privacy path ingest runs for every received radiograph.

de-identify (PS3.15 profile, keyed UIDs, date shift) -> serialize -> AES-256-GCM + atomic fsynced write,
for a real 1 MB radiograph (NIH 00000001_000, 1024x1024 8-bit) and a 7 MB one made from the same
real pixels upsampled to 1872x1872 16-bit. The reference in the same run is a bare fsynced write of the
same bytes (write, fsync, rename, fsync dir), i.e. what durability costs without any privacy work.
Prints numbers only; never fails on time. Run: `python benchmarks/deid_vault.py [--n 30] [--dir PATH]`
(put --dir on the disk the vault will live on: fsync cost is the disk's).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from storage import keys as key_store
from storage.deid import DeidOptions, deidentify
from storage.vault import Vault

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / ".." / "shared" / "data" / "dicom" / "derived" / "nih_00000001_000_explicit-vr-le.dcm"


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_inputs() -> dict[str, bytes]:
    base = pydicom.dcmread(SOURCE)
    one_mb = _to_bytes(base)
    pixels = base.pixel_array.astype(np.float32)
    size = 1872
    idx = np.linspace(0, pixels.shape[0] - 1, size)
    # separable linear upsampling of the real image, then scaled to 12 bits
    rows = np.array([np.interp(idx, np.arange(pixels.shape[1]), r) for r in pixels])
    big = np.array([np.interp(idx, np.arange(pixels.shape[0]), c) for c in rows.T]).T
    big = (big * (4095.0 / 255.0)).round().astype(np.uint16)
    ds = pydicom.dcmread(SOURCE)
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = big.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return {"1MB": one_mb, "7MB": _to_bytes(ds)}


def bare_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="instances per size")
    ap.add_argument("--dir", default=None, help="directory for the vault (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cxrd-bench-", dir=args.dir))
    try:
        key_store.init_keys(work / "keys" / "master.key", work / "keys" / "keyring.json")
        keys = key_store.load_keys(work / "keys" / "master.key", work / "keys" / "keyring.json")
        vault = Vault(work / "vault", keys.keyring)
        bare_dir = work / "bare"
        bare_dir.mkdir()
        options = DeidOptions()
        print(f"cxrd privacy path, median ms per instance over {args.n} instances, dir {work}")
        print(f"{'size':>5} {'bytes':>9} | {'parse':>7} {'deid':>7} {'serial':>7} {'put':>7} | "
              f"{'total':>7} | {'bare fsync write':>16} | {'put_many x8 /inst':>17} | {'put no fsync':>12}")
        for label, data in make_inputs().items():
            parse, de, ser, put, total, bare = [], [], [], [], [], []
            for i in range(args.n):
                t0 = time.perf_counter()
                ds = pydicom.dcmread(io.BytesIO(data))
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{i}"
                t1 = time.perf_counter()
                result = deidentify(ds, keys.deid, options)
                t2 = time.perf_counter()
                out = _to_bytes(result.dataset)
                t3 = time.perf_counter()
                vault.put(result.sop_instance_uid, out, fsync=True)
                t4 = time.perf_counter()
                parse.append(t1 - t0), de.append(t2 - t1), ser.append(t3 - t2), put.append(t4 - t3)
                total.append(t4 - t1)
            # the reference in its own loop: interleaving fsyncs makes the second one look cheaper
            for i in range(args.n):
                t0 = time.perf_counter()
                bare_write(bare_dir / f"{label}-{i}.dcm", out)
                bare.append(time.perf_counter() - t0)
            nofsync = []
            for i in range(args.n):
                t0 = time.perf_counter()
                vault.put(f"{label}-nofsync-{i}", out, fsync=False)
                nofsync.append(time.perf_counter() - t0)
            batch = [(f"{label}-batch-{i}", data) for i in range(8)]
            group = []
            for _ in range(max(1, args.n // 8)):
                t0 = time.perf_counter()
                vault.put_many(batch)
                group.append((time.perf_counter() - t0) / 8)
            print(f"{label:>5} {len(data):>9} | {ms(parse)} {ms(de)} {ms(ser)} {ms(put)} | {ms(total)} | "
                  f"{ms(bare):>16} | {ms(group):>17} | {ms(nofsync):>12}")
        print("total = deid + serialize + encrypted fsynced put (parse excluded: the SCP hands ingest a dataset);\n"
              "put no fsync = encryption + write only (the CPU part; fsync is the disk's and overlaps across threads)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
