"""Web console page times at hospital size, beside the same audit query run by `cxrd audit query`.

For each backend (SQLite, and PostgreSQL 15 on a throwaway loopback server or --pg-url), builds a
real state (`cxrd init`), fills a year of audit trail (default 1,000,000 rows: a realistic mix of
event types, actors, outcomes and pseudonymous study UIDs, chained under that state's own audit
key, so `cxrd audit verify` passes) and the newest 100,000 images with their jobs, 14 prediction
rows each (with their MACs), results and sent reports, three model versions on disk and a year of
retraining runs. Then adds a compliance and an operations account with `cxrd users add`, starts a
real `cxrd console` (HTTPS, the pair `cxrd init` made) and times, over HTTP with a signed-in
session, the audit search for four filters (one study, one day, an event family over a month,
everything), deep pages (the "older" link followed 50 times; a page near the oldest row), the
per-day chart, the operations dashboard and the model pages; and `cxrd audit query` for the same
filters, both in this process (`daemon.cli.main.main`, everything but interpreter start-up) and as
a subprocess. Prints numbers only; never passes or fails on time.

    python benchmarks/console.py                                  # both backends, full size
    python benchmarks/console.py --rows 2000 --images 200 --backends sqlite --repeat 2   # quick
    python benchmarks/console.py --backends postgresql --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import html
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, free_port, wait_port  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "bench-console-password-1"
CLI = [sys.executable, "-m", "daemon.cli.main"]
LABEL_COUNT = 14
# calling AE titles of a mid-size hospital and their addresses; weights = share of the studies
MODALITIES = [("PACS1", "10.20.1.5", 30), ("CR-ED1", "10.20.4.11", 25), ("CR-WARD3", "10.20.4.23", 15),
              ("DR-OPD", "10.20.5.7", 20), ("MOBILE2", "10.20.6.40", 10)]
PEOPLE = ["console:alice", "console:bob", "os:carol", "console:dpo"]


# ------------------------------------------------------------------------------------ servers
@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """A fresh database on the given server, or on a throwaway PostgreSQL 15 on a loopback port
    (as tests/conftest.py `running_postgres`: initdb and pg_ctl as the postgres user when root)."""
    import sqlalchemy as sa
    datadir = None
    if not url:
        datadir = Path(tempfile.mkdtemp(prefix="cxrd-bench-pg-"))
        as_pg = (lambda cmd: ["runuser", "-u", "postgres", "--", *cmd]) if os.geteuid() == 0 else (lambda cmd: cmd)
        if os.geteuid() == 0:
            shutil.chown(datadir, "postgres", "postgres")
        port = free_port()
        subprocess.run(as_pg([str(PG_BIN / "initdb"), "-D", str(datadir / "data"), "-U", "postgres",
                              "--auth=trust", "-E", "UTF8", "--no-sync"]), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # fsync off: the fill is not what is measured; every page read runs the same either way
        subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(datadir / "data"), "-w", "-l", str(datadir / "log"),
                              "-o", f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
                              "-c shared_buffers=256MB", "start"]), check=True, stdout=subprocess.DEVNULL)
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    name = f"cxrd_bench_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if datadir is not None:
            subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(datadir / "data"), "-m", "immediate", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(datadir, ignore_errors=True)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], env=env, cwd=REPO, capture_output=True, text=True, input=stdin, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"cxrd {' '.join(args)} failed ({r.returncode}): {r.stderr[-800:]}")
    return r


# ------------------------------------------------------------------------------------ filling
def bulk(engine, table: str, cols: tuple[str, ...], rows: Iterable[tuple], chunk: int = 20000) -> int:  # noqa: ANN001
    """Insert rows fast on the driver: COPY on PostgreSQL, executemany in one transaction on SQLite."""
    n = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
                    n += 1
            raw.commit()
        else:
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            cur.execute("PRAGMA synchronous=OFF")  # this connection only; the console's keep FULL
            batch: list[tuple] = []
            cur.execute("BEGIN")
            for r in rows:
                batch.append(r)
                if len(batch) >= chunk:
                    cur.executemany(sql, batch)
                    n += len(batch)
                    batch = []
            if batch:
                cur.executemany(sql, batch)
                n += len(batch)
            cur.execute("COMMIT")
            cur.execute("PRAGMA synchronous=FULL")
        cur.close()
    finally:
        raw.close()
    return n


def uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(125)}"


def dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass
class Image:
    at: datetime
    study: str
    sop: str
    aet: str
    state: str          # reported not_analysed failed quarantined (before the newest are re-labelled)
    model: str


@dataclass
class Plan:
    """What the fill made that the probes need."""
    start: datetime
    end: datetime
    mid_study: str = ""
    images: collections.deque = field(default_factory=collections.deque)
    rows: int = 0
    model_versions: list[tuple[str, datetime]] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)


def events(plan: Plan, clock: Callable[[], datetime], rng: random.Random) -> Iterator[tuple]:
    """A year of a hospital's audit trail, in chain order: per study an association, its images
    (stored, or ignored/rejected/duplicate), their predictions (or a worker failure), a
    re-identification lookup and the report sent (or failed); between studies refusals, console and
    CLI use of the trail and of predictions; daily purges, weekly restarts, monthly retraining.
    `clock()` is the time of the row about to be written. Yields (event_type, outcome, actor, host,
    study, object, details, image-or-None); the writer sets an image's time to its row's."""
    day = clock().date()
    versions = plan.model_versions
    version = versions[0][0]
    aets = [m[0] for m in MODALITIES]
    hosts = {m[0]: m[1] for m in MODALITIES}
    weights = [m[2] for m in MODALITIES]
    from cxrmodel.labels import LABELS

    while True:
        now = clock()
        for name, since in versions:
            if since <= now:
                version = name
        if now.date() != day:
            day = now.date()
            yield ("purge.expired", 0, "cxrd:retention", "cxrd-gw1", "", "",
                   dumps({"purged": rng.randint(600, 1100), "retention_days": 140}), None)
            if day.weekday() == 6:
                yield ("app.stop", 0, "os:cxrd", "cxrd-gw1", "", "", dumps({"component": "serve"}), None)
                yield ("app.start", 0, "os:cxrd", "cxrd-gw1", "", "", dumps({"component": "serve"}), None)
            if day.day == 1:
                cand = f"m{day:%Y-%m}-r"
                yield ("model.trained", 0, "cxrd:scheduler", "cxrd-gw1", "", "",
                       dumps({"version": cand, "images": rng.randint(20000, 90000)}), None)
                promoted = any(since.date() == day for _, since in versions)
                yield ("model.promoted" if promoted else "model.rejected", 0 if promoted else 4, "cxrd:scheduler",
                       "cxrd-gw1", "", "", dumps({"version": version if promoted else cand}), None)
        aet = rng.choices(aets, weights)[0]
        host = hosts[aet]
        study = uid(rng)
        yield ("association.accepted", 0, f"aet:{aet}", host, "", "", "{}", None)
        analysed = 0
        for _ in range(rng.choices((1, 2, 3, 4), (50, 33, 14, 3))[0]):
            sop = uid(rng)
            r = rng.random()
            if r < 0.02:
                yield ("instance.ignored", 0, f"aet:{aet}", host, study, sop,
                       dumps({"reason": "not a chest radiograph (BodyPartExamined ABDOMEN)"}), None)
            elif r < 0.025:
                yield ("instance.rejected", 8, f"aet:{aet}", host, study, sop,
                       dumps({"reason": "Rows does not match the pixel data length"}), None)
            elif r < 0.03:
                yield ("instance.duplicate", 0, f"aet:{aet}", host, study, sop, "{}", None)
            else:
                lateral = rng.random() < 0.05
                state = "not_analysed" if lateral else "reported"
                if not lateral:
                    f = rng.random()
                    state = "failed" if f < 0.003 else "quarantined" if f < 0.0035 else "reported"
                img = Image(now, study, sop, aet, state, version)
                yield ("instance.stored", 0, f"aet:{aet}", host, study, sop,
                       dumps({"analysed": not lateral, "burned_in": "NO", "bytes": rng.randint(900_000, 7_900_000),
                              "deid": ["113100", "113105", "113107"], "deid_edition": "2024b",
                              "transfer_syntax": "1.2.840.10008.1.2.1",
                              "view": "lateral" if lateral else "frontal",
                              "analysis_reason": "lateral view (ViewPosition LL)" if lateral else "frontal view"}), img)
                if state == "reported":
                    analysed += 1
                    positive = [lb for lb in LABELS if rng.random() < 0.06]
                    yield ("prediction.created", 0, "cxrd:worker", "cxrd-gw1", study, sop,
                           dumps({"model": version, "positive": positive}), None)
                elif state == "failed":
                    yield ("instance.failed", 8, "cxrd:worker", "cxrd-gw1", study, sop,
                           dumps({"attempts": 5, "class": "decode", "error": "pixel data could not be decoded",
                                  "model": version}), None)
                elif state == "quarantined":
                    yield ("security.tamper", 12, "cxrd:worker", "cxrd-gw1", study, sop,
                           dumps({"reason": "vault object failed authentication", "what": "vault"}), None)
        if analysed:
            yield ("reid.lookup", 0, "cxrd:results", "cxrd-gw1", study, "",
                   dumps({"instances": analysed, "purpose": "report"}), None)
            f = rng.random()
            if f < 0.01:
                yield ("result.failed", 4, "cxrd:results", "cxrd-gw1", study, "",
                       dumps({"attempt": 1, "destination": "PACS1 (C-STORE)", "error": "association refused",
                              "final": False, "model": version}), None)
            if f < 0.003:
                yield ("result.failed", 8, "cxrd:results", "cxrd-gw1", study, "",
                       dumps({"attempt": 8, "destination": "PACS1 (C-STORE)", "error": "association refused",
                              "final": True, "model": version}), None)
            else:
                yield ("result.sent", 0, "cxrd:results", "cxrd-gw1", study, "",
                       dumps({"destination": "PACS1 (C-STORE)", "instances": analysed, "model": version,
                              "objects": ["sr"]}), None)
        r = rng.random()
        if r < 0.03:
            yield ("association.rejected", 4, rng.choice(["aet:UNKNOWN", "aet:ANY-SCU", ""]),
                   f"10.20.9.{rng.randint(2, 250)}", "", "",
                   dumps({"count": rng.randint(1, 12), "interval_s": 60, "rule": "calling AE title not allowed"}), None)
        elif r < 0.036:
            who = rng.choice(PEOPLE)
            yield ("audit.query", 0, who, "10.30.0.12", "", "",
                   dumps({"filters": {"events": ["association.*"]}, "returned": 50, "view": "search"}), None)
        elif r < 0.040:
            yield ("console.signin", 0, rng.choice(PEOPLE[:2] + PEOPLE[3:]), "10.30.0.12", "", "",
                   dumps({"via": "local"}), None)
        elif r < 0.041:
            yield ("console.signin_failed", 4, "console:bob", "10.30.0.19", "", "",
                   dumps({"reason": "wrong password"}), None)
        elif r < 0.043:
            yield ("predictions.query", 0, "os:carol", "cxrd-gw1", study, "", dumps({"returned": analysed}), None)


def fill_audit(engine, key: bytes, plan: Plan, keep: list[dict[str, Any]], seed: int = 7) -> float:  # noqa: ANN001
    """plan.rows chained rows over [plan.start, plan.end], then the rows `cxrd init` wrote (kept)
    re-chained after them with their own times, so time order stays chain order."""
    from storage import audit
    t0 = time.perf_counter()
    rng = random.Random(seed)
    n = plan.rows - len(keep)
    span = (plan.end - plan.start).total_seconds()
    steps = [rng.expovariate(1.0) for _ in range(n)]
    total = sum(steps)
    acc, times = 0.0, []
    for s in steps:
        acc += s
        times.append(plan.start + timedelta(seconds=span * acc / total))
    cols = audit._FIELDS + ("hash",)
    mid = n // 2
    pos = [0]

    def rows() -> Iterator[tuple]:
        prev = audit.GENESIS
        gen = events(plan, lambda: times[pos[0]], rng)
        for seq in range(1, n + 1):
            pos[0] = seq - 1
            et, outcome, actor, host, study, obj, details, img = next(gen)
            eid, action = audit.EVENTS[et]
            occurred = times[seq - 1].isoformat(timespec="microseconds")
            values = (seq, occurred, eid, et, action, outcome, actor, host, study, obj, details, prev)
            h = audit._hash(key, values)
            prev = h
            plan.counts[et] += 1
            if img is not None:
                img.at = times[seq - 1]
                plan.images.append(img)
            if seq >= mid and not plan.mid_study and et == "instance.stored":
                plan.mid_study = study
            yield values + (h,)
        for k, ev in enumerate(keep, start=n + 1):
            values = (k, ev["occurred_at"], ev["event_id"], ev["event_type"], ev["action"], ev["outcome"],
                      ev["actor"], ev["host"], ev["study_uid"], ev["object_uid"], ev["details"], prev)
            prev = audit._hash(key, values)
            yield values + (prev,)

    bulk(engine, "audit_events", cols, rows())
    return time.perf_counter() - t0


def fill_images(engine, record_key: bytes, plan: Plan, seed: int = 11) -> dict[str, int]:  # noqa: ANN001
    """The newest images (older ones were purged by retention; their audit rows stay) with their
    jobs, 14 prediction rows each, one SR result per study (a fifth with heatmaps too) and the sent
    reports. The last few are still queued or awaiting their report, as on a running service."""
    from cxrmodel.labels import LABELS
    from storage import records
    rng = random.Random(seed)
    pg = engine.dialect.name == "postgresql"

    def ts(d: datetime | None) -> Any:
        if d is None or pg:
            return d
        return d.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

    images = list(plan.images)
    states = [img.state for img in images]
    for k in range(max(0, len(images) - 40), len(images)):   # newest: waiting for the worker
        states[k] = "received" if states[k] == "reported" else states[k]
    for k in range(max(0, len(images) - 100), max(0, len(images) - 40)):  # then: waiting for the report
        states[k] = "predicted" if states[k] == "reported" else states[k]
    inst_cols = ("id", "sop_instance_uid", "study_uid", "series_uid", "sop_class_uid", "modality", "view_position",
                 "transfer_syntax", "state", "vault_object", "size_bytes", "burned_in_annotation", "calling_aet",
                 "received_at", "updated_at", "error", "view", "analysis_reason", "reported_at")
    errors = {"failed": "pixel data could not be decoded", "quarantined": "vault object failed authentication"}

    def inst_rows() -> Iterator[tuple]:
        for k, (img, st) in enumerate(zip(images, states), start=1):
            lateral = st == "not_analysed"
            done = img.at + timedelta(seconds=rng.uniform(30, 90))
            yield (k, img.sop, img.study, img.sop[:-3] + "1", "1.2.840.10008.5.1.4.1.1.1", "CR",
                   "LL" if lateral else "PA", "1.2.840.10008.1.2.1", st, hashlib.sha256(img.sop.encode()).hexdigest(),
                   rng.randint(900_000, 7_900_000), "NO", img.aet, ts(img.at), ts(done), errors.get(st, ""),
                   "lateral" if lateral else "frontal",
                   "lateral view (ViewPosition LL)" if lateral else "frontal view",
                   ts(done) if st in ("reported", "not_analysed") else None)

    job_cols = ("id", "instance_id", "kind", "state", "attempts", "claimed_by", "claimed_at", "not_before",
                "created_at", "last_error")

    def job_rows() -> Iterator[tuple]:
        j = 0
        for k, (img, st) in enumerate(zip(images, states), start=1):
            if st == "not_analysed":
                continue
            j += 1
            jstate = {"received": "queued", "failed": "failed", "quarantined": "failed"}.get(st, "done")
            yield (j, k, "predict", jstate, 5 if jstate == "failed" else 1, "", None, ts(img.at), ts(img.at),
                   errors.get(st, ""))

    pred_cols = ("instance_id", "model_version", "label", "probability", "threshold", "positive", "created_at", "mac")
    thresholds = [round(0.3 + 0.02 * i, 2) for i in range(len(LABELS))]

    def pred_rows() -> Iterator[tuple]:
        for k, (img, st) in enumerate(zip(images, states), start=1):
            if st not in ("reported", "predicted"):
                continue
            at = img.at + timedelta(seconds=rng.uniform(0.2, 2.5))
            for label, t in zip(LABELS, thresholds):
                p = round(rng.betavariate(1.2, 6.0), 6)
                yield (k, img.model, label, p, t, p >= t, ts(at),
                       records.mac(record_key, img.sop, img.model, label, p, t, p >= t))

    studies: dict[str, tuple[datetime, str, bool]] = {}  # study -> (time, model, report still to come)
    for img, st in zip(images, states):
        if st in ("reported", "predicted", "received"):
            waiting = st != "reported" or (img.study in studies and studies[img.study][2])
            studies[img.study] = (img.at, img.model, waiting)
    res_cols = ("id", "study_uid", "model_version", "kind", "state", "attempts", "next_attempt_at", "claimed_by",
                "last_error", "created_at", "sent_at")
    sent_cols = ("id", "result_id", "sop_instance_uid", "analysed", "not_analysed", "sent_at", "superseded_by")
    results: list[tuple] = []
    sent: list[tuple] = []
    for study, (at, model, waiting) in studies.items():
        kinds = ["sr"] + (["heatmap"] if rng.random() < 0.2 else [])
        for kind in kinds:
            rid = len(results) + 1
            f = rng.random()
            rstate = "pending" if waiting else "failed" if f < 0.003 else "sent"
            when = at + timedelta(seconds=rng.uniform(30, 90))
            results.append((rid, study, model, kind, rstate, 8 if rstate == "failed" else 1, ts(when), "",
                            "association refused" if rstate == "failed" else "", ts(at),
                            ts(when) if rstate == "sent" else None))
            if rstate == "sent":
                sent.append((len(sent) + 1, rid, f"2.25.{rng.getrandbits(125)}", 1, 0, ts(when), None))
    out = {"instances": bulk(engine, "instances", inst_cols, inst_rows()),
           "jobs": bulk(engine, "jobs", job_cols, job_rows()),
           "predictions": bulk(engine, "predictions", pred_cols, pred_rows()),
           "results": bulk(engine, "results", res_cols, results),
           "sent_reports": bulk(engine, "sent_reports", sent_cols, sent)}
    return out


def fill_models(rt, plan: Plan, seed: int = 3) -> int:  # noqa: ANN001
    """Three real model versions (a DenseNet121 with an evaluation report and ROC curves each),
    promoted in the order the trail says, and a year of monthly retraining runs."""
    import numpy as np
    import torch

    from cxrmodel import evaluate as E
    from cxrmodel.labels import LABELS
    from cxrmodel.network import ArchSpec, build
    from cxrmodel.promotion import Floor, with_evidence
    from cxrmodel.registry import Registry
    from storage.models import RetrainRun
    torch.manual_seed(seed)
    net = build(ArchSpec(), seed=seed)
    reg = Registry(rt.models_dir)
    rng = np.random.default_rng(seed)
    for k, (version, _since) in enumerate(plan.model_versions):
        Y = (rng.random((2000, len(LABELS))) < 0.1).astype(np.float32)
        sep = 0.45 + 0.05 * k
        P = np.clip(Y * sep + rng.random(Y.shape) * (1 - sep), 0, 1)
        metrics = with_evidence(E.manifest_metrics(E.report(Y, P, n_boot=100), "held-out split"), Y, P, Floor(),
                                n_boot=100)
        reg.add(net, version=version, metrics=metrics, promote=True)
    runs = []
    month = plan.start.replace(day=1, hour=2, minute=0, second=0, microsecond=0)
    promoted = {since.strftime("%Y-%m"): v for v, since in plan.model_versions}
    while month < plan.end:
        key = month.strftime("%Y-%m")
        outcome = "promoted" if key in promoted else random.Random(key).choice(["rejected", "rejected", "skipped"])
        cand = promoted.get(key, f"m{key}-r")
        runs.append(RetrainRun(started_at=month, finished_at=month + timedelta(hours=5), trigger="schedule",
                               outcome=outcome, candidate_version="" if outcome == "skipped" else cand,
                               report=dumps({"images": 40000, "mean_auroc": 0.80 if outcome == "promoted" else 0.77})))
        month = (month + timedelta(days=32)).replace(day=1)
    with rt.sessions() as s, s.begin():
        s.add_all(runs)
    return len(runs)


# ------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    name: str
    times: list[float]
    ref: str = ""          # the CLI row this page is compared with

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def timed(fn: Callable[[], Any], repeat: int, warm: bool = True) -> list[float]:
    if warm:
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Browser:
    """A signed-in console session over real HTTPS (the self-signed pair `cxrd init` made)."""

    def __init__(self, base: str, name: str):
        import requests
        import urllib3
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        self.base = base
        self.http = requests.Session()
        self.http.trust_env = False  # a CA bundle in the environment would override verify=False
        self.http.verify = False
        page = self.http.get(base + "/signin", timeout=60)
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert token, f"no CSRF field on /signin ({page.status_code})"
        r = self.http.post(base + "/signin", data={"name": name, "password": PASSWORD, "csrf_token": token[1]},
                           allow_redirects=False, timeout=60)
        if r.status_code not in (302, 303):
            raise SystemExit(f"sign-in of {name} failed: {r.status_code} {r.text[:300]}")

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, expect: str = "") -> str:
        """The page's HTML; stops the run unless it is a 200 holding `expect` (the page, not an error)."""
        r = self.http.get(self.base + path, allow_redirects=False, timeout=120)
        if r.status_code != 200 or expect not in r.text:
            raise SystemExit(f"GET {path}: {r.status_code}, {expect!r} {'missing' if expect else ''}: {r.text[:300]}")
        return r.text


