"""`cxrd predict` and `cxrd model list|promote|rollback|import|shadow|report`: the registry from the shell.

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

`shadow VERSION` runs a candidate on live traffic beside the current model, sending nothing
(`daemon.stages.shadow`); `shadow --off` stops it; both are audited. A version with live shadow data
is also judged on it when promoted: one significantly worse than the current model on the same
live labeled studies is refused like a floor failure (`--force` overrides, audited), and the
comparison goes into the promotion's audit record. `report VERSION` prints a version's evaluation
and its live shadow comparison.
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
from daemon.stages.model_changes import floor as promotion_floor

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

    a = actions.add_parser("shadow", help="run VERSION on live images beside the current model, sending nothing "
                                          "(--off: stop); without arguments: show the shadow")
    a.add_argument("version", metavar="VERSION", nargs="?")
    a.add_argument("--off", action="store_true", help="stop running a shadow candidate")
    a.set_defaults(func=run_shadow)

    a = actions.add_parser("report", help="a version's evaluation on record and its live shadow comparison")
    a.add_argument("version", metavar="VERSION")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the live comparison")
    a.set_defaults(func=run_report)

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
    floor = promotion_floor(rt)
    verdicts = {i.version: judge(i.metrics, floor) for i in infos}
    shadow = rt.registry.shadow()["version"]
    if args.format == "json":
        json.dump([{**i.to_dict(), "shadow": i.version == shadow,
                    "promotion_floor": {"passed": verdicts[i.version].passed,
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
        mark = "*" if i.current else "s" if i.version == shadow else " "
        print(f"{mark:2}{i.version:<34}{i.created:<27}{i.source or '-':<17}{auroc_text:<12}"
              f"{floor_text}")
    if shadow:
        print("(* current, s shadow: scored on live images, nothing sent; `cxrd model report VERSION`)")
    return 0


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
    from cxrmodel.drift import evaluation_reference
    metrics = with_evidence(E.manifest_metrics(report, where), truth, probabilities, promotion_floor(rt), n_boot=n_boot)
    metrics["reference"] = evaluation_reference(probabilities, manifest.thresholds, [e.path for e in entries], where)
    return metrics


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
        if exc.live is not None:
            print("\n".join(exc.live.lines()))
        raise CommandError(f"{args.version} not promoted: {exc.reason} (`--force` promotes it anyway, "
                           f"audited)") from None
    if done.live is not None:
        print("\n".join(done.live.lines()))
    previous, verdict, failures = done.previous, done.verdict, done.overridden
    print(f"current model: {args.version}" + (f" (was {previous})" if previous and previous != args.version else ""))
    if failures:
        print("promoted by --force, overriding: " + "; ".join(failures))
    else:
        print("evidence: " + verdict.summary)
    return 0


def run_shadow(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.stages.model_changes import ShadowRefused, start_shadow, stop_shadow

    reg = rt.registry
    if args.off and args.version:
        raise CommandError("give VERSION or --off, not both", 2)
    if args.off:
        previous = stop_shadow(rt)
        print(f"shadow off (was {previous})" if previous else "no shadow was running")
        return 0
    if not args.version:
        pointer = reg.shadow()
        if not pointer["version"]:
            last = f" (last one stopped {pointer['since']}: {pointer['origin']})" if pointer["origin"] else ""
            print(f"no shadow{last}: `cxrd model shadow VERSION` runs one beside the current model")
            return 0
        print(f"shadow: {pointer['version']} (since {pointer['since']}, chosen by {pointer['origin']})")
        from daemon.stages.shadow import comparison_with_current
        live = comparison_with_current(rt, pointer["version"])
        print("\n".join(live.lines()) if live else "no live image scored in shadow yet")
        return 0
    try:
        started = start_shadow(rt, args.version)
    except ShadowRefused as exc:
        raise CommandError(str(exc)) from None
    previous, current = started.previous, started.current
    print(f"shadow: {args.version} runs on new images beside the current model "
          f"{current if current else '(none yet)'}; nothing it says is sent"
          + (f" (replaces {previous})" if previous and previous != args.version else ""))
    print(f"compare: `cxrd model report {args.version}` once live studies have ground truth (`cxrd labels import`)")
    return 0


def run_report(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel.pointer import read_pointer
    from cxrmodel.promotion import judge

    reg = rt.registry
    manifest = reg.manifest(args.version)
    current = read_pointer(rt.models_dir)["version"]
    shadow = reg.shadow()
    floor = promotion_floor(rt)
    verdict = judge(manifest.metrics, floor)
    from daemon.stages.shadow import comparison_with_current
    live = comparison_with_current(rt, args.version, args.n_boot)
    role = ("current" if current == args.version else f"shadow since {shadow['since']} ({shadow['origin']})"
            if shadow["version"] == args.version else "candidate")
    if args.format == "json":
        json.dump({"version": args.version, "created": manifest.created, "role": role, "current": current,
                   "source": dict(manifest.source), "training": dict(manifest.training),
                   "metrics": dict(manifest.metrics),
                   "promotion_floor": {"passed": verdict.passed, "summary": verdict.summary},
                   "live_shadow": live.to_dict() if live else None}, sys.stdout, indent=2, default=str)
        print()
        return 0
    m = manifest.metrics
    print(f"model {args.version} ({role}); created {manifest.created}; source {manifest.source.get('format', '-')}")
    if isinstance(m.get("n_images"), int):
        print(f"Evaluation on record: {m.get('evaluated_on')}, {m['n_images']} images")
        cis, aurocs, positives = m.get("auroc_ci95") or {}, m.get("auroc") or {}, m.get("positives") or {}
        for label in LABELS:
            ci = cis.get(label)
            auc = aurocs.get(label)
            print(f"  {label:<19}{positives.get(label, '-'):>5}  "
                  + (f"{auc:.3f}" if isinstance(auc, (int, float)) else "-")
                  + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""))
    else:
        print("Evaluation on record: none (`cxrd model promote VERSION --evaluate-on DATA` evaluates it)")
    print(("Promotion floor: clears: " if verdict.passed else "Promotion floor: below: ") + verdict.summary)
    if current == args.version:
        print("Live shadow comparison: none (this is the current model; a candidate is compared with it)")
    elif live is None:
        print(f"Live shadow comparison: none ({args.version} has not run in shadow; `cxrd model shadow "
              f"{args.version}`)")
    else:
        print("\n".join(live.lines()))
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
    floor = promotion_floor(rt)
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
