"""Per-image cost of recording input characteristics (drift monitoring) in the worker's prepare step.

For real radiographs it times, in the same run and interleaved, the worker's preprocessing as it was
(`cxrmodel.preprocess.preprocess`: parse, decode, LUTs, resize) and as it is now
(`cxrmodel.input_profile.preprocess_profiled`: the same plus the profile, measured on the pixels
already decoded), and prints the bare forward pass per image of a DenseNet121 (fp32, batch 8) beside
them, so the profile's cost reads against what an image costs anyway.

    .venv/bin/python benchmarks/input_profile.py [--repeat 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import DATA
from cxrmodel.input_profile import preprocess_profiled
from cxrmodel.network import build_model
from cxrmodel.preprocess import TORCHVISION_SPEC, preprocess

IMAGES = {
    "NIH 1024x1024 8-bit, Explicit VR LE": DATA / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm",
    "NIH 1024x1024 8-bit, JPEG 2000 lossless": DATA / "dicom/derived/nih_00000001_000_j2k-lossless.dcm",
    "WG04 RG1 1955x1841 15-bit MONOCHROME1, JPEG 2000": DATA / "dicom/chest/wg04_RG1_J2KI.dcm",
}


def _median_ms(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model(seed=0).eval()
    batch = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        model(batch)
        forward = _median_ms(lambda: model(batch), max(3, args.repeat // 3)) / 8
    print(f"bare forward, DenseNet121 fp32 batch 8, 1 thread: {forward:.1f} ms per image\n")
    print(f"{'image':52} {'preprocess':>11} {'+ profile':>10} {'profile':>8} {'of forward':>10}")
    for name, path in IMAGES.items():
        data = path.read_bytes()
        preprocess(data, TORCHVISION_SPEC), preprocess_profiled(data, TORCHVISION_SPEC)  # warm-up
        bare, profiled = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine
            bare.append(_median_ms(lambda: preprocess(data, TORCHVISION_SPEC), 1))
            profiled.append(_median_ms(lambda: preprocess_profiled(data, TORCHVISION_SPEC), 1))
        b, p = statistics.median(bare), statistics.median(profiled)
        print(f"{name:52} {b:9.1f} ms {p:8.1f} ms {p - b:6.2f} ms {100 * (p - b) / forward:9.1f}%")


if __name__ == "__main__":
    main()
