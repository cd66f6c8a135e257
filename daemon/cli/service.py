"""`cxrd init`, `serve`, `check-config`, `status`: setting up, running and looking at the service."""
from __future__ import annotations

import argparse
import json
import sys

from config import redacted
from config.loader import origin
from daemon.cli.errors import CommandError
from daemon.runtime import Runtime


def register(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("init", help="create the state directory, database schema and keys (idempotent)")
    p.set_defaults(func=run_init, reads_dicom=False)
    p = sub.add_parser("serve", help="run the daemon in the foreground (what systemd starts)")
    p.set_defaults(func=run_serve)
    p = sub.add_parser("check-config", help="validate and print the effective settings, secrets redacted")
    p.add_argument("--format", choices=("toml", "json"), default="toml")
    p.set_defaults(func=run_check_config, reads_dicom=False)
    p = sub.add_parser("status", help="queue depth, counts by state, current model, last retrain")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_status, reads_dicom=False)


def run_init(args: argparse.Namespace, rt: Runtime) -> int:
    created = initialise(rt)
    print(f"cxrd: state directory {rt.state_dir} ready (schema {created['schema']}, "
          f"key file {created['key_file']})")
    return 0


def initialise(rt: Runtime) -> dict[str, str]:
    """What `init` does and `serve` repeats at start: directories, schema, keys. Idempotent."""
    from storage import db
    state = rt.ensure_state_dir()
    for sub in ("vault", "models", "inbox", "cache"):
        (state / sub).mkdir(exist_ok=True, mode=0o700)
    before = db.schema_revision(rt.engine)
    revision = db.migrate(rt.engine)
    key_state = rt.ensure_keys()
    _console_certificate(rt)
    if before != revision:
        rt.audit("app.init", schema_from=before, schema=revision)
        _anchor_audit_head(rt)
    return {"schema": revision or "", "key_file": key_state}


def _console_certificate(rt: Runtime) -> None:
    """A self-signed pair for the console's first start, when its certificate is the default one in the
    state directory and none is there yet (never overwrites, never writes outside the state)."""
    c = rt.settings.console
    default_dir = rt.state_dir / "console"
    if c.tls and all(str(p).startswith(str(default_dir) + "/") for p in (c.tls_cert, c.tls_key)):
        from pathlib import Path

        from daemon.console.tls import make_self_signed
        make_self_signed(Path(c.tls_cert), Path(c.tls_key))


def _anchor_audit_head(rt: Runtime) -> None:
    """Anchor the chain's head outside the database from the first row on, so a table emptied after
    `init` fails `cxrd audit verify` instead of verifying as a fresh, empty chain."""
    from storage import audit_anchor
    with rt.read_sessions() as s:
        head = audit_anchor.current_head(s)
    if head is not None:
        audit_anchor.append(rt.state_dir / audit_anchor.FILE_NAME, rt.keys.audit_key, *head)


def run_serve(args: argparse.Namespace, rt: Runtime) -> int:
    from daemon.ops.allocator import keep_large_buffers
    from daemon.service import serve
    keep_large_buffers()
    initialise(rt)
    return serve(rt)


