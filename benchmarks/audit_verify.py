"""How long `cxrd audit verify` takes over a year of events (default: one million rows).

Inserts N chained rows in bulk with correct keyed hashes (same field layout as `storage.audit.append`),
then times `storage.audit.verify` (the whole walk: driver fetch + HMAC per row) a few times and prints
rows/s. Prints numbers only; never passes or fails on time.

    python benchmarks/audit_verify.py                       # SQLite in a temp dir, 1,000,000 rows
    python benchmarks/audit_verify.py --rows 200000 --url postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from storage import audit, db  # noqa: E402

KEY = b"\x42" * 32
TYPES = ["instance.stored", "prediction.created", "result.sent", "association.accepted"]


def fill(engine, n: int, chunk: int = 20000) -> float:  # noqa: ANN001
    """Bulk-insert n rows with a valid chain; returns seconds."""
    t0 = time.perf_counter()
    prev = audit.GENESIS
    cols = audit._FIELDS + ("hash",)
    sql = text(f"INSERT INTO audit_events ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})")
    base = 1_700_000_000.0
    for start in range(1, n + 1, chunk):
        batch = []
        for seq in range(start, min(start + chunk, n + 1)):
            et = TYPES[seq % len(TYPES)]
            eid, action = audit.EVENTS[et]
            occurred = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + seq * 30)) + f".{seq % 1000000:06d}+00:00"
            details = json.dumps({"bytes": 500000 + seq % 1000, "transfer_syntax": "1.2.840.10008.1.2.1"},
                                 sort_keys=True, separators=(",", ":"))
            values = (seq, occurred, eid, et, action, 0, "aet:PACS1", "10.0.0.2", f"2.25.{10**30 + seq // 3}",
                      f"2.25.{2 * 10**30 + seq}", details, prev)
            h = audit._hash(KEY, values)
            batch.append(dict(zip(cols, values + (h,))))
            prev = h
        with engine.begin() as conn:
            conn.execute(sql, batch)
    return time.perf_counter() - t0


def baseline_verify(session, key: bytes) -> int:  # noqa: ANN001
    """The previous algorithm (SQLAlchemy streaming partitions, `hmac.digest` per row), for comparison."""
    sql = f"SELECT {', '.join(audit._FIELDS)}, hash FROM audit_events ORDER BY seq"
    result = session.connection().execution_options(stream_results=True, yield_per=20000).exec_driver_sql(sql)
    prev, n = audit.GENESIS, 0
    for r in (row for part in result.partitions() for row in part):
        values = tuple(r[:-1])
        assert values[-1] == prev and audit._hash(key, values) == r[-1]
        prev, n = r[-1], n + 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--url", default="", help="database URL (default: SQLite in a temporary directory)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline", action="store_true", help="also time the previous verify algorithm")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="cxrd-bench-audit-")
    url = args.url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    engine = db.engine_from_url(url)
    db.migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
    fill_s = fill(engine, args.rows)
    print(f"backend={engine.dialect.name} rows={args.rows} fill_s={fill_s:.1f} cpus={os.cpu_count()}")
    ro = db.sessions(db.readonly(engine))
    for i in range(args.repeat):
        t0 = time.perf_counter()
        with ro() as s:
            report = audit.verify(s, KEY)
        dt = time.perf_counter() - t0
        assert report.ok and report.rows == args.rows, report
        print(f"verify run={i + 1} seconds={dt:.2f} rows_per_s={args.rows / dt:,.0f} "
              f"s_per_million={dt * 1e6 / args.rows:.2f}")
    if args.baseline:
        t0 = time.perf_counter()
        with ro() as s:
            assert baseline_verify(s, KEY) == args.rows
        dt = time.perf_counter() - t0
        print(f"baseline (hmac.digest + SQLAlchemy rows) seconds={dt:.2f} s_per_million={dt * 1e6 / args.rows:.2f}")
    engine.dispose()


if __name__ == "__main__":
    main()
