"""The worker never classifies an image ingest decided not to analyse, even if a job for it exists."""
from __future__ import annotations

from sqlalchemy import select

from daemon.stages.worker import claim_jobs
from storage import db
from storage.analysis import not_analysed_by_view, not_analysed_in_study
from storage.models import NOT_ANALYSED, RECEIVED, Instance, Job


def test_a_job_of_a_not_analysed_instance_is_never_claimed_and_the_reasons_read_back(tmp_path):
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine)
    sessions = db.sessions(engine)
    rows = [(RECEIVED, "frontal", "frontal view (ViewPosition PA)"),
            (NOT_ANALYSED, "lateral", "lateral view (ViewPosition LL); the model is for frontal views only"),
            (NOT_ANALYSED, "decubitus", "decubitus view (ViewPosition LLD); the model is for frontal views only"),
            (NOT_ANALYSED, "lateral", "lateral view (SeriesDescription); the model is for frontal views only")]
    with sessions() as s, s.begin():
        for n, (state, view, reason) in enumerate(rows):
            inst = Instance(sop_instance_uid=f"2.25.{n}", study_uid="2.25.100", series_uid="2.25.101",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state=state, view=view,
                            analysis_reason=reason)
            s.add(inst)
            s.flush()
            s.add(Job(instance_id=inst.id))  # a job even for the laterals: as if queued by mistake
    with sessions() as s, s.begin():
        claimed = claim_jobs(s, "me", 10)
        instances = set(s.scalars(select(Job.instance_id).where(Job.id.in_(claimed))))
        frontal = s.scalar(select(Instance.id).where(Instance.state == RECEIVED))
    assert instances == {frontal}
    with sessions() as s:
        assert not_analysed_by_view(s) == {"lateral": 2, "decubitus": 1}
        listed = not_analysed_in_study(s, "2.25.100")
        assert [(x.sop_instance_uid, x.view) for x in listed] == [("2.25.1", "lateral"), ("2.25.2", "decubitus"),
                                                                   ("2.25.3", "lateral")]
        assert listed[0].reason.startswith("lateral view (ViewPosition LL)")
        assert not_analysed_in_study(s, "2.25.999") == []
    engine.dispose()
