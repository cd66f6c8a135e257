"""`cxrd train` and `cxrd evaluate`: the CLI face of `cxrmodel.train` / `cxrmodel.evaluate`.

Training writes into a work folder under the state directory (checkpoint per epoch, the sealed
feature cache, the model and its report), then judges the candidate and registers it. It becomes
current only if its held-out evaluation clears the promotion floor (`cxrmodel.promotion`,
`[model.promotion]`: shown better than chance) and, with `--promote auto`, `compare` finds it not
worse than the current model on the same held-out patients. `--force` overrides both and is audited
with what it overrode. The feature cache is sealed with a key derived from the master key, so
features of patient images are never on disk in clear.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.args import CommandParser
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    from cxrmodel.registry import Registry


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "train", arguments=_train_parser,
        help="train a model from ChestX-ray14-format data and register it",
        description="Train a DenseNet121 on ChestX-ray14-format data (recipe bootstrap by default: the whole "
                    "network from scratch at 128 px; --recipe frozen-backbone is the paper's fast, chance-level "
                    "recipe), evaluate it and the current model on the same held-out patients, register it, and "
                    "promote it only if its evidence clears [model.promotion] and it is not worse.")

    ev = subparsers.add_parser("evaluate", help="evaluate a registered model on ChestX-ray14-format data",
                               description="Per-label AUROC with 95%% CI, average precision, accuracy/F1 at the "
                                           "model's operating thresholds, calibration error; writes report.json "
                                           "and roc.png.")
    ev.add_argument("--data", type=Path, required=True, help="folder with Data_Entry_2017.csv and images/")
    ev.add_argument("--model", default=None, help="model version (default: the current one)")
    ev.add_argument("--split", choices=("test", "val", "train", "all"), default=None,
                    help="which patients (the same deterministic patient split training uses); default: "
                         "the held-out test patients on the data set the model was trained on, every "
                         "image on any other data set")
    ev.add_argument("--out", type=Path, default=None, help="folder for report.json and roc.png")
    ev.add_argument("--n-boot", type=int, default=1000)
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--format", choices=("text", "json"), default="text")
    ev.set_defaults(func=run_evaluate)


def _train_parser(made_with: dict[str, Any]) -> argparse.ArgumentParser:
    """`cxrd train`'s arguments: every option of `cxrmodel.train` plus how to register the result.

    Built only when `cxrd train` is parsed or its help shown (see `CommandParser`): the training
    options live in a module that imports torch.
    """
    from cxrmodel.train import get_args_parser

    options = get_args_parser(add_help=False, require_out=False)
    train = CommandParser(**{**made_with, "parents": [*made_with.get("parents", []), options]})
    train.add_argument("--promote", choices=("auto", "always", "never"), default="auto",
                       help="auto: only if it clears the promotion floor ([model.promotion]) and mean AUROC is "
                            "not worse than the current model's and no label drops by more than the margin; "
                            "always: skip the comparison with the current model (the floor still applies)")
    train.add_argument("--force", action="store_true",
                       help="promote even if the evidence does not clear the floor or the comparison "
                            "(audited with what was overridden)")
    train.add_argument("--max-auroc-drop", type=float, default=None,
                       help="per-label AUROC margin for --promote auto (default: [retrain] max_auroc_drop)")
    train.add_argument("--from-current", action="store_true", help="start from the current model's weights")
    train.add_argument("--version", default=None, help="name for the new model version")
    train.add_argument("--format", choices=("text", "json"), default="text")
    train.set_defaults(func=run_train)
    return train


def feature_cache_sealers(rt: Runtime):  # noqa: ANN201 - (seal, unseal)
    """Seal/unseal for the feature cache with a purpose key derived from the master key."""
    from storage import keys as key_store
    from storage import vault

    if not rt.key_file.is_file():
        raise CommandError("no key file yet: run `cxrd init` first")
    key = key_store.derive_key(key_store.read_master_key(rt.key_file), "feature-cache")

    def seal(aad: bytes, data: bytes) -> bytes:
        return vault.seal(key, aad, data)

    def unseal(aad: bytes, blob: bytes) -> bytes:
        return vault.open_sealed(key, aad, blob, object_id="feature cache entry")

    return seal, unseal


def _threads(args: argparse.Namespace, rt: Runtime) -> int:
    if args.threads:
        return args.threads
    retrain = getattr(rt.settings, "retrain", None)
    return int(getattr(retrain, "threads", 1) or 1)


def run_train(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel import evaluate as E
    from cxrmodel import train as T
    from cxrmodel.promotion import Floor, judge, with_evidence

    if args.force and args.promote == "never":
        raise CommandError("--force promotes the model; it cannot be combined with --promote never", 2)
    _prepare(args, rt)
    seal, unseal = feature_cache_sealers(rt)
    T.main(args, seal=seal, unseal=unseal)
    model, result = T.load_trained(args.out)
    test_report = result["test_report"]
    if test_report is None:
        raise CommandError("no held-out test images: cannot judge the model (use a larger data set)")
    current_version, current_report = _judge_current(rt.registry, args, result)
    margin = args.max_auroc_drop
    if margin is None:
        margin = float(getattr(getattr(rt.settings, "retrain", None), "max_auroc_drop", 0.02))
    better, reasons = E.compare(test_report, current_report, margin)
    floor = Floor.of(rt.settings.model.promotion)
    truth, probabilities = T.load_test_predictions(args.out)
    # the floor's interval always gets 1000 resamples (about a second), whatever --n-boot the report used
    metrics = with_evidence(E.manifest_metrics(test_report, "test split (patient-disjoint)"), truth, probabilities,
                            floor, n_boot=max(args.n_boot, 1000), seed=args.seed)
    from cxrmodel.drift import evaluation_reference
    tested = set(result["test_images"])
    metrics["reference"] = evaluation_reference(probabilities, result["thresholds"],
                                                [e.path for e in _dataset(args).splits["test"] if e.image in tested],
                                                "test split (patient-disjoint)")
    verdict = judge(metrics, floor)
    # what stands between this model and promotion, each a line naming the number and the limit
    blockers = list(verdict.failures) + ([] if better or args.promote == "always" else reasons)
    if args.promote == "never":
        promote = False
    else:
        promote = args.force or not blockers
    version = _register(rt.registry, args, model, result, metrics, promote, current_version)
    rt.audit("model.trained", version=version, mean_auroc=test_report["mean_auroc"], data=Path(args.data).name)
    if promote:
        rt.audit("model.promoted", version=version, previous=current_version, reasons=reasons[:20],
                 forced=bool(blockers), overridden=blockers[:20] if blockers else None,
                 promotion=verdict.audit_details(floor))
    elif args.promote != "never":
        rt.audit("model.rejected", outcome=4, version=version, refused=blockers[:20],
                 promotion=verdict.audit_details(floor))
    (Path(args.out) / "test_report.json").write_text(json.dumps(test_report, indent=2) + "\n")
    summary: dict[str, Any] = {
        "version": version,
        "promoted": promote,
        "forced": bool(promote and blockers),
        "not_promoted_because": [] if promote or args.promote == "never" else blockers,
        "overridden": blockers if promote else [],
        "promotion_floor": verdict.summary,
        "reasons": reasons,
        "recipe": result["training"].get("recipe"),
        "mean_auroc": test_report["mean_auroc"],
        "mean_auroc_ci95": test_report["mean_auroc_ci95"],
        "mean_accuracy": test_report["mean_accuracy"],
        "current_version": current_version,
        "current_mean_auroc": current_report["mean_auroc"] if current_report else None,
        "work_dir": str(args.out),
        "seconds": result["training"]["seconds"],
    }
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, args.promote)
    if args.promote == "always" and not promote:  # an explicit request that was not carried out
        return 1
    return 0


def _prepare(args: argparse.Namespace, rt: Runtime) -> None:
    """Fill in what the training options leave to cxrd: recipe, threads, start weights, work folder."""
    from cxrmodel import train as T

    T.apply_recipe(args)
    args.threads = _threads(args, rt)
    rt.ensure_state_dir()
    if args.from_current:
        current = rt.registry.load()
        args.init = current.path / current.manifest.weights_file
    if args.out is None:
        if args.resume:
            raise CommandError("--resume needs --out (the work folder of the interrupted run)", 2)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        args.out = rt.state_dir / "train" / stamp


def _dataset(args: argparse.Namespace) -> Any:
    """The training data set as `cxrmodel.train` split it (same fractions and seed)."""
    from cxrmodel.chestxray14 import read_dataset

    return read_dataset(args.data, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)


def _judge_current(registry: Registry, args: argparse.Namespace,
                   result: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(version, test report) of the current model on the very images the candidate was tested on,
    so the two are compared on the same patients; (None, None) when no model is current."""
    from cxrmodel import evaluate as E
    from cxrmodel.errors import NoModelError

    data = _dataset(args)
    names = set(result["test_images"])
    test_entries = [e for e in data.splits["test"] if e.image in names]
    try:
        current = registry.load()
    except NoModelError:
        return None, None
    report, _, _ = E.evaluate_model(
        current.module, test_entries, current.manifest.preprocessing,
        activation=current.manifest.architecture.activation,
        thresholds=dict(current.manifest.thresholds), n_boot=0)
    return current.version, report


