"""Model versions on disk: `{models_dir}/<version>/{weights.pt, manifest.json}` plus one pointer.

`current.json` names the current version and the stack of versions that were current before it, in
one file replaced atomically (write temp, fsync, rename): a crash leaves the old or the new pointer,
never half of one, and `rollback` always knows where to return. `history.jsonl` is an append-only
log of promotions, rollbacks and shadow choices for people; `shadow.json`
(`cxrmodel.shadow_pointer`) names the one version, if any, that runs in shadow beside the current
one. Loading verifies the weights' sha256 against the manifest, so a corrupted or swapped file is
refused rather than used. Importing a file that is already a version (same sha256 of the file, same
format and output mapping) is refused with `DuplicateModelError` naming that version: one set of
weights is one version, so its evaluation, promotions and predictions are not split across two
names.

Training hands a trained module here::

    reg = Registry(models_dir)
    version = reg.add(model, thresholds={"Effusion": 0.31, ...}, metrics={"auroc": {...}},
                      training={"images": 1000, "patients": 800, "split": "patient"}, promote=False)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DuplicateModelError, IntegrityError, ModelError, NoModelError
from .manifest import Manifest
from .network import ArchSpec, ChestNet, build, probabilities
from .pointer import CURRENT, read_pointer
from .shadow_pointer import SHADOW, read_shadow
from .preprocess import PreprocessSpec, Source, preprocess
from .weights import Imported, sha256_file

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HISTORY = "history.jsonl"


@dataclass(frozen=True)
class ModelInfo:
    version: str
    created: str
    current: bool
    source: str
    weights_sha256: str
    metrics: Mapping[str, Any]
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "current": self.current,
                "source": self.source, "weights_sha256": self.weights_sha256,
                "metrics": dict(self.metrics)}


@dataclass
class LoadedModel:
    """A verified module in eval mode with its manifest; enough to classify images (fp32, no batching)."""
    version: str
    manifest: Manifest
    module: ChestNet
    path: Path

    def preprocess(self, source: Source) -> torch.Tensor:
        return preprocess(source, self.manifest.preprocessing)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) -> (N, 14) probabilities in `labels.LABELS` order."""
        if batch.ndim == 3:
            batch = batch[None]
        logits = self.module(batch.float())
        return probabilities(logits, self.manifest.architecture.activation).numpy()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class Registry:
    """The model versions under one directory. Safe for several processes (an flock serialises writers)."""

    def __init__(self, models_dir: str | Path):
        self.root = Path(models_dir)

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pointer(self) -> dict[str, Any]:
        return read_pointer(self.root)

    def _set_pointer(self, version: str | None, previous: Sequence[str], event: str) -> None:
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write(self.root / CURRENT, json.dumps({"version": version, "previous": list(previous),
                                                      "updated": at}, indent=2) + "\n")
        self._append_history({"at": at, "event": event, "version": version})

    def _append_history(self, record: dict[str, Any]) -> None:
        """One line of history.jsonl, on disk before the change it records is reported done."""
        with open(self.root / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _dir(self, version: str) -> Path:
        if not _VERSION.match(version or ""):
            raise ModelError(f"invalid model version name {version!r} (letters, digits, . _ -; max 64)")
        return self.root / version

    def manifest(self, version: str) -> Manifest:
        d = self._dir(version)
        p = d / "manifest.json"
        if not p.is_file():
            raise ModelError(f"no model version {version!r}; see `cxrd model list`")
        try:
            return Manifest.from_json(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ModelError(f"cannot read manifest of {version} ({exc.strerror})") from None

    # ------------------------------------------------------------------ API
    def add(self, model: nn.Module | Imported, manifest: Manifest | None = None, *, version: str | None = None,
            promote: bool = False, thresholds: Mapping[str, float] | None = None,
            metrics: Mapping[str, Any] | None = None, training: Mapping[str, Any] | None = None,
            preprocessing: PreprocessSpec | None = None, source: Mapping[str, Any] | None = None) -> str:
        """Store a module (a `ChestNet`, e.g. from `network.build_model` after training, or an
        `weights.Imported`) as a new version; returns the version name.

        Pass a full `Manifest`, or let one be made from the keyword pieces and the module's own
        architecture. Keyword pieces override the manifest/import's.
        """
        if isinstance(model, Imported):
            base = manifest or Manifest(architecture=model.arch, preprocessing=model.preprocess,
                                        thresholds=model.thresholds, source=model.source)
            module = model.module
        else:
            module = model
            arch = getattr(module, "arch", None)
            if not isinstance(arch, ArchSpec) or not isinstance(module, ChestNet):
                raise ModelError("registry.add needs a cxrmodel.network.ChestNet (build_model/build)")
            base = manifest or Manifest(architecture=arch, source={"format": "cxrd"})
        changes: dict[str, Any] = {}
        if thresholds is not None:
            changes["thresholds"] = dict(thresholds)
        if metrics is not None:
            changes["metrics"] = dict(metrics)
        if training is not None:
            changes["training"] = dict(training)
        if preprocessing is not None:
            changes["preprocessing"] = preprocessing
        if source is not None:
            changes["source"] = dict(source)
        base = replace(base, **changes) if changes else base
        if base.architecture != getattr(module, "arch", base.architecture):
            raise ModelError("manifest architecture does not match the module")

        imported_sha = str(base.source.get("sha256") or "") if isinstance(model, Imported) else ""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=".add-", dir=self.root))
        try:
            weights = tmp / base.weights_file
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            with open(weights, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            digest = sha256_file(weights)
            name = version or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + digest[:8]
            final = self._dir(name)
            stamped = base.stamped(name, digest)
            (tmp / "manifest.json").write_text(stamped.to_json(), encoding="utf-8")
            _fsync_dir(tmp)
            with self._locked():
                if imported_sha:  # checked under the lock: two imports of one file cannot both land
                    self._refuse_duplicate(imported_sha, base)
                if final.exists():
                    raise ModelError(f"model version {name!r} already exists")
                os.rename(tmp, final)
                _fsync_dir(self.root)
                if promote:
                    self._promote_locked(name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def same_weights(self, sha256: str, manifest: Manifest | None = None) -> str | None:
        """The version whose weights came from the file with this sha256 (its import source, or its
        stored weights file), with the same format and architecture as `manifest` when given."""
        if not sha256:
            return None
        for name, _, m in self._manifests():
            if sha256 not in (m.source.get("sha256"), m.weights_sha256):
                continue
            if manifest is not None and m.source.get("sha256") == sha256 and (
                    m.source.get("format") != manifest.source.get("format")
                    or m.architecture != manifest.architecture
                    or m.source.get("pathologies") != manifest.source.get("pathologies")):
                continue  # the same file read another way (other format or output names): another model
            return name
        return None

    def _refuse_duplicate(self, sha256: str, manifest: Manifest) -> None:
        existing = self.same_weights(sha256, manifest)
        if existing is not None:
            raise DuplicateModelError(
                f"{manifest.source.get('file') or 'this file'} is already model {existing} (same file, sha256 "
                f"{sha256[:12]}...): nothing imported; use that version (`cxrd model promote {existing}`)",
                existing)

    def list(self) -> list[ModelInfo]:
        """All versions, oldest first."""
        current = self._pointer()["version"] if self.root.is_dir() else ""
        return [ModelInfo(name, m.created, d.name == current, str(m.source.get("format", "")),
                          m.weights_sha256, m.metrics, d) for name, d, m in self._manifests()]

    def _manifests(self) -> list[tuple[str, Path, Manifest]]:
        """(version, directory, manifest) of every version, oldest first: each manifest read once."""
        if not self.root.is_dir():
            return []
        found = []
        for d in self.root.iterdir():
            if d.name.startswith(".") or not (d / "manifest.json").is_file():
                continue
            m = self.manifest(d.name)
            found.append((m.version or d.name, d, m))
        return sorted(found, key=lambda v: (v[2].created, v[0]))

    def current(self) -> ModelInfo | None:
        version = self._pointer()["version"]
        if not version:
            return None
        return next((i for i in self.list() if i.version == version), None)

    def current_version(self) -> str:
        """The current version's name; NoModelError (with what to do) if there is none."""
        info = self.current()
        if info is None:
            if self.list():
                raise NoModelError("no model is current: promote one with `cxrd model promote VERSION` "
                                   "(see `cxrd model list`)")
            raise NoModelError()
        return info.version

    def load(self, version: str | None = None, *, verify: bool = True) -> LoadedModel:
        """The named (or current) version as a module in eval mode, after checking its sha256."""
        version = version or self.current_version()
        m = self.manifest(version)
        d = self._dir(version)
        weights = d / m.weights_file
        if not weights.is_file():
            raise IntegrityError(f"model {version}: weights file is missing")
        if verify and sha256_file(weights) != m.weights_sha256:
            raise IntegrityError(f"model {version}: weights sha256 does not match the manifest (file changed)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise IntegrityError(f"model {version}: weights unreadable ({type(exc).__name__})") from None
        module = build(m.architecture)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError:
            raise IntegrityError(f"model {version}: weights do not fit architecture {m.architecture.name}") from None
        return LoadedModel(version, m, module.eval(), d)

    def promote(self, version: str) -> str | None:
        """Make `version` current; returns the previously current version (None if none)."""
        with self._locked():
            return self._promote_locked(version)

    def _promote_locked(self, version: str) -> str | None:
        self.manifest(version)  # exists and parses
        ptr = self._pointer()
        old = ptr["version"]
        if old == version:
            return old
        previous = ptr["previous"] + ([old] if old else [])
        self._set_pointer(version, previous[-50:], "promote")
        self._end_shadow_of(version)
        return old

    def rollback(self) -> str:
        """Return to the model that was current before the current one; returns that version."""
        with self._locked():
            ptr = self._pointer()
            previous = [v for v in ptr["previous"] if (self.root / v / "manifest.json").is_file()]
            if not previous:
                raise ModelError("nothing to roll back to: no model was current before this one")
            target = previous.pop()
            self._set_pointer(target, previous, "rollback")
            self._end_shadow_of(target)
            return target

    # ------------------------------------------------------------------ shadow candidate
    def shadow(self) -> dict[str, Any]:
        """The shadow pointer (`cxrmodel.shadow_pointer.read_shadow`): version None when there is none."""
        return read_shadow(self.root)

    def set_shadow(self, version: str | None, origin: str = "admin", *, only_if: str | None = None) -> str | None:
        """Run `version` in shadow (None: no shadow); returns the version that was in shadow before.

        At most one shadow: choosing another replaces it. The current model is never its own shadow.
        With `only_if`, nothing changes unless that version is the shadow now (the worker turning off
        a broken shadow must not turn off one an administrator chose meanwhile).
        """
        with self._locked():
            if version is not None:
                self.manifest(version)  # exists and parses
                if self._pointer()["version"] == version:
                    raise ModelError(f"{version} is the current model: a shadow runs beside the current one")
            before = read_shadow(self.root)["version"]
            if only_if is None or before == only_if:
                self._write_shadow(version, origin)
            return before

    def _write_shadow(self, version: str | None, origin: str) -> None:
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write(self.root / SHADOW, json.dumps({"version": version, "origin": origin,
                                                     "since": at}, indent=2) + "\n")
        self._append_history({"at": at, "event": "shadow" if version else "shadow-off", "version": version,
                              "origin": origin})

    def _end_shadow_of(self, version: str) -> None:
        """A version that becomes current stops being the shadow (it would run twice on every image)."""
        if read_shadow(self.root)["version"] == version:
            self._write_shadow(None, "became current")

    def history(self) -> list[dict[str, Any]]:
        p = self.root / HISTORY
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
