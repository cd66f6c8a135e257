"""The worker's batch former: small claims merge into full forwards, nothing is dropped or reordered,
and two models' preprocessing never share a forward."""
from __future__ import annotations

import threading
import time

from daemon.stages.worker import EngineSettings, Prepared, Worker


def worker(batch_size: int, max_batch_wait_ms: int = 50) -> Worker:
    return Worker(sessions=None, vault=None, keys=None, registry=None,  # type: ignore[arg-type]
                  engine_settings=EngineSettings(batch_size=batch_size, max_batch_wait_ms=max_batch_wait_ms),
                  results_enabled=False)


def claim(first_job: int, n: int, version: str = "v1") -> list[Prepared]:
    return [Prepared(job, job, f"sop{job}", "study", None, version=version) for job in range(first_job, first_job + n)]


def drain(w: Worker) -> list[list[int]]:
    batches = []
    while True:
        batch = w.batches.next_batch()
        if not batch:
            return batches
        batches.append([p.job_id for p in batch])


def test_claims_of_three_merge_into_batches_of_four_in_order():
    w = worker(4)
    w.batches.ready.put(claim(1, 3))
    w.batches.ready.put(claim(4, 3))
    first = [p.job_id for p in w.batches.next_batch()]  # 1-3 and 4; 5 and 6 carried over
    w.batches.ready.put(claim(7, 3))
    assert [first] + drain(w) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_lone_claim_is_not_held_back_waiting_for_a_full_batch():
    w = worker(8)
    w.batches.ready.put(claim(1, 1))
    assert [p.job_id for p in w.batches.next_batch()] == [1]
    assert w.batches.next_batch() == [] and w.batches.empty()


def test_claims_prepared_for_different_models_never_share_a_forward():
    w = worker(8)
    w.batches.ready.put(claim(1, 2, "old"))
    w.batches.ready.put(claim(3, 2, "new"))
    assert drain(w) == [[1, 2], [3, 4]]


# Windows far longer than the timings asserted, so a slow CI machine cannot flip an outcome.

def test_a_short_batch_waits_for_the_claim_being_prepared():
    w = worker(8, max_batch_wait_ms=600)
    w.batches.ready.put(claim(1, 3))
    w.batches.claimed = 5  # the prepare stage holds five more, decrypting and resizing them

    def handed_on() -> None:
        w.batches.claimed = 0
        w.batches.ready.put(claim(4, 5))
    later = threading.Timer(0.03, handed_on)
    later.start()
    t0 = time.monotonic()
    batch = [p.job_id for p in w.batches.next_batch()]
    later.join()
    assert batch == list(range(1, 9))
    assert time.monotonic() - t0 < 0.5  # taken as soon as the batch was full, not at the deadline


def test_a_claim_that_never_arrives_releases_the_short_batch_after_the_window():
    w = worker(8, max_batch_wait_ms=300)
    w.batches.ready.put(claim(1, 3))
    w.batches.claimed = 5
    t0 = time.monotonic()
    assert [p.job_id for p in w.batches.next_batch()] == [1, 2, 3]
    assert 0.25 < time.monotonic() - t0 < 2.0


def test_with_nothing_being_prepared_a_short_batch_is_not_held_back():
    w = worker(8, max_batch_wait_ms=600)
    w.wake()  # images may well be arriving; none is claimed yet, so there is nothing to wait for
    w.batches.ready.put(claim(1, 3))
    t0 = time.monotonic()
    assert [p.job_id for p in w.batches.next_batch()] == [1, 2, 3]
    assert time.monotonic() - t0 < 0.3