def run_check_config(args: argparse.Namespace, rt: Runtime) -> int:
    effective = redacted(rt.settings)
    if args.format == "json":
        json.dump(effective, sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(to_toml(effective))
    print(f"cxrd: configuration is valid; state directory {rt.state_dir} (storage.state_dir: "
          f"{origin('storage.state_dir', rt.config_file)})", file=sys.stderr)
    return 0


def to_toml(tree: dict, prefix: str = "") -> str:
    """Render the settings tree as TOML (sections after plain keys, as TOML requires)."""
    plain = [(k, v) for k, v in tree.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in tree.items() if isinstance(v, dict)]
    out = []
    if plain:
        if prefix:
            out.append(f"[{prefix}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in plain]
        out.append("")
    for k, v in tables:
        out.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out)


def run_status(args: argparse.Namespace, rt: Runtime) -> int:
    from storage import db
    if db.schema_revision(rt.engine) is None:
        raise CommandError(f"no cxrd database at {rt.settings.storage.database_url.split('@')[-1]}; "
                           "run `cxrd init` first")
    info = collect_status(rt)
    if args.format == "json":
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"state directory : {info['state_dir']}")
    print(f"database        : {info['database']} (schema {info['schema']})")
    print(f"queue depth     : {info['queue_depth']} job(s) waiting")
    print("instances       : " + ", ".join(f"{k} {v}" for k, v in info["instances"].items()))
    if info["not_analysed"]:
        print("not analysed    : " + ", ".join(f"{k} {v}" for k, v in info["not_analysed"].items())
              + " (stored; the model is for frontal views)")
    print("not stored      : " + ", ".join(f"{k} {v}" for k, v in info["not_stored"].items())
          + " (acknowledged or refused at receipt, audited, nothing kept)")
    print("results         : " + (", ".join(f"{k} {v}" for k, v in info["results"].items()) or "none"))
    model = info["model"]
    print(f"current model   : {model or 'none yet - studies stay queued until one is promoted (cxrd train / cxrd model import)'}")
    shadow = info["shadow"]
    if shadow.get("error"):
        print(f"shadow model    : {shadow['error']}")
    elif shadow["version"]:
        print(f"shadow model    : {shadow['version']} (since {shadow['since']}, {shadow['origin']}; "
              f"{shadow['images_scored']} image(s) scored, nothing sent)")
    else:
        print("shadow model    : none")
    last = info["last_retrain"]
    print(f"last retrain    : {last['started_at']} {last['outcome']} {last['candidate']}" if last else
          "last retrain    : never")
    print("reports         : " + ", ".join(f"{k} {v}" for k, v in info["reports"].items()))
    print("labels          : " + ", ".join(f"{k} {v}" for k, v in info["labels"].items())
          + f" ({sum(info['labels'].values())} in all; manual wins)")
    return 0


def collect_status(rt: Runtime) -> dict:
    from sqlalchemy import func, select

    from storage import db, service_counts
    from storage.analysis import not_analysed_by_view
    from storage.ground_truth import counts_by_source
    from storage.models import Job, Result, RetrainRun
    from storage.reports import counts_by_state
    from storage.shadow import versions
    with db.reachable(rt.engine), rt.read_sessions() as session:
        instances, not_stored = service_counts.images_by_state(session), service_counts.not_stored(session)
        queue = session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(("queued", "running"))))
        results = dict(session.execute(select(Result.state, func.count()).group_by(Result.state)).all())
        not_analysed = not_analysed_by_view(session)
        last = session.scalars(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(1)).first()
        reports, labels, scored = counts_by_state(session), counts_by_source(session), versions(session)
    return {
        "state_dir": str(rt.state_dir),
        "database": rt.engine.url.render_as_string(hide_password=True),
        "schema": db.schema_revision(rt.engine),
        "queue_depth": queue or 0,
        # Stored instances by state; ignored images are not stored, so they are counted under
        # not_stored, from the audit trail (storage.service_counts, as on the console).
        "instances": instances,
        "not_stored": not_stored,
        "not_analysed": not_analysed,  # per view (lateral, decubitus, ...): daemon.stages.view_rule
        "results": results,
        "model": rt.current_model_summary(),
        "shadow": _shadow_status(rt, scored),
        # report intake (HL7) and the ground-truth store it feeds, beside `cxrd labels import`
        "reports": reports,
        "labels": labels,
        "last_retrain": None if last is None else {
            "started_at": last.started_at.isoformat(), "outcome": last.outcome,
            "candidate": last.candidate_version},
    }


def _shadow_status(rt: Runtime, scored: dict[str, int]) -> dict:
    """The shadow candidate (`cxrmodel.shadow_pointer`, read without torch) and how many live images
    it has scored; an unreadable pointer is reported, not raised: status must always answer."""
    from cxrmodel.errors import ModelError
    from cxrmodel.shadow_pointer import read_shadow
    try:
        pointer = read_shadow(rt.models_dir)
    except ModelError as exc:
        return {"version": None, "error": str(exc)}
    return {**pointer, "images_scored": scored.get(pointer["version"], 0) if pointer["version"] else 0}
