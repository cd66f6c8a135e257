"""The worker's batch former: small claims merge into full forwards, nothing is dropped or reordered,
and two models' preprocessing never share a forward."""
from __future__ import annotations

from daemon.worker import EngineSettings, Prepared, Worker


def worker(batch_size: int) -> Worker:
    return Worker(sessions=None, vault=None, keys=None, registry=None,  # type: ignore[arg-type]
                  engine_settings=EngineSettings(batch_size=batch_size), results_enabled=False)


def claim(first_job: int, n: int, version: str = "v1") -> list[Prepared]:
    return [Prepared(job, job, f"sop{job}", "study", None, version=version) for job in range(first_job, first_job + n)]


def drain(w: Worker) -> list[list[int]]:
    batches = []
    while True:
        batch = w._next_batch()
        if not batch:
            return batches
        batches.append([p.job_id for p in batch])


def test_claims_of_three_merge_into_batches_of_four_in_order():
    w = worker(4)
    w._ready.put(claim(1, 3))
    w._ready.put(claim(4, 3))
    first = [p.job_id for p in w._next_batch()]  # 1-3 and 4; 5 and 6 carried over
    w._ready.put(claim(7, 3))
    assert [first] + drain(w) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_lone_claim_is_not_held_back_waiting_for_a_full_batch():
    w = worker(8)
    w._ready.put(claim(1, 1))
    assert [p.job_id for p in w._next_batch()] == [1]
    assert w._next_batch() == [] and not w._carry


def test_claims_prepared_for_different_models_never_share_a_forward():
    w = worker(8)
    w._ready.put(claim(1, 2, "old"))
    w._ready.put(claim(3, 2, "new"))
    assert drain(w) == [[1, 2], [3, 4]]
