"""Worker threads with a stand-in job: deletion stops a running job, stopping requeues it, results publish atomically."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from breastscreen.errors import BreastscreenError
from breastscreen.serve.store import JobStore
from breastscreen.serve.worker import WorkerPool, job_dir
from serve_helpers import config


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _queue(store: JobStore, data: Path, job_id: str) -> None:
    (job_dir(data, job_id) / "upload").mkdir(parents=True)
    store.submit(job_id, "k", n_files=1, upload_bytes=1, exam_ids=["E"], modality="MG")


class _SlowJob:
    """A job that reports progress until told to finish, then writes one result file."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finish = threading.Event()

    def __call__(self, _models: Any, _cfg: Any, jdir: Path, attempt: Path, report: Any) -> dict[str, Any]:
        (attempt / "result").mkdir(parents=True)
        self.started.set()
        while not self.finish.is_set():
            report("predict", 0.5, 0.5)
            time.sleep(0.01)
        (attempt / "result" / "out.txt").write_text("complete")
        report("pictures", 1.0, 1.0)
        return {"exams": [], "errors": []}


def _pool(data: Path, run: Any, **settings: Any) -> tuple[JobStore, WorkerPool]:
    store = JobStore(data)
    pool = WorkerPool(store, config(data, **settings), lambda: object(), run=run)
    pool.start()
    return store, pool


def test_finished_job_publishes_its_result_folder_once(tmp_path: Path) -> None:
    job = _SlowJob()
    store, pool = _pool(tmp_path, job)
    try:
        _queue(store, tmp_path, "a")
        assert job.started.wait(20)
        _until(lambda: store.get("a").stage == "predict")
        assert not (job_dir(tmp_path, "a") / "result").exists()
        job.finish.set()
        _until(lambda: store.get("a").status == "done")
    finally:
        pool.stop()
    assert (job_dir(tmp_path, "a") / "result" / "out.txt").read_text() == "complete"
    assert sorted(p.name for p in job_dir(tmp_path, "a").iterdir()) == ["result", "upload"]


def test_deleting_a_running_job_stops_it_without_completing(tmp_path: Path) -> None:
    job = _SlowJob()
    store, pool = _pool(tmp_path, job)
    try:
        _queue(store, tmp_path, "a")
        assert job.started.wait(20)
        store.delete("a")
        pool.cancel("a")
        _until(lambda: not pool.running)
        job.finish.set()
    finally:
        pool.stop()
    assert store.get("a") is None and not job_dir(tmp_path, "a").exists()
    assert [e["event"] for e in store.events("a")] == ["submitted", "claimed", "deleted"]


def test_stopping_the_service_requeues_running_jobs(tmp_path: Path) -> None:
    job = _SlowJob()
    store, pool = _pool(tmp_path, job)
    _queue(store, tmp_path, "a")
    assert job.started.wait(20)
    pool.stop()
    got = store.get("a")
    assert got.status == "queued" and got.attempts == 0 and got.lease_owner is None
    assert not list(job_dir(tmp_path, "a").glob("attempt-*"))


def test_user_errors_fail_the_job_with_a_message_for_its_owner(tmp_path: Path) -> None:
    def broken(_m: Any, _c: Any, jdir: Path, _a: Path, _r: Any) -> dict[str, Any]:
        raise BreastscreenError(f"{jdir / 'upload' / 'x_L-CC.png'}: no breast found")

    def buggy(*_args: Any) -> dict[str, Any]:
        raise ZeroDivisionError("secret patient name in a message")

    for name, run, expected in (("user", broken, "x_L-CC.png: no breast found"),
                                ("bug", buggy, "internal error (ZeroDivisionError)")):
        data = tmp_path / name
        store, pool = _pool(data, run)
        try:
            _queue(store, data, "a")
            _until(lambda: store.get("a").status == "failed")
        finally:
            pool.stop()
        error = store.get("a").error
        assert error.startswith(expected) and str(data) not in error and "secret" not in error
