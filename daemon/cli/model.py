"""`cxrd predict` and `cxrd model list|promote|rollback|import`: the model registry from the shell.

`predict` classifies files directly (no DICOM network, no database, nothing stored), so a person
can check a model on a few films before promoting it. Promote and rollback change what the daemon
uses for every new image, so they are audited (`_audit`).
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
    p.set_defaults(func=run_predict)

    m = sub.add_parser("model", help="list, import, promote and roll back model versions")
    actions = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="model versions, the current one marked")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_list)

    a = actions.add_parser("promote", help="make VERSION the model used for new images")
    a.add_argument("version", metavar="VERSION")
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
    a.add_argument("--promote", action="store_true", help="make it current right away")
    a.add_argument("--labels", metavar="NAMES",
                   help="comma-separated output names of the checkpoint in its order (chexnet: the 14 "
                        "ChestX-ray14 findings; torchxrayvision: its 18 pathologies, '' for unused)")
    a.add_argument("--allow-pickle", action="store_true",
                   help="accept a whole pickled model (runs code from the file: only for files you trust)")
    a.add_argument("--output", dest="out_format", choices=("table", "json"), default="table")
    a.set_defaults(func=run_import)


def run_predict(args: argparse.Namespace, rt: Runtime) -> int:
    try:
        loaded = rt.registry.load(args.model)
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    probs = _probabilities(loaded, args.files, args.backend, rt)
    thresholds = loaded.manifest.threshold_list()
    rows = [{"file": f, "model": loaded.version,
             "probabilities": {lab: round(float(v), 6) for lab, v in zip(LABELS, p)},
             "positive": [lab for lab, v, t in zip(LABELS, p, thresholds) if v >= t]}
            for f, p in zip(args.files, probs)]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        _print_predictions(rows, thresholds)
    return 0


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
        for lab, t in zip(LABELS, thresholds):
            p = row["probabilities"][lab]
            mark = "  POSITIVE" if lab in row["positive"] else ""
            print(f"  {lab:<{width}}  {p:6.4f}  (threshold {t:.3f}){mark}")


def run_list(args: argparse.Namespace, rt: Runtime) -> int:
    infos = rt.registry.list()
    if args.format == "json":
        json.dump([i.to_dict() for i in infos], sys.stdout, indent=2)
        print()
        return 0
    if not infos:
        print("no models yet: `cxrd train` or `cxrd model import FILE --format ...`")
        return 0
    print(f"{'':2}{'VERSION':<34}{'CREATED':<27}{'SOURCE':<17}MEAN AUROC")
    for i in infos:
        auroc = i.metrics.get("mean_auroc")
        auroc_text = f"{float(auroc):.4f}" if isinstance(auroc, (int, float)) else "-"
        print(f"{'*' if i.current else ' ':2}{i.version:<34}{i.created:<27}{i.source or '-':<17}{auroc_text}")
    return 0


def run_promote(args: argparse.Namespace, rt: Runtime) -> int:
    reg = rt.registry
    reg.load(args.version)  # refuse to promote a version whose weights fail verification
    previous = reg.promote(args.version)
    rt.audit("model.promoted", version=args.version, previous=previous)
    print(f"current model: {args.version}" + (f" (was {previous})" if previous and previous != args.version else ""))
    return 0


def run_rollback(args: argparse.Namespace, rt: Runtime) -> int:
    reg = rt.registry
    before = reg.current()
    version = reg.rollback()
    rt.audit("model.rollback", version=version, previous=before.version if before else None)
    print(f"current model: {version}" + (f" (was {before.version})" if before else ""))
    return 0


def run_import(args: argparse.Namespace, rt: Runtime) -> int:
    from cxrmodel.weights import import_file

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
    before = reg.current()
    version = reg.add(imported, version=args.version, promote=args.promote)
    rt.audit("model.imported", version=version, format=args.weights_format,
             sha256=imported.source.get("sha256"), promoted=bool(args.promote))
    if args.promote:
        rt.audit("model.promoted", version=version, previous=before.version if before else None)
    if args.out_format == "json":
        json.dump({"version": version, "promoted": bool(args.promote), "source": imported.source}, sys.stdout, indent=2)
        print()
    else:
        print(f"imported {Path(args.file).name} as model {version}" + (" (current)" if args.promote else
                                                                          f"; promote with `cxrd model promote {version}`"))
    return 0
