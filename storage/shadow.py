"""Shadow predictions: a candidate model's probabilities, stored apart from what is sent.

The worker runs a shadow candidate on the current model's batches (`daemon.stages.shadow`). Its
output lands here, in `shadow_predictions`, never in `predictions`: the results stage reads only
`predictions`, so nothing a shadow says can reach a PACS. What must stay true:

* one row per image and candidate version (a batch replayed after a crash writes nothing twice);
* each row carries an HMAC (the record key, with its own domain string, so a prediction row's tag
  never verifies as a shadow row's or the reverse) over the pseudonymous SOP Instance UID, both
  versions and the probabilities; a row edited in SQL or written without the key is left out of every
  comparison and counted as such;
* a comparison pairs an image's shadow row with the same image's authentic prediction rows of the
  current model, all fourteen of them, or leaves the image out.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from . import records
from .models import Instance, Prediction, ShadowPrediction

_CHUNK = 500  # ids per IN (...) list: well under every backend's bound on bound parameters


def canonical(probabilities: Mapping[str, float]) -> str:
    """The stored text: sorted keys, floats as repr (round-trips exactly through JSON)."""
    return json.dumps({str(k): float(v) for k, v in probabilities.items()}, sort_keys=True, separators=(",", ":"))


def mac(key: bytes, sop_instance_uid: str, model_version: str, current_version: str, probabilities: str) -> str:
    msg = "\x1f".join(("shadow-prediction", sop_instance_uid, model_version, current_version, probabilities))
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, tag: str, sop_instance_uid: str, model_version: str, current_version: str,
           probabilities: str) -> bool:
    expected = mac(key, sop_instance_uid, model_version, current_version, probabilities)
    return bool(tag) and hmac.compare_digest(expected, str(tag))


def record(session: Session, key: bytes, model_version: str, current_version: str,
           images: Sequence[tuple[int, str, Mapping[str, float]]], now: datetime) -> int:
    """Insert one row per (instance id, pseudonymous SOP UID, probabilities) not already recorded for
    this version; returns how many were written."""
    if not images:
        return 0
    conn = session.connection()
    already = set(conn.scalars(select(ShadowPrediction.instance_id).where(
        ShadowPrediction.instance_id.in_([i for i, _, _ in images]), ShadowPrediction.model_version == model_version)))
    rows = []
    for instance_id, sop, probs in images:
        if instance_id in already:
            continue
        text = canonical(probs)
        rows.append({"instance_id": instance_id, "model_version": model_version, "current_version": current_version,
                     "probabilities": text, "created_at": now,
                     "mac": mac(key, sop, model_version, current_version, text)})
    if rows:
        conn.execute(insert(ShadowPrediction.__table__), rows)
    return len(rows)


@dataclass
class Paired:
    """Images both models scored, with the study each belongs to (the bootstrap's unit)."""
    instance_ids: list[int] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    current: list[dict[str, float]] = field(default_factory=list)
    candidate: list[dict[str, float]] = field(default_factory=list)
    rejected: int = 0            # images left out: a shadow or prediction row failed its HMAC


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def paired(session: Session, key: bytes, candidate: str, current: str, only: Iterable[int] | None = None,
           labels: Sequence[str] = ()) -> Paired:
    """Authentic shadow rows of `candidate` that ran beside `current`, each with `current`'s authentic
    predictions for the same image; `only` restricts to these instance ids (those with ground truth).
    `labels` (all 14 findings) must all be present in both for an image to count."""
    wanted = None if only is None else set(only)
    rows = session.execute(
        select(ShadowPrediction.instance_id, ShadowPrediction.probabilities, ShadowPrediction.mac,
               Instance.sop_instance_uid, Instance.study_uid)
        .join(Instance, Instance.id == ShadowPrediction.instance_id)
        .where(ShadowPrediction.model_version == candidate, ShadowPrediction.current_version == current)
        .order_by(ShadowPrediction.instance_id)).all()
    out = Paired()
    shadow: dict[int, tuple[str, dict[str, float]]] = {}
    for instance_id, text, tag, sop, study in rows:
        if wanted is not None and instance_id not in wanted:
            continue
        try:
            probs = {str(k): float(v) for k, v in json.loads(text).items()}
        except (ValueError, TypeError, AttributeError):
            out.rejected += 1
            continue
        if not verify(key, tag, sop, candidate, current, text) or any(lab not in probs for lab in labels):
            out.rejected += 1
            continue
        shadow[instance_id] = (study, probs)
    ids = sorted(shadow)
    cur: dict[int, dict[str, float]] = {}
    forged: set[int] = set()
    for chunk in _chunks(ids):
        for instance_id, label, prob, thr, positive, tag, sop in session.execute(
                select(Prediction.instance_id, Prediction.label, Prediction.probability, Prediction.threshold,
                       Prediction.positive, Prediction.mac, Instance.sop_instance_uid)
                .join(Instance, Instance.id == Prediction.instance_id)
                .where(Prediction.instance_id.in_(chunk), Prediction.model_version == current)):
            if not records.verify(key, tag, sop, current, label, prob, thr, positive):
                forged.add(instance_id)
            cur.setdefault(instance_id, {})[label] = float(prob)
    for instance_id in ids:
        probs = cur.get(instance_id)
        if probs is None:
            continue  # the current model has not recorded this image (yet): not paired
        if instance_id in forged or any(lab not in probs for lab in labels):
            out.rejected += 1
            continue
        study, cand = shadow[instance_id]
        out.instance_ids.append(instance_id)
        out.studies.append(study)
        out.current.append(probs)
        out.candidate.append(cand)
    return out


def versions(session: Session) -> dict[str, int]:
    """Candidate versions with shadow rows, and how many images each scored."""
    return {v: int(n) for v, n in session.execute(
        select(ShadowPrediction.model_version, func.count()).group_by(ShadowPrediction.model_version))}
