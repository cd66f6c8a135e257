"""`cxrd predict` and `cxrd model list|promote|rollback|import`: the model registry from the shell.

`predict` classifies files directly (no DICOM network, no database, nothing stored), so a person
can check a model on a few films before promoting it, and IT can validate an installation. It
applies the rules ingest applies (`chest_rule`, then `view_rule`, as configured) and refuses a
file they put out of scope, naming the rule, unless `--force` is given; a forced result says so.
A PNG carries no attributes: only its size is checked, and the output says the rules were not.
Promote and rollback change what the daemon uses for every new image, so they are audited.

A model becomes current (`promote`, `import --promote`) only if its evaluation on held-out labeled
images clears the promotion floor (`cxrmodel.promotion`, `[model.promotion]`); a refusal is one
line naming the number and the floor, and is audited. `--force` overrides the floor and the audit
record names what it overrode; an import without evaluation data is made current only with
`--promote-without-evaluation`. `rollback` is not judged: it returns to a model that was current
before, and it is the way out of a bad model, which must never be blocked.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime

if TYPE_CHECKING:
    import numpy as np

    from cxrmodel.registry import LoadedModel


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("predict", help="classify DICOM or PNG files with the current (or a named) model")
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM or PNG (ChestX-ray14) files")
    p.add_argument("--model", metavar="VERSION", help="model version (default: the current one)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--backend", choices=("fp32", "channels_last", "bf16", "onnx", "auto"), default="fp32",
                   help="inference backend (default fp32: no measurement for a handful of files)")
    p.add_argument("--force", action="store_true",
                   help="classify files the chest and view rules put out of scope (e.g. a lateral "
                        "view); each such result is marked as forced")
    p.set_defaults(func=run_predict)

    m = sub.add_parser("model", help="list, import, promote and roll back model versions")
    actions = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="model versions, the current one marked")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_list)

    a = actions.add_parser("promote", help="make VERSION the model used for new images (if its evidence "
                                           "clears [model.promotion])")
    a.add_argument("version", metavar="VERSION")
    a.add_argument("--evaluate-on", dest="evaluate_on", type=Path, metavar="DATA",
                   help="judge it on this ChestX-ray14-format folder now instead of the evaluation in its "
                        "manifest (all images; only the test split if it is the model's own training data)")
    a.add_argument("--force", action="store_true",
                   help="promote even if the evidence does not clear the floor or there is none (audited)")
    a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for --evaluate-on")
    a.set_defaults(func=run_promote)

    a = actions.add_parser("rollback", help="return to the model that was current before")
    a.set_defaults(func=run_rollback)

    a = actions.add_parser("import", help="add a model from a local weights file")
    a.add_argument("file", metavar="FILE", help="weights file (state dict)")
    a.add_argument("--format", dest="weights_format", required=True,
                   choices=("torchvision", "chexnet", "torchxrayvision"),
                   help="torchvision: ImageNet DenseNet121 (new 14-output head, untrained); chexnet: "
                        "module.densenet121.* checkpoint; torchxrayvision: xrv DenseNet121 state dict")
    a.add_argument("--version", metavar="NAME", help="version name (default: UTC time + weights hash)")
    a.add_argument("--promote", action="store_true",
                   help="make it current right away if its evaluation (--evaluate-on) clears [model.promotion]")
    a.add_argument("--evaluate-on", dest="evaluate_on", type=Path, metavar="DATA",
                   help="evaluate it on this ChestX-ray14-format folder (all images) and record the result "
                        "in its manifest; the evidence --promote is judged on")
    a.add_argument("--promote-without-evaluation", action="store_true",
                   help="make it current with no evaluation at all (audited as such)")
    a.add_argument("--force", action="store_true",
                   help="with --promote and --evaluate-on: promote even if the evaluation does not clear the floor "
                        "(audited)")
    a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for --evaluate-on")
    a.add_argument("--labels", metavar="NAMES",
                   help="comma-separated output names of the checkpoint in its order (chexnet: the 14 "
                        "ChestX-ray14 findings; torchxrayvision: its 18 pathologies, '' for unused)")
    a.add_argument("--allow-pickle", action="store_true",
                   help="accept a whole pickled model (runs code from the file: only for files you trust)")
    a.add_argument("--output", dest="out_format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_import)


def run_predict(args: argparse.Namespace, rt: Runtime) -> int:
    scopes = [_scope(f, rt) for f in args.files]  # before the model loads: out of scope fails fast
    refused = [(f, reason) for f, (ok, reason) in zip(args.files, scopes) if not ok]
    if refused and not args.force:
        for f, reason in refused[:-1]:
            print(f"cxrd: error: {f}: out of scope: {reason} (--force classifies it anyway)", file=sys.stderr)
        f, reason = refused[-1]
        raise CommandError(f"{f}: out of scope: {reason} (--force classifies it anyway)")
    try:
        loaded = rt.registry.load(args.model)
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    probs = _probabilities(loaded, args.files, args.backend, rt)
    thresholds = loaded.manifest.threshold_list()
    rows = [{"file": f, "model": loaded.version,
             "probabilities": {lab: round(float(v), 6) for lab, v in zip(LABELS, p)},
             "positive": [lab for lab, v, t in zip(LABELS, p, thresholds) if v >= t],
             "scope": reason, "forced": not ok}
            for f, p, (ok, reason) in zip(args.files, probs, scopes)]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        _print_predictions(rows, thresholds)
    return 0


def _scope(file: str, rt: Runtime) -> tuple[bool, str]:
    """(in scope, why): the chest rule then the view rule for a DICOM file, as ingest applies them;
    for a PNG (no attributes) only its size."""
    import pydicom

    from cxrmodel.preprocess import PNG_MAGIC
    from daemon.stages.chest_rule import chest_rule_from, is_chest_radiograph
    from daemon.stages.view_rule import decide_view

    dicom = rt.settings.dicom
    rule = chest_rule_from(dicom.chest_body_parts, dicom.min_image_size)
    try:
        with open(file, "rb") as fh:
            head = fh.read(24)
            if head.startswith(PNG_MAGIC):
                width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
                if min(width, height) < rule.min_size:
                    return False, f"image smaller than {rule.min_size} pixels"
                return True, "PNG: no DICOM attributes, chest and view rules not applied"
            fh.seek(0)
            ds = pydicom.dcmread(fh, force=True, defer_size=1024)  # pixel data located, not loaded
            verdict = is_chest_radiograph(ds, rule)
            if not verdict.chest:
                return False, verdict.reason
            view = decide_view(ds, dicom.unknown_view)
    except OSError as exc:
        raise CommandError(f"{file}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a file pydicom cannot parse: named, never a traceback
        raise CommandError(f"{file}: not a PNG or DICOM file ({type(exc).__name__})") from None
    return view.analyse, view.reason


def _probabilities(loaded: LoadedModel, files: list[str], backend: str, rt: Runtime) -> np.ndarray:
    """One row of 14 probabilities per file; a file that cannot be read is named in the error."""
    import torch

    from cxrmodel.preprocess import preprocess

    tensors = []
    for f in files:
        try:
            tensors.append(preprocess(Path(f), loaded.manifest.preprocessing))
        except ModelError as exc:
            raise CommandError(f"{f}: {exc}") from None
    if backend == "fp32":
        return loaded.predict(torch.stack(tensors))
    from cxrmodel.engine import Engine
    with Engine.for_model(loaded, backend=backend, threads=int(rt.settings.model.threads),
                          batch_size=int(rt.settings.model.batch_size)) as eng:
        return eng.predict(torch.stack(tensors))


def _print_predictions(rows: list[dict[str, Any]], thresholds: list[float]) -> None:
    width = max(len(lab) for lab in LABELS)
    for i, row in enumerate(rows):
        if i:
            print()
        print(f"{row['file']}  (model {row['model']})")
        if row["forced"]:
            print(f"  FORCED (--force): out of scope: {row['scope']}")
        else:
            print(f"  scope: {row['scope']}")
        for lab, t in zip(LABELS, thresholds):
            p = row["probabilities"][lab]
            mark = "  POSITIVE" if lab in row["positive"] else ""
            print(f"  {lab:<{width}}  {p:6.4f}  (threshold {t:.3f}){mark}")


def run_list(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel.promotion import judge

    infos = rt.registry.list()
    floor = _floor(rt)
    verdicts = {i.version: judge(i.metrics, floor) for i in infos}
    if args.format == "json":
        json.dump([{**i.to_dict(), "promotion_floor": {"passed": verdicts[i.version].passed,
                                                       "summary": verdicts[i.version].summary}}
                   for i in infos], sys.stdout, indent=2)
        print()
        return 0
    if not infos:
        print("no models yet: `cxrd train` or `cxrd model import FILE --format ...`")
        return 0
    print(f"{'':2}{'VERSION':<34}{'CREATED':<27}{'SOURCE':<17}{'MEAN AUROC':<12}FLOOR")
    for i in infos:
        auroc = i.metrics.get("mean_auroc")
        auroc_text = f"{float(auroc):.4f}" if isinstance(auroc, (int, float)) else "-"
        verdict = verdicts[i.version]
        floor_text = "clears" if verdict.passed else ("not evaluated" if "no evaluation" in verdict.summary
                                                      else "below")
        print(f"{'*' if i.current else ' ':2}{i.version:<34}{i.created:<27}{i.source or '-':<17}{auroc_text:<12}"
              f"{floor_text}")
    return 0


def _floor(rt: Runtime):  # noqa: ANN202 - cxrmodel.promotion.Floor (imported lazily: torch-free CLI start)
    from cxrmodel.promotion import Floor
    return Floor.of(rt.settings.model.promotion)


def _evaluate_on(rt: Runtime, module: Any, manifest: Any, data: Path, n_boot: int, *,
                 own_training_data: str = "") -> dict[str, Any]:
    """Manifest metrics of a model on a ChestX-ray14-format folder: every image, except the model's
    own training data, of which only the held-out test patients count (the rest it has seen)."""
    from cxrmodel import evaluate as E
    from cxrmodel.chestxray14 import read_dataset

    dataset = read_dataset(data)
    if own_training_data and Path(data).name == own_training_data:
        entries, where = dataset.splits["test"], f"{Path(data).name}, test split (its training data)"
    else:
        entries, where = dataset.entries, f"{Path(data).name}, all images"
    if not entries:
        raise CommandError(f"no labeled images to evaluate on in {Path(data).name}")
    from cxrmodel.promotion import with_evidence

    report, truth, probabilities = E.evaluate_model(module, entries, manifest.preprocessing,
                                                    activation=manifest.architecture.activation,
                                                    thresholds=dict(manifest.thresholds), n_boot=n_boot)
    return with_evidence(E.manifest_metrics(report, where), truth, probabilities, _floor(rt), n_boot=n_boot)


def run_promote(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.model_changes import PromotionRefused, promote

    evaluate = None
    if args.evaluate_on is not None:
        def evaluate(loaded: LoadedModel) -> dict[str, Any]:
            return _evaluate_on(rt, loaded.module, loaded.manifest, args.evaluate_on, args.n_boot,
                                own_training_data=str(loaded.manifest.training.get("data", "")))
    try:
        done = promote(rt, args.version, force=args.force, evaluate=evaluate)
    except PromotionRefused as exc:
        raise CommandError(f"{args.version} not promoted: {exc.verdict.summary} (`--force` promotes it anyway, "
                           f"audited)") from None
    previous, verdict = done.previous, done.verdict
    print(f"current model: {args.version}" + (f" (was {previous})" if previous and previous != args.version else ""))
    print(("promoted by --force, overriding: " if not verdict.passed else "evidence: ") + verdict.summary)
    return 0


def run_rollback(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.model_changes import rollback
    version, before = rollback(rt)
    print(f"current model: {version}" + (f" (was {before})" if before else ""))
    return 0


def run_import(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel.errors import DuplicateModelError
    from cxrmodel.manifest import Manifest
    from cxrmodel.promotion import judge
    from cxrmodel.weights import import_file

    if args.force and not (args.promote and args.evaluate_on is not None):
        raise CommandError("--force overrides a failed evaluation: it needs --promote and --evaluate-on "
                           "(to promote with no evaluation: --promote-without-evaluation)", 2)
    if args.promote_without_evaluation and (args.evaluate_on is not None or args.force):
        raise CommandError("--promote-without-evaluation cannot be combined with --evaluate-on or --force", 2)
    kwargs: dict[str, Any] = {}
    if args.weights_format != "torchvision":
        kwargs["allow_pickle"] = args.allow_pickle
        if args.labels is not None:
            key = "labels" if args.weights_format == "chexnet" else "pathologies"
            kwargs[key] = [s.strip() for s in args.labels.split(",")]
    elif args.labels or args.allow_pickle:
        raise CommandError("--labels and --allow-pickle do not apply to --format torchvision", 2)
    imported = import_file(Path(args.file), args.weights_format, **kwargs)
    reg = rt.registry
    rt.ensure_state_dir()
    sha256 = str(imported.source.get("sha256") or "")
    existing = reg.same_weights(sha256, Manifest(architecture=imported.arch, source=imported.source))
    if existing is not None:  # before a long evaluation; `add` checks again under the registry lock
        raise CommandError(f"{Path(args.file).name} is already model {existing} (same file, sha256 "
                           f"{sha256[:12]}...): nothing imported; use that version (`cxrd model promote "
                           f"{existing}`)")
    metrics = None
    if args.evaluate_on is not None:
        base = Manifest(architecture=imported.arch, preprocessing=imported.preprocess,
                        thresholds=imported.thresholds, source=imported.source)
        metrics = _evaluate_on(rt, imported.module, base, args.evaluate_on, args.n_boot)
    floor = _floor(rt)
    verdict = judge(metrics, floor)
    promote = args.promote_without_evaluation or (args.promote and (verdict.passed or args.force))
    before = reg.current()
    try:
        version = reg.add(imported, version=args.version, promote=promote, metrics=metrics)
    except DuplicateModelError as exc:
        raise CommandError(str(exc)) from None
    rt.audit("model.imported", version=version, format=args.weights_format, sha256=sha256, promoted=promote,
             evaluated=metrics is not None, promotion=verdict.audit_details(floor) if metrics else None)
    previous = before.version if before else None
    refused = args.promote and not promote
    if args.promote_without_evaluation:
        rt.audit("model.promoted", version=version, previous=previous, forced=True,
                 overridden=["no evaluation (--promote-without-evaluation)"], promotion=None)
    elif promote:
        rt.audit("model.promoted", version=version, previous=previous, forced=not verdict.passed,
                 overridden=list(verdict.failures) or None, promotion=verdict.audit_details(floor))
    elif refused:
        rt.audit("model.rejected", outcome=4, version=version, refused=list(verdict.failures),
                 promotion=verdict.audit_details(floor) if metrics else None)
    if args.out_format == "json":
        json.dump({"version": version, "promoted": promote, "source": imported.source, "metrics": metrics,
                   "promotion_floor": verdict.summary}, sys.stdout, indent=2)
        print()
    else:
        print(f"imported {Path(args.file).name} as model {version}" + (" (current)" if promote else ""))
        if metrics is not None:
            print(("evidence: " if verdict.passed else "below the promotion floor: ") + verdict.summary)
        if args.promote_without_evaluation:
            print("promoted without any evaluation (--promote-without-evaluation, audited)")
        elif promote and not verdict.passed:
            print("promoted by --force, overriding the floor (audited)")
        elif not promote and not refused:
            print(f"promote with `cxrd model promote {version}`" +
                  ("" if metrics else " --evaluate-on DATA (it has no evaluation yet)"))
    if refused:
        hint = ("`--force` promotes it anyway, audited" if metrics is not None else
                "give --evaluate-on DATA (labeled ChestX-ray14-format images), or --promote-without-evaluation")
        raise CommandError(f"imported as {version} but not promoted: {verdict.summary} ({hint})")
    return 0
