"""Train the bootstrap model (no pretrained weights offline) and print what it reaches.

    nice python benchmarks/bootstrap_model.py --out /tmp/bootstrap --threads 2 [--models-dir DIR]

Same as `cxrd train --recipe bootstrap --data ../shared/data/nih`, without a state directory:
trains `cxrmodel.train.RECIPES["bootstrap"]` on the shared ChestX-ray14 subset (patient-disjoint
split), prints held-out mean AUROC beside the frozen-random-backbone floor, and with
`--models-dir` registers the result (thresholds from validation, metrics from test) and makes it
current.

What it reaches, and the recipes tried, are in benchmarks/README.md ("Bootstrap model").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrmodel import evaluate as E  # noqa: E402
from cxrmodel import train as T  # noqa: E402
from cxrmodel.preprocess import PreprocessSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "nih")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--size", type=int, default=None, help="override the recipe's input size")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--models-dir", type=Path, default=None, help="register the model here and make it current")
    a = p.parse_args()
    argv = ["--data", str(a.data), "--out", str(a.out), "--recipe", "bootstrap", "--threads", str(a.threads)]
    if a.resume:
        argv.append("--resume")
    args = T.apply_recipe(T.get_args_parser().parse_args(argv))
    if a.epochs:
        args.epochs = a.epochs
    if a.size:
        args.size = a.size
    args.recipe = None  # overrides above must survive main()'s apply_recipe
    t0 = time.perf_counter()
    result = T.main(args)
    secs = time.perf_counter() - t0
    rep = result["test_report"]
    print(f"bootstrap: {args.mode} {args.size}px {args.epochs} epochs, {secs / 60:.1f} min on {a.threads} thread(s)")
    ci = rep["mean_auroc_ci95"]
    print(f"held-out test ({rep['n_images']} images): mean AUROC {rep['mean_auroc']:.4f} "
          f"(95% CI {ci[0]:.3f}-{ci[1]:.3f}), mean accuracy {rep['mean_accuracy']:.3f}; floor ~0.68")
    for h in result["training"]["history"]:
        print(f"  epoch {h['epoch']:>3}  loss {h['loss']:.4f}  val mean AUROC {h['val_mean_auroc']:.4f}  {h['seconds']:.0f}s")
    if a.models_dir:
        from cxrmodel.registry import Registry

        model, result = T.load_trained(a.out)
        version = Registry(a.models_dir).add(
            model, promote=True, thresholds=result["thresholds"],
            metrics=E.manifest_metrics(rep, "test split (patient-disjoint)"),
            training={k: v for k, v in result["training"].items() if k != "history"},
            preprocessing=PreprocessSpec.from_dict(result["preprocessing"]), source={"format": "cxrd-train"})
        print(f"registered {version} in {a.models_dir} (current)")


if __name__ == "__main__":
    main()
