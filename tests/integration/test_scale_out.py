"""Two `cxrd serve` processes sharing one real PostgreSQL 15 server and one state directory (vault,
keys, models): a push spread over both ends with every instance predicted exactly once."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, func, select

from conftest import copy_with_new_uids, storescu
from storage.models import Instance, Job, Prediction
from test_pipeline import FAST, install_model, wait_for

pytestmark = pytest.mark.postgres


def test_two_daemons_on_postgresql_predict_every_instance_exactly_once(daemon_factory, shared_data, tmp_path,
                                                                      fresh_pg_database):
    shared_state = tmp_path / "shared-state"
    env = {**FAST, "CXRD_STORAGE__DATABASE_URL": fresh_pg_database, "CXRD_MODEL__BATCH_SIZE": "4"}
    ingest_only = daemon_factory({**env, "CXRD_MODEL__WORKERS": "0"}, state_dir=shared_state)
    both = daemon_factory(env, state_dir=shared_state)
    worker_only = daemon_factory({**env, "CXRD_DICOM__ENABLED": "false"}, state_dir=shared_state)
    ingest_only.cli("init", check=True)
    install_model(shared_state)
    both.start()
    ingest_only.start()
    worker_only.start()
    files = copy_with_new_uids(shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm", tmp_path / "push", 24)
    outcomes: dict[str, list[str]] = {}
    pushes = [threading.Thread(target=lambda d=d, part=part: outcomes.__setitem__(d.dicom_port, storescu(d.dicom_port, *part)[1]))
              for d, part in ((ingest_only, files[:12]), (both, files[12:]))]
    for t in pushes:
        t.start()
    for t in pushes:
        t.join()
    assert all(v == ["Success"] * 12 for v in outcomes.values()), outcomes
    engine = create_engine(fresh_pg_database)

    def predicted() -> int:
        with engine.connect() as c:
            return c.execute(select(func.count()).select_from(Instance).where(Instance.state == "predicted")).scalar()

    wait_for(lambda: predicted() == 24, timeout=240)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Prediction)).scalar() == 24 * 14
        assert c.execute(select(func.count()).select_from(Job).where(Job.state == "done")).scalar() == 24
        dupes = c.execute(select(Prediction.instance_id, Prediction.label, func.count())
                          .group_by(Prediction.instance_id, Prediction.label).having(func.count() > 1)).all()
        workers = {w.split(":")[1] for w in c.execute(select(Job.claimed_by)).scalars()}
    assert dupes == []
    assert str(ingest_only.proc.pid) not in workers  # the ingest-only daemon never claims work
    for d in (ingest_only, both, worker_only):
        assert d.stop() == 0
    engine.dispose()