def _register(registry: Registry, args: argparse.Namespace, model: Any, result: dict[str, Any],
              metrics: dict[str, Any], promote: bool, current_version: str | None) -> str:
    """Add the trained model with its thresholds, test metrics and a training summary; its version."""
    from cxrmodel import evaluate as E
    from cxrmodel.preprocess import PreprocessSpec

    training = {k: v for k, v in result["training"].items() if k != "history"}
    training["final_val_mean_auroc"] = (result["training"]["history"] or [{}])[-1].get("val_mean_auroc")
    training["data"] = Path(args.data).name
    training["data_fingerprint"] = E.dataset_fingerprint(_dataset(args).entries)
    return registry.add(
        model, version=args.version, promote=promote, thresholds=result["thresholds"],
        metrics=metrics, training=training,
        preprocessing=PreprocessSpec.from_dict(result["preprocessing"]),
        source={"format": "cxrd-train", "compared_with": current_version})


def _print_summary(summary: dict[str, Any], promote: str) -> None:
    version, ci = summary["version"], summary["mean_auroc_ci95"]
    print(f"model {version}: test mean AUROC {summary['mean_auroc']:.4f} "
          f"(95% CI {ci[0]:.3f}-{ci[1]:.3f})"
          if ci else f"model {version}: test mean AUROC {summary['mean_auroc']:.4f}")
    if summary["promoted"] and summary["forced"]:
        print("promoted to current by --force, overriding: " + "; ".join(summary["overridden"]))
    elif summary["promoted"]:
        print("promoted to current: " + summary["promotion_floor"] + "; " + "; ".join(summary["reasons"]))
    elif promote == "never":
        print(f"registered, not promoted (--promote never); promote with `cxrd model promote {version}`")
    else:
        print("registered, not promoted: " + "; ".join(summary["not_promoted_because"])
              + f" (`cxrd model promote {version} --force` overrides, audited)")


