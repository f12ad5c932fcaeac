"""The SQLite job store: WAL mode, claims and leases, restart recovery, the audit trail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from breastscreen.errors import BreastscreenError
from breastscreen.serve.store import DataDirLock, JobStore


def _submit(store: JobStore, job_id: str, owner: str = "k1", **kw: object) -> bool:
    return store.submit(job_id, owner, n_files=4, upload_bytes=100, exam_ids=["E1"], modality="MG", **kw)


def _done_events(store: JobStore, job_id: str) -> int:
    return sum(1 for e in store.events(job_id) if e["event"] == "done")


def test_store_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    assert store.journal_mode() == "wal"
    assert (tmp_path / "breastscreen-serve.sqlite").is_file()


def test_claim_takes_oldest_queued_job_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    _submit(store, "b")
    first = store.claim("w1", 60, 3)
    second = store.claim("w2", 60, 3)
    assert (first.job_id, second.job_id) == ("a", "b")
    assert store.claim("w3", 60, 3) is None
    assert store.get("a").status == "running" and store.get("a").lease_owner == "w1"


def test_expired_lease_is_taken_over_and_the_old_worker_cannot_complete(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    stalled = store.claim("w1", 0.05, 3)
    time.sleep(0.1)
    taken = store.claim("w2", 60, 3)
    assert taken is not None and taken.job_id == "a" and taken.attempt == 2
    published = []
    assert not store.complete(stalled, {"exams": []}, lambda: published.append("w1"))
    assert not store.renew(stalled, 60)
    assert store.complete(taken, {"exams": [1]}, lambda: published.append("w2"))
    assert published == ["w2"]
    job = store.get("a")
    assert job.status == "done" and job.result == {"exams": [1]} and job.attempts == 2
    assert _done_events(store, "a") == 1
    assert [e["event"] for e in store.events("a")] == ["submitted", "claimed", "lease_expired", "claimed",
                                                         "lease_lost", "done"]


def test_recover_requeues_jobs_left_running(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    dead = store.claim("dead-process", 3600, 3)
    assert store.recover() == ["a"]
    job = store.get("a")
    assert job.status == "queued" and job.lease_owner is None
    again = store.claim("new-process", 60, 3)
    assert again.attempt == 2
    assert not store.complete(dead, {}, None)
    assert store.complete(again, {"exams": []}, None)
    assert _done_events(store, "a") == 1


def test_job_that_keeps_killing_the_service_is_failed_not_rerun(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    for _ in range(2):
        store.claim("w", 3600, 2)
        store.recover()
    assert store.claim("w", 3600, 2) is None
    job = store.get("a")
    assert job.status == "failed" and "gave up after 2 attempts" in job.error


def test_release_puts_job_back_without_counting_the_attempt(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    claim = store.claim("w", 60, 3)
    assert store.release(claim, "stopping")
    job = store.get("a")
    assert job.status == "queued" and job.attempts == 0


def test_deleted_running_job_cannot_complete(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _submit(store, "a")
    claim = store.claim("w", 60, 3)
    assert store.delete("a")
    assert not store.set_progress(claim, "predict", 0.5, 0.5)
    assert not store.complete(claim, {}, lambda: pytest.fail("files published for a deleted job"))
    assert store.get("a") is None


def test_submit_refuses_when_queue_is_full(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    assert _submit(store, "a", max_queued=2)
    assert _submit(store, "b", max_queued=2)
    assert not _submit(store, "c", max_queued=2)
    assert store.get("c") is None
    assert store.queue_position("b") == 2


def test_list_pages_newest_first_per_owner(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    for i in range(5):
        _submit(store, f"j{i}", owner="k1")
    _submit(store, "other", owner="k2")
    page1 = store.list("k1", 2)
    page2 = store.list("k1", 2, before_seq=page1[-1].seq)
    page3 = store.list("k1", 2, before_seq=page2[-1].seq)
    assert [j.id for j in page1 + page2 + page3] == ["j4", "j3", "j2", "j1", "j0"]


def test_data_dir_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(BreastscreenError, match="another breastscreen serve"):
        DataDirLock(tmp_path).acquire()
    first.release()
    second = DataDirLock(tmp_path)
    second.acquire()
    second.release()
