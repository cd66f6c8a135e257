"""Train a ChestX-ray14 classifier: read top to bottom like torchvision's reference train.py.

`get_args_parser()` -> `main(args)`; `main` reads the data, builds the network, runs the
**feature cache step** (frozen mode), then `train_one_epoch()` / `evaluate()` per epoch with a
checkpoint after each, and finally picks operating thresholds on validation data and reports on
the held-out test patients. Usable from a child process: `main(args)` caps torch threads itself and
returns plain data; everything it produces is written under `args.out`.

Modes (chosen through `--recipe`, see RECIPES; the default is `bootstrap`, i.e. `finetune` at 128 px)
- `frozen` (the seed method, recipe `frozen-backbone`): DenseNet121 backbone frozen in eval mode (BatchNorm statistics do not
  move), only the 14-class head learns. With the feature cache the backbone runs once per image and
  augmentation view (K views, one sampled per epoch) instead of once per image per epoch.
  `--no-cache` recomputes the backbone every epoch (the seed method as written; benchmark baseline).
- `finetune`: the whole network learns (recipe `bootstrap`: 128 px, which CPUs manage).
- `--reproduce-paper`: softmax + cross-entropy with batch size 2, only to show why it is worse.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from . import evaluate as E
from . import features as FC
from .chestxray14 import Dataset, Entry, label_matrix, read_dataset
from .errors import ModelError
from .labels import LABELS
from .network import ChestNet, build_model, loss_function, probabilities
from .preprocess import TORCHVISION_SPEC, PreprocessSpec

# Presets for `--recipe`; an option given on the command line wins over its recipe's value.
# "bootstrap" (the default): the whole DenseNet121 trained from scratch at 128 px, the best model
#   cxrd can make without pretrained weights. On the shared ChestX-ray14 subset it clears chance on
#   held-out images (benchmarks/README.md, "Bootstrap model"); importing pretrained weights
#   (`cxrd model import`) is what beats it. About 15 minutes on two CPU cores.
# "frozen-backbone": the paper's recipe: a random DenseNet121 frozen, only the 14-output head learns
#   on cached features. Fast (the scheduled retraining's CPU mode uses it on a trained backbone), but
#   on a random backbone it measured at chance on held-out images, so it is not the default.
RECIPES: dict[str, dict[str, Any]] = {
    "bootstrap": {"mode": "finetune", "size": 128, "epochs": 10, "batch_size": 16, "lr": 1e-3},
    "frozen-backbone": {"mode": "frozen", "size": 224, "epochs": 10, "batch_size": None, "lr": 1e-3},
}
DEFAULT_RECIPE = "bootstrap"
# `--mode` without `--recipe` means that mode's recipe, so `--mode frozen` is the paper's recipe.
MODE_RECIPE = {"finetune": "bootstrap", "frozen": "frozen-backbone"}
CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.pt"
RESULT_FILE = "result.json"
TEST_PREDICTIONS = "test_predictions.npz"  # truth and probabilities on the test split: what promotion is judged on


def get_args_parser(add_help: bool = True, require_out: bool = True) -> argparse.ArgumentParser:
    """All training options; `cxrd train` reuses it as a parent (`add_help=False, require_out=False`)."""
    p = argparse.ArgumentParser(description="Train a DenseNet121 on ChestX-ray14-format data", add_help=add_help)
    p.add_argument("--data", type=Path, required=True, help="folder with Data_Entry_2017.csv and images/")
    p.add_argument("--out", type=Path, required=require_out, default=None,
                   help="work folder: checkpoint, feature cache, model, report")
    p.add_argument("--mode", choices=("frozen", "finetune"), default=None,
                   help="default: the recipe's (finetune for bootstrap, frozen for frozen-backbone)")
    p.add_argument("--reproduce-paper", action="store_true", help="softmax cross-entropy, batch size 2 (worse)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (10)")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's (1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (16 bootstrap; 64 frozen, 2 with --reproduce-paper)")
    p.add_argument("--size", type=int, default=None,
                   help="input size in pixels (default: the recipe's, 128 bootstrap, 224 frozen-backbone)")
    p.add_argument("--views", type=int, default=4, help="augmented views cached per image (frozen mode)")
    p.add_argument("--no-cache", action="store_true", help="recompute the backbone every epoch (seed method)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default OUT/features); keep one across retrains to reuse features")
    p.add_argument("--cache-key-file", type=Path, default=None,
                   help="file with the 32-byte AES key (raw or 64 hex digits) that seals the on-disk cache; "
                        "without it (and without seal functions from the caller) features stay in memory")
    p.add_argument("--standardize", action="store_true",
                   help="frozen: train the head on standardised features (folded back into the head)")
    p.add_argument("--bn-recalibrate", action="store_true",
                   help="set BatchNorm statistics from the training images before freezing (random init)")
    p.add_argument("--pos-weight", action="store_true", help="weight positives by negatives/positives per label")
    p.add_argument("--init", type=Path, default=None, help="start from this state dict (e.g. the current model)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images (tests, benchmarks)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--strict", action="store_true", help="stop on the first bad data row")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (cap in shared machines)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for AUROC CIs")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help=f"preset for mode/size/epochs/batch size/lr; options given explicitly win (default "
                        f"{DEFAULT_RECIPE}: whole network from scratch, the best without pretrained weights; "
                        f"frozen-backbone: the paper's random frozen backbone, head only, fast but at chance)")
    return p


def recipe_of(args: argparse.Namespace) -> str:
    """The recipe `args` train with: the one named, else the one of the mode given, else the default."""
    if getattr(args, "recipe", None):
        return str(args.recipe)
    if getattr(args, "mode", None):
        return MODE_RECIPE[args.mode]
    return "frozen-backbone" if getattr(args, "reproduce_paper", False) else DEFAULT_RECIPE


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from the recipe; idempotent, and explicit options are kept."""
    name = recipe_of(args)
    if name not in RECIPES:
        raise ModelError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    args.recipe = name
    for key, value in RECIPES[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------- small pieces

def log(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(f"[train] {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def activation_of(args: argparse.Namespace) -> str:
    return "softmax" if args.reproduce_paper else "sigmoid"


def pos_weight_of(Y: np.ndarray) -> torch.Tensor:
    pos = Y.sum(0)
    return torch.tensor(np.clip((len(Y) - pos) / np.maximum(pos, 1), 1.0, 50.0), dtype=torch.float32)


def freeze_backbone(model: ChestNet) -> None:
    """Backbone: no gradients and eval mode (so BatchNorm running statistics cannot drift)."""
    model.features.requires_grad_(False)
    model.features.eval()


def load_units(entries: list[Entry], spec: PreprocessSpec) -> torch.Tensor:
    """All images squared/resized to [0, 1] once (N, 1, S, S), so epochs do not decode PNGs again."""
    if not entries:
        return torch.zeros(0, 1, spec.size, spec.size)
    return torch.stack([FC.load_unit(e.path, spec) for e in entries])


def augmented_batch(units: torch.Tensor, index: torch.Tensor, spec: PreprocessSpec,
                    generator: torch.Generator) -> torch.Tensor:
    return torch.stack([FC.finish(FC.augment(units[i], generator), spec) for i in index.tolist()])


def plain_batch(units: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    if len(units) == 0:
        return torch.zeros(0, spec.channels, spec.size, spec.size)
    return torch.stack([FC.finish(u, spec) for u in units])


# ---------------------------------------------------------------------------- one epoch

def train_one_epoch(
    step: Callable[[torch.Tensor], torch.Tensor],
    params_optimizer: torch.optim.Optimizer,
    criterion: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]] | Any,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """One pass over `batches` of (input, target); `step` maps an input to logits. Returns mean loss.
    `progress(images_done, seconds)` is called every 30 s (slow CPU epochs should not look hung)."""
    total, n = 0.0, 0
    t0 = last = time.perf_counter()
    for x, y in batches:
        loss = criterion(step(x), y)
        params_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params_optimizer.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        if progress is not None and time.perf_counter() - last > 30:
            last = time.perf_counter()
            progress(n, last - t0)
    return total / max(n, 1)


@torch.no_grad()
def evaluate(logits_fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, Y: np.ndarray,
             activation: str, batch_size: int = 64) -> tuple[float | None, np.ndarray]:
    """Mean AUROC and probabilities of `logits_fn` over `inputs` (features or images)."""
    outs = [probabilities(logits_fn(inputs[i : i + batch_size]), activation) for i in range(0, len(inputs), batch_size)]
    P = torch.cat(outs).numpy() if outs else np.zeros((0, len(LABELS)), dtype=np.float32)
    return E.M.mean_auroc(Y, P), P


def read_key_file(path: Path) -> bytes:
    """A 32-byte key stored raw or as 64 hex digits (a child process gets its key this way, not argv)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read cache key file ({exc.strerror})") from None
    if len(raw.strip()) == 64:
        try:
            return bytes.fromhex(raw.strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) != 32:
        raise ModelError("cache key file must hold 32 bytes (raw) or 64 hex digits")
    return raw


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Random states as tensors/lists only, so checkpoints load with `weights_only=True` (no pickle)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------------------- what an epoch runs

@dataclass
class Plan:
    """What the epoch loop needs, whichever mode: parameters to optimise, a training step (input ->
    logits), the batches of an epoch, and how to score validation/test inputs."""

    params: list[torch.nn.Parameter]
    step: Callable[[torch.Tensor], torch.Tensor]
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    score: Callable[[torch.Tensor], torch.Tensor]
    val_inputs: torch.Tensor
    test_inputs: torch.Tensor
    on_features: bool
    feature_seconds: float = 0.0
    mean: torch.Tensor | None = None  # feature standardisation, folded into the head at the end
    std: torch.Tensor | None = None


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> tuple[torch.Generator, list[torch.Tensor]]:
    """Shuffled batch indices for an epoch, a pure function of (seed, epoch): resume-safe."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g)
    return g, [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def plan_cached_head(args: argparse.Namespace, model: ChestNet, splits: dict[str, list[Entry]],
                     Y: dict[str, np.ndarray], spec: PreprocessSpec, batch_size: int,
                     cache: FC.FeatureCache | None, resume_state: dict[str, Any] | None) -> Plan:
    """The feature cache step: one backbone pass per image and view, ever; epochs then train the
    head on a randomly chosen cached view of each image."""
    t0 = time.perf_counter()
    views = list(range(1, args.views + 1))

    def feats(split: str, v: list[int]) -> torch.Tensor:
        paths = [e.path for e in splits[split]]
        return torch.from_numpy(FC.compute_features(model, paths, spec, v, cache, quiet=args.quiet))

    Xtr, Xva, Xte = feats("train", views), feats("val", [0])[:, 0], feats("test", [0])[:, 0]
    seconds = time.perf_counter() - t0
    log(args, f"feature cache step: {seconds:.1f}s ({'sealed on disk' if cache else 'memory only'})")
    mean = std = None
    if args.standardize:
        if resume_state is not None and resume_state.get("feature_mean") is not None:
            mean, std = resume_state["feature_mean"], resume_state["feature_std"]
        else:
            flat = Xtr.reshape(-1, FC.FEATURE_DIM)
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-4)
            # express the starting head (random, or the current model's) in standardised coordinates
            # so it computes the same logits it did before; folded back after the last epoch
            with torch.no_grad():
                model.classifier.bias.add_(model.classifier.weight @ mean)
                model.classifier.weight.mul_(std)
    head = model.classifier
    Ytr = torch.from_numpy(Y["train"])

    def score(f: torch.Tensor) -> torch.Tensor:
        return head((f - mean) / std) if mean is not None else head(f)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g, order = epoch_order(len(Ytr), batch_size, args.seed, epoch)
        view = torch.randint(0, len(views), (len(Ytr),), generator=g)
        return [(Xtr[idx, view[idx]], Ytr[idx]) for idx in order]

    return Plan(list(head.parameters()), score, batches, score, Xva, Xte, True, seconds, mean, std)


def plan_images(args: argparse.Namespace, model: ChestNet, splits: dict[str, list[Entry]],
                Y: dict[str, np.ndarray], spec: PreprocessSpec, batch_size: int) -> Plan:
    """Images through the network every epoch: the seed method (`--no-cache`, backbone frozen and
    recomputed) or fine-tuning (everything learns, BatchNorm in training mode)."""
    units = {k: load_units(v, spec) for k, v in splits.items()}
    Ytr = torch.from_numpy(Y["train"])
    frozen = args.mode == "frozen"

    def step(x: torch.Tensor) -> torch.Tensor:
        if frozen:
            with torch.no_grad():
                f = model.embed(x)  # eval mode: BatchNorm statistics fixed
            return model.classifier(f)
        model.train()
        return model(x)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g, order = epoch_order(len(Ytr), batch_size, args.seed, epoch)
        for idx in order:
            yield augmented_batch(units["train"], idx, spec, g), Ytr[idx]

    params = list(model.classifier.parameters()) if frozen else list(model.parameters())
    return Plan(params, step, batches, model, plain_batch(units["val"], spec), plain_batch(units["test"], spec), False)


# ---------------------------------------------------------------------------- main

def main(
    args: argparse.Namespace,
    *,
    seal: FC.Seal | None = None,
    unseal: FC.Unseal | None = None,
) -> dict[str, Any]:
    """Train as `args` say; returns (and writes to `out/result.json`) thresholds, reports, summary.

    `seal`/`unseal` encrypt the on-disk feature cache; without them features stay in memory only,
    because features derived from patient images are not written in clear.
    """
    started = time.perf_counter()
    apply_recipe(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    activation = activation_of(args)
    batch_size = args.batch_size or (2 if args.reproduce_paper else 64 if args.mode == "frozen" else 16)
    if args.epochs < 1:
        raise ModelError("--epochs must be at least 1")
    if args.mode == "frozen" and args.views < 1:
        raise ModelError("--views must be at least 1")
    if args.standardize and (args.mode != "frozen" or args.no_cache):
        raise ModelError("--standardize needs frozen mode with the feature cache")
    if args.out is None:
        raise ModelError("an output folder is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = replace(TORCHVISION_SPEC, size=args.size)

    # -- data
    data: Dataset = read_dataset(args.data, strict=args.strict, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, seed=args.seed)
    for issue in data.issues:
        log(args, f"skipped: {issue}")
    splits = data.splits
    if args.max_images:
        keep = {e.image for e in data.entries[: args.max_images]}
        splits = {k: [e for e in v if e.image in keep] for k, v in splits.items()}
    train_e, val_e, test_e = splits["train"], splits["val"], splits["test"]
    if not train_e or not val_e:
        raise ModelError(f"need training and validation images (have {len(train_e)} and {len(val_e)})")
    Y = {"train": label_matrix(train_e), "val": label_matrix(val_e), "test": label_matrix(test_e)}
    log(args, f"data: {len(train_e)} train, {len(val_e)} val, {len(test_e)} test images ({data.split_source} split)")

    # -- model
    model = build_model(activation=activation, seed=args.seed)
    if args.init:
        from .weights import read_state_dict
        model.load_state_dict(read_state_dict(args.init), strict=True)
        log(args, "initialised from given weights")
    elif args.bn_recalibrate:
        FC.recalibrate_batchnorm(model, [e.path for e in train_e], spec, quiet=args.quiet)
    criterion = loss_function(activation, pos_weight_of(Y["train"]) if args.pos_weight else None)
    ckpt_path = out / CHECKPOINT
    start_epoch = 0
    resume_state = None
    if args.resume:
        if not ckpt_path.is_file():
            raise ModelError("--resume given but there is no checkpoint in the output folder")
        try:
            resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"checkpoint unreadable ({type(exc).__name__}); start without --resume") from None
        if "model" in resume_state:
            model.load_state_dict(resume_state["model"])
        else:  # frozen mode keeps only the head: the backbone must be the very same one
            if resume_state["backbone"] != FC.backbone_digest(model):
                raise ModelError("checkpoint was made with another backbone (different --init, --seed or data)")
            model.classifier.load_state_dict(resume_state["head"])
        start_epoch = int(resume_state["epoch"])
        log(args, f"resuming after epoch {start_epoch}")

    backbone = FC.backbone_digest(model) if args.mode == "frozen" else ""
    if args.mode == "frozen":
        freeze_backbone(model)
    if args.mode == "frozen" and not args.no_cache:
        if not (seal and unseal) and args.cache_key_file:
            seal, unseal = FC.aesgcm_pair(read_key_file(args.cache_key_file))
        cache_dir = args.cache_dir or out / "features"
        cache = FC.FeatureCache(cache_dir, seal, unseal) if seal and unseal else None
        plan = plan_cached_head(args, model, splits, Y, spec, batch_size, cache, resume_state)
    else:
        plan = plan_images(args, model, splits, Y, spec, batch_size)
    optimizer = torch.optim.Adam(plan.params, lr=args.lr, weight_decay=args.weight_decay)
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        set_rng_state(resume_state["rng"])
        history = list(resume_state.get("history", []))

    # -- epochs
    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        loss = train_one_epoch(plan.step, optimizer, criterion, plan.batches(epoch),
                               lambda done, secs: log(args, f"epoch {epoch + 1}: {done}/{len(train_e)} images, "
                                                           f"{done / secs:.1f} img/s"))
        model.eval()
        val_auc, _ = evaluate(plan.score, plan.val_inputs, Y["val"], activation)
        history.append({"epoch": epoch + 1, "loss": loss, "val_mean_auroc": val_auc,
                        "seconds": round(time.perf_counter() - t0, 2)})
        log(args, f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f} val mean AUROC "
                  f"{'n/a' if val_auc is None else f'{val_auc:.4f}'} ({time.perf_counter() - t0:.1f}s)")
        weights = ({"head": model.classifier.state_dict(), "backbone": backbone} if args.mode == "frozen"
                   else {"model": model.state_dict()})
        save_checkpoint(ckpt_path, epoch=epoch + 1, optimizer=optimizer.state_dict(), rng=rng_state(),
                        history=history, feature_mean=plan.mean, feature_std=plan.std, **weights)

    # -- fold standardisation into the head so the saved model is a plain DenseNet121
    if plan.mean is not None:
        with torch.no_grad():
            model.classifier.weight.div_(plan.std)
            model.classifier.bias.sub_(model.classifier.weight @ plan.mean)
    model.eval()

    # -- thresholds on validation, report on held-out test patients
    final = model.classifier if plan.on_features else model
    _, Pva = evaluate(final, plan.val_inputs, Y["val"], activation)
    _, Pte = evaluate(final, plan.test_inputs, Y["test"], activation)
    thresholds = E.choose_thresholds(Y["val"], Pva)
    test_report = E.report(Y["test"], Pte, thresholds, n_boot=args.n_boot, seed=args.seed) if test_e else None
    val_report = E.report(Y["val"], Pva, thresholds, n_boot=0)
    torch.save(model.state_dict(), out / MODEL_FILE)
    np.savez(out / TEST_PREDICTIONS, truth=Y["test"], probabilities=Pte)
    if test_e:
        E.write_roc_png(Y["test"], Pte, out / "roc_test.png", title=f"ROC on held-out test patients ({len(test_e)} images)")
    seconds = time.perf_counter() - started
    result = {
        "model_file": str(out / MODEL_FILE),
        "activation": activation,
        "preprocessing": spec.to_dict(),
        "thresholds": thresholds,
        "val_report": val_report,
        "test_report": test_report,
        "test_images": [e.image for e in test_e],
        "training": {
            "recipe": args.recipe, "mode": args.mode + ("+paper" if args.reproduce_paper else ""),
            "feature_cache": args.mode == "frozen" and not args.no_cache,
            "views": args.views if args.mode == "frozen" else None,
            "epochs": args.epochs, "lr": args.lr, "batch_size": batch_size, "size": args.size,
            "weight_decay": args.weight_decay, "pos_weight": args.pos_weight, "standardize": args.standardize,
            "bn_recalibrate": args.bn_recalibrate and not args.init, "seed": args.seed,
            "images": {"train": len(train_e), "val": len(val_e), "test": len(test_e)},
            "patients": {k: len({e.patient_id for e in v}) for k, v in splits.items()},
            "split": data.split_source, "skipped_rows": len(data.issues),
            "feature_seconds": round(plan.feature_seconds, 2), "seconds": round(seconds, 2), "history": history,
        },
    }
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float) + "\n")
    if test_report is not None:
        log(args, f"test mean AUROC {test_report['mean_auroc']:.4f} on {len(test_e)} images; {seconds:.0f}s total")
    return result


def load_test_predictions(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(truth, probabilities) of the trained model on its held-out test split, as `main` wrote them."""
    with np.load(Path(out) / TEST_PREDICTIONS, allow_pickle=False) as f:
        return f["truth"], f["probabilities"]


def load_trained(out: Path) -> tuple[ChestNet, dict[str, Any]]:
    """The module and result written by `main` (for the caller that registers it)."""
    result = json.loads((Path(out) / RESULT_FILE).read_text())
    model = build_model(activation=result["activation"])
    model.load_state_dict(torch.load(Path(out) / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.eval(), result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
