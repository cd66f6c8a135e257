"""Seed method (backbone recomputed every epoch) vs the feature-cached path, same data and epochs.

Prints wall time and held-out mean AUROC side by side; never passes or fails on time.

    python benchmarks/retrain.py --images 300 --size 128 --threads 2

Rows:
- seed: frozen DenseNet121, augmentation + backbone every epoch (10 epochs), as the seed method is written.
- cache cold (K views): first training; the backbone runs once per image and view.
- cache warm (K views): the same training again with the cache filled (a retrain with new
  hyperparameters, or on old + new data where only the new images are computed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrmodel import features as FC  # noqa: E402
from cxrmodel import train as T  # noqa: E402


def run(data: Path, out: Path, extra: list[str], seal=None, unseal=None) -> tuple[float, dict]:
    args = T.get_args_parser().parse_args(["--data", str(data), "--out", str(out), "--quiet", *extra])
    t0 = time.perf_counter()
    result = T.main(args, seal=seal, unseal=unseal)
    return time.perf_counter() - t0, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "nih")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--views", type=int, nargs="+", default=[4, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-seed", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    # the feature cache is the frozen-backbone recipe's (no longer the default): name it
    common = ["--recipe", "frozen-backbone", "--max-images", str(a.images), "--size", str(a.size), "--epochs", str(a.epochs),
              "--threads", str(a.threads), "--n-boot", "200"]
    seal, unseal = FC.aesgcm_pair(os.urandom(32))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.skip_seed:
            secs, res = run(a.data, tmp / "seed", common + ["--no-cache"])
            rows.append(("seed (recompute every epoch)", secs, 0.0, res))
        for k in a.views:
            secs, res = run(a.data, tmp / f"k{k}", common + ["--views", str(k)], seal, unseal)
            rows.append((f"cache cold, K={k}", secs, res["training"]["feature_seconds"], res))
            secs, res = run(a.data, tmp / f"k{k}", common + ["--views", str(k)], seal, unseal)
            rows.append((f"cache warm, K={k}", secs, res["training"]["feature_seconds"], res))
    base = rows[0][1] if not a.skip_seed else None
    imgs = rows[0][3]["training"]["images"]
    print(f"images: {imgs} at {a.size}px, {a.epochs} epochs, {a.threads} threads")
    print(f"{'path':<32}{'wall s':>9}{'backbone s':>12}{'speedup':>9}{'test mean AUROC':>17}")
    out = []
    for name, secs, feat, res in rows:
        auc = res["test_report"]["mean_auroc"]
        speed = f"{base / secs:.1f}x" if base else "-"
        print(f"{name:<32}{secs:>9.1f}{feat:>12.1f}{speed:>9}{auc:>17.4f}")
        out.append({"path": name, "seconds": round(secs, 2), "feature_seconds": feat, "mean_auroc": auc})
    if a.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