def _print_table(report: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    print(f"{'finding':<20}{'pos':>5}{'AUROC':>8}{'95% CI':>15}{'AP':>7}{'thr':>7}{'acc':>7}{'F1':>7}{'ECE':>7}", file=out)

    def f(v: Any, w: int = 7, p: int = 3) -> str:
        return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'n/a':>{w}}"

    for label, r in report["labels"].items():
        ci = r["auroc_ci95"]
        cis = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a"
        print(f"{label:<20}{r['positives']:>5}{f(r['auroc'], 8)}{cis:>15}{f(r['average_precision'])}"
              f"{f(r['threshold'])}{f(r['accuracy'])}{f(r['f1'])}{f(r['ece'])}", file=out)
    ci = report["mean_auroc_ci95"]
    print(f"{'mean':<20}{report['n_images']:>5}{f(report['mean_auroc'], 8)}"
          f"{(f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else 'n/a'):>15}{f(report['mean_average_precision'])}"
          f"{'':>7}{f(report['mean_accuracy'])}{f(report['mean_f1'])}{f(report['mean_ece'])}", file=out)


def run_evaluate(args: argparse.Namespace, rt: Runtime) -> int:
    if args.n_boot < 0:
        raise CommandError("--n-boot must be 0 (no confidence intervals) or more", 2)
    if args.threads is not None and args.threads < 1:
        raise CommandError("--threads must be at least 1", 2)
    import torch

    from cxrmodel import evaluate as E
    from cxrmodel.chestxray14 import read_dataset

    torch.set_num_threads(_threads(args, rt))
    loaded = rt.registry.load(args.model)
    data = read_dataset(args.data)
    if args.split is None:
        split, why = E.default_split(loaded.manifest.training, data.entries, Path(args.data).name)
    else:
        split, why = args.split, "chosen with --split"
    entries = data.entries if split == "all" else data.splits[split]
    if not entries:
        raise CommandError(f"no images in the {split} split")
    report, Y, P = E.evaluate_model(loaded.module, entries, loaded.manifest.preprocessing,
                                    activation=loaded.manifest.architecture.activation,
                                    thresholds=dict(loaded.manifest.thresholds), n_boot=args.n_boot)
    report = {"model": loaded.version, "split": split, "split_reason": why, "scored_images": len(entries),
              "dataset_images": len(data.entries), "skipped_rows": len(data.issues), **report}
    out = args.out or rt.state_dir / "evaluations" / f"{loaded.version}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    E.write_roc_png(Y, P, out / "roc.png", title=f"{loaded.version}: ROC on {split} ({len(entries)} images)")
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(f"model {loaded.version}: scored {len(entries)} of {len(data.entries)} images "
              f"(split {split}: {why})")
        _print_table(report)
        print(f"report: {out / 'report.json'}  figure: {out / 'roc.png'}")
    return 0