OLDER = re.compile(r'href="(/audit\?[^"]*before=\d+[^"]*)"')


def older_link(page: str) -> str | None:
    m = OLDER.search(page)
    return html.unescape(m[1]) if m else None


def run_backend(backend: str, url: str, args: argparse.Namespace) -> list[Timing]:
    from urllib.parse import urlencode
    tmp = Path(tempfile.mkdtemp(prefix=f"cxrd-bench-console-{backend}-", dir=args.tmp))
    state = tmp / "state"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TCP_NODELAY": "1", "CXRD_STORAGE__STATE_DIR": str(state),
           "CXRD_CONSOLE__BIND": "127.0.0.1", "CXRD_CONSOLE__PORT": str(port), "CXRD_CONSOLE__TLS": "true",
           "CXRD_RETRAIN__ENABLED": "false", "CXRD_STORAGE__MIN_FREE_MB": "1"}
    env.pop("CREDENTIALS_DIRECTORY", None)
    if url:
        env["CXRD_STORAGE__DATABASE_URL"] = url
    for k in [k for k in os.environ if k.startswith("CXRD_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("CXRD_")})
    console = None
    browsers: list[Browser] = []
    try:
        t0 = time.perf_counter()
        cli(env, "init")
        from sqlalchemy import text

        from config import load_settings
        from daemon.runtime import Runtime
        from storage.audit import verify
        rt = Runtime(load_settings(None))
        engine = rt.engine
        with engine.begin() as c:
            keep = [dict(r._mapping) for r in c.execute(text("SELECT * FROM audit_events ORDER BY seq"))]
            c.execute(text("DELETE FROM audit_events"))
        first_init = datetime.fromisoformat(keep[0]["occurred_at"]) if keep else datetime.now(timezone.utc)
        end = first_init - timedelta(minutes=1)
        start = end - timedelta(days=365)
        plan = Plan(start=start, end=end, rows=args.rows, images=collections.deque(maxlen=args.images))
        midnight = dict(day=1, hour=0, minute=0, second=0, microsecond=0)
        plan.model_versions = [("m-base-2025", start - timedelta(days=30)),
                               (f"m{(end - timedelta(days=250)):%Y-%m}-r", (end - timedelta(days=250)).replace(**midnight)),
                               (f"m{(end - timedelta(days=90)):%Y-%m}-r", (end - timedelta(days=90)).replace(**midnight))]
        audit_s = fill_audit(engine, rt.keys.audit_key, plan, keep)
        images_n = fill_images(engine, rt.keys.record_key, plan)
        plan.model_versions = plan.model_versions[len(plan.model_versions) - args.models:] if args.models else []
        runs = fill_models(rt, plan) if args.models else 0
        if backend == "sqlite":  # a running service's WAL is small: checkpoint the fill's away
            raw = engine.raw_connection()  # outside any transaction (a checkpoint cannot run in one)
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
        if backend == "postgresql":
            with engine.begin() as c:
                for table, col in (("instances", "id"), ("jobs", "id"), ("predictions", "id"), ("results", "id"),
                                   ("sent_reports", "id"), ("retrain_runs", "id"), ("audit_events", "seq")):
                    c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), "
                                   f"(SELECT max({col}) FROM {table}))"))
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE"))  # what autovacuum does after a load this size
        fill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with rt.read_sessions() as s:
            report = verify(s, rt.keys.audit_key)
        verify_s = time.perf_counter() - t1
        if not report.ok:
            raise SystemExit(f"filled chain does not verify: {report}")
        cli(env, "users", "add", "auditor", "--role", "compliance", stdin=PASSWORD + "\n")
        cli(env, "users", "add", "ops", "--role", "operations", stdin=PASSWORD + "\n")
        print(f"# {backend}: filled in {fill_s:.0f} s (audit rows {report.rows:,} in {audit_s:.0f} s, chain verified "
              f"in {verify_s:.1f} s; {', '.join(f'{k} {v:,}' for k, v in images_n.items())}; "
              f"model versions {len(plan.model_versions)}, retrain runs {runs}); "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"#   study searched: {plan.mid_study}", flush=True)
        print(f"#   top events: {', '.join(f'{k} {v:,}' for k, v in plan.counts.most_common(8))}", flush=True)
        engine.dispose()

        log = open(tmp / "console.log", "ab")
        console = subprocess.Popen([*CLI, "console"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, 120)
        base = f"https://127.0.0.1:{port}"
        comp = Browser(base, "auditor")
        browsers.append(comp)
        ops = Browser(base, "ops")
        browsers.append(ops)

        day = (end - timedelta(days=182)).astimezone().date()
        month = f"{(end - timedelta(days=200)).astimezone():%Y-%m}"
        year_ago = (end - timedelta(days=365)).astimezone().date()
        filters = {
            "one study": ([("study", plan.mid_study)], ["--study", plan.mid_study]),
            "one day": ([("since", day.isoformat()), ("until", (day + timedelta(days=1)).isoformat())],
                        ["--since", day.isoformat(), "--until", (day + timedelta(days=1)).isoformat()]),
            "family over a month": ([("event", "association.*"), ("month", month)],
                                    ["--event", "association.*", "--month", month]),
            "everything, first page": ([], []),
            "a year (from 365 days back)": ([("since", year_ago.isoformat())], ["--since", year_ago.isoformat()]),
        }
        out: list[Timing] = []
        from daemon.cli.main import main as cxrd_main

        def in_process(argv: list[str]) -> None:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = cxrd_main(["audit", "query", *argv])
            assert rc == 0, argv

        for label, (params, argv) in filters.items():
            out.append(Timing(f"cli: audit query, {label} (in-process)", timed(lambda: in_process(argv), args.repeat)))
            if args.cli_subprocess:
                out.append(Timing(f"cli: audit query, {label} (subprocess)",
                                  timed(lambda: cli(env, "audit", "query", *argv), args.cli_subprocess, warm=False)))
            path = "/audit?" + urlencode(params + [("limit", "100")])
            out.append(Timing(f"console: search, {label}", timed(lambda: comp.get(path, "Showing"), args.repeat),
                              ref=f"cli: audit query, {label} (in-process)"))
        for label, params in (("everything", []), ("family over a month", filters["family over a month"][0])):
            page = comp.get("/audit?" + urlencode(params + [("limit", "100")]))
            hops = []
            for _ in range(args.deep):
                link = older_link(page)
                if link is None:
                    break
                t0 = time.perf_counter()
                page = comp.get(link, "Showing")
                hops.append(time.perf_counter() - t0)
            if hops:
                out.append(Timing(f"console: search, {label}, older link x{len(hops)} (per page)", hops))
        far = "/audit?" + urlencode([("limit", "100"), ("before", str(min(1000, args.rows // 2)))])
        out.append(Timing("console: search, everything, a page near the oldest row", timed(lambda: comp.get(far, "Showing"), args.repeat)))
        for days in (30, 365):
            out.append(Timing(f"console: events per day, {days} days",
                              timed(lambda: comp.get(f"/audit/activity?days={days}", "<svg"), args.repeat)))
        for hours in (24, 168):
            out.append(Timing(f"console: operations dashboard, {hours} h",
                              timed(lambda: ops.get(f"/operations?hours={hours}", "Associations per calling AE"),
                                    args.repeat)))
        out.append(Timing("console: models", timed(lambda: ops.get("/models", "chart-roc" if args.models else "Retraining runs"),
                                                  args.repeat)))
        if plan.model_versions:
            current = plan.model_versions[-1][0]
            out.append(Timing("console: model version page", timed(lambda: ops.get(f"/models/{current}", "chart-roc"),
                                                                    args.repeat)))
        print(f"# {backend}: measured; load {os.getloadavg()[0]:.1f}", flush=True)
        if args.explain:
            explain(url, page_probes(filters))
        return out
    finally:
        for b in browsers:  # an open keep-alive TLS connection holds the console's shutdown for 30 s
            b.close()
        if console is not None:
            console.terminate()
            try:
                console.wait(30)
            except subprocess.TimeoutExpired:
                console.kill()
        if args.keep:
            print(f"# {backend}: state kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def explain(url: str, probes: dict[str, Callable[[Any], Any]], top: int = 3, floor_s: float = 0.02) -> None:
    """Each probe (a page's own query functions, called in this process) with its slowest SQL
    statements timed at the driver, and the database's plan for each (EXPLAIN [QUERY PLAN])."""
    from sqlalchemy import event

    from config import load_settings
    from daemon.runtime import Runtime
    rt = Runtime(load_settings(None))
    engine = rt.engine
    log: list[tuple[float, str, Any]] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        conn.info["t0"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        log.append((time.perf_counter() - conn.info.pop("t0", time.perf_counter()), statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    for name, probe in probes.items():
        log.clear()
        t0 = time.perf_counter()
        probe(rt)
        total = time.perf_counter() - t0
        stmts = sorted(log, key=lambda x: -x[0])
        print(f"\n## {name}: {total:.3f} s in process, {len(log)} statements, SQL {sum(x[0] for x in log):.3f} s")
        for seconds, statement, params in stmts[:top]:
            if seconds < floor_s:
                break
            print(f"- {seconds:.3f} s: {' '.join(statement.split())[:400]}")
            print(f"  params: {str(params)[:200]}")
            with engine.connect() as c:
                for row in c.exec_driver_sql(prefix + statement, params):
                    print("  plan:", row[-1])
    event.remove(engine, "before_cursor_execute", before)
    event.remove(engine, "after_cursor_execute", after)
    engine.dispose()


def page_probes(filters: dict[str, tuple[list, list]]) -> dict[str, Callable[[Any], Any]]:
    """The query work behind each timed page, as functions of a Runtime (no HTTP, no template)."""
    from starlette.datastructures import MultiDict

    from daemon.console import audit_search, ops_dashboard, ops_models, ops_queries

    def search(params: list) -> Callable[[Any], Any]:
        def run(rt: Any) -> Any:
            srch = audit_search.read_search(MultiDict(params + [("limit", "100")]), lambda: rt.keys.uid_key)
            with rt.read_sessions() as s:
                return audit_search.page(s, srch)
        return run

    def per_day(days: int) -> Callable[[Any], Any]:
        def run(rt: Any) -> Any:
            today = datetime.now().astimezone().date()
            with rt.read_sessions() as s:
                return audit_search.per_day(s, today - timedelta(days=days - 1), today)
        return run

    def models(rt: Any) -> Any:
        with rt.read_sessions() as s:
            return ops_models.retrain_runs(s), ops_queries.model_events(s)

    def cli_query(params: list) -> Callable[[Any], Any]:
        """What `cxrd audit query` runs for the same filter: a page in seq order, and one more row."""
        from dataclasses import replace

        from storage import audit_query

        def run(rt: Any) -> Any:
            flt = audit_search.read_search(MultiDict(params), lambda: rt.keys.uid_key).flt
            with rt.read_sessions() as s:
                rows = audit_query.query(s, flt, limit=100)
                return rows and audit_query.query(s, replace(flt, after_seq=rows[-1]["seq"]), limit=1)
        return run

    probes: dict[str, Callable[[Any], Any]] = {f"search, {k}": search(v[0]) for k, v in filters.items()}
    probes |= {f"cli query, {k}": cli_query(v[0]) for k, v in filters.items()}
    probes |= {"events per day, 30 days": per_day(30), "events per day, 365 days": per_day(365),
               "operations dashboard, 24 h": lambda rt: ops_dashboard.collect(rt, 24),
               "operations dashboard, 168 h": lambda rt: ops_dashboard.collect(rt, 168),
               "models (database part)": models}
    return probes


def print_table(backend: str, timings: list[Timing]) -> None:
    by_name = {t.name: t for t in timings}
    print(f"\n| backend | page / query | median s | max s | n | reference: CLI in-process median s |")
    print("|---|---|---|---|---|---|")
    for t in timings:
        ref = by_name.get(t.ref)
        print(f"| {backend} | {t.name} | {t.median:.3f} | {t.max:.3f} | {len(t.times)} | "
              f"{f'{ref.median:.3f}' if ref else ''} |")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="audit rows (default 1,000,000)")
    p.add_argument("--images", type=int, default=100_000, help="images kept in the database (default 100,000)")
    p.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--pg-url", default="", help="a PostgreSQL server to create a scratch database on "
                   "(default: a throwaway PostgreSQL 15 on a loopback port)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per page or query (after one warm-up)")
    p.add_argument("--cli-subprocess", type=int, default=3,
                   help="runs of `cxrd audit query` as a subprocess per filter (interpreter start-up included; 0: none)")
    p.add_argument("--models", type=int, default=3, choices=range(4),
                   help="model versions written to disk (real DenseNet121 weights; 0 for a quick run without torch)")
    p.add_argument("--deep", type=int, default=50, help="older links to follow for the deep-page figure")
    p.add_argument("--tmp", default=None, help="directory for the scratch states (default: the system's)")
    p.add_argument("--explain", action="store_true", help="also print each page's slowest SQL statements "
                   "(timed in this process) with the database's plan for each")
    p.add_argument("--keep", action="store_true", help="keep the states (SQLite) for EXPLAIN afterwards")
    args = p.parse_args()
    if args.rows < 1000 or args.images < 100 or args.images * 3 > args.rows:
        p.error("--rows must be at least 1000 and at least 3 x --images (each image leaves 2-3 audit rows)")
    print(f"# console benchmark: rows={args.rows:,} images={args.images:,} repeat={args.repeat} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} "
          f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", flush=True)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "sqlite":
            print_table(backend, run_backend(backend, "", args))
        elif backend == "postgresql":
            with postgres(args.pg_url or None) as url:
                print_table(backend, run_backend(backend, url, args))
        else:
            p.error(f"unknown backend {backend!r}")


if __name__ == "__main__":
    main()
