"""Worker threads: claim a job from the store, run it, publish its result atomically.

``--workers N`` threads share the one loaded Predictor (it keeps no state between calls). Each
claimed job runs in ``jobs/<id>/attempt-<n>/``; on success the finished ``result/`` folder is
renamed to ``jobs/<id>/result`` inside the store's completion transaction, after the lease
check, so a result is either absent or complete and only one attempt ever publishes one. A
heartbeat thread renews the leases of running jobs; a job whose lease is lost (deleted, or taken
over after this worker stalled) is stopped at its next progress report. When the service stops,
running jobs are put back in the queue at their next progress report (the next start finishes
them); if the process dies instead, the next start requeues them from the database.

Logs carry job ids, attempt numbers and durations only — never file names, exam ids or
messages that may quote them (they can hold patient names or identifiers).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from breastscreen.errors import BreastscreenError
from breastscreen.serve.config import ServeConfig
from breastscreen.serve.runner import RESULT_DIR, JobCancelled, LoadedModels, run_job
from breastscreen.serve.store import Claim, JobStore
from breastscreen.serve.uploads import UPLOAD_DIR, client_message

log = logging.getLogger("breastscreen.serve")

JOBS_DIR = "jobs"
# Progress is written to the database at most this often (seconds), plus at every stage change.
PROGRESS_INTERVAL_S = 0.25

RunFn = Callable[[LoadedModels, ServeConfig, Path, Path, Callable[[str, float, float], None]], dict[str, Any]]


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The folder of one job (uploads, attempts, result)."""
    return Path(data_dir) / JOBS_DIR / job_id


@dataclass
class _Active:
    claim: Claim
    cancel: threading.Event = field(default_factory=threading.Event)


class WorkerPool:
    """``n`` worker threads plus one heartbeat thread over a :class:`JobStore` (see the module docstring)."""

    def __init__(self, store: JobStore, config: ServeConfig, models: Callable[[], LoadedModels | None],
                 n_workers: int | None = None, run: RunFn = run_job) -> None:
        self.store = store
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.models = models
        self.n_workers = config.workers if n_workers is None else n_workers
        self.run = run
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker and heartbeat threads."""
        for i in range(self.n_workers):
            t = threading.Thread(target=self._loop, args=(f"{self.instance}/w{i}",), name=f"bs-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.n_workers:
            hb = threading.Thread(target=self._heartbeat, name="bs-heartbeat", daemon=True)
            hb.start()
            self._threads.append(hb)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running jobs are requeued at their next progress report."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for active in self._active.values():
                active.cancel.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def notify(self) -> None:
        """Wake idle workers (a job was submitted)."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next progress report (it was deleted)."""
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            active.cancel.set()

    @property
    def running(self) -> list[str]:
        """Ids of the jobs running in this process."""
        with self._lock:
            return list(self._active)

    # ------------------------------------------------------------------ threads

    def _heartbeat(self) -> None:
        period = max(0.2, min(5.0, self.config.lease_seconds / 3))
        while not self._stop.wait(period):
            with self._lock:
                active = list(self._active.values())
            for a in active:
                try:
                    if not self.store.renew(a.claim, self.config.lease_seconds):
                        a.cancel.set()
                except Exception:  # noqa: BLE001 - a busy database must not kill the heartbeat
                    log.warning("lease renewal of job %s failed; retrying", a.claim.job_id)

    def _loop(self, worker: str) -> None:
        while not self._stop.is_set():
            models = self.models()
            if models is None:
                self._stop.wait(0.2)
                continue
            try:
                claim = self.store.claim(worker, self.config.lease_seconds, self.config.max_attempts)
            except Exception:  # noqa: BLE001 - keep the worker alive through database hiccups
                log.exception("claiming a job failed")
                self._stop.wait(1.0)
                continue
            if claim is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(claim, models)

    def _run(self, claim: Claim, models: LoadedModels) -> None:
        jdir = job_dir(self.data_dir, claim.job_id)
        attempt_dir = jdir / f"attempt-{claim.attempt}"
        # Folders of earlier attempts belong to workers that died or lost the lease, and a result
        # folder of a job that is not done was renamed just before a crash and never committed:
        # neither ever counted, so both go before this attempt starts.
        for stale in jdir.glob("attempt-*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(jdir / RESULT_DIR, ignore_errors=True)
        active = _Active(claim)
        with self._lock:
            self._active[claim.job_id] = active
        log.info("job %s started (attempt %d, %s)", claim.job_id, claim.attempt, claim.worker)
        started = time.perf_counter()
        last = {"t": 0.0, "stage": ""}

        def report(stage: str, stage_fraction: float, fraction: float) -> None:
            if active.cancel.is_set() or self._stop.is_set():
                raise JobCancelled()
            now = time.monotonic()
            if stage != last["stage"] or now - last["t"] >= PROGRESS_INTERVAL_S or stage_fraction >= 1.0:
                last.update(t=now, stage=stage)
                if not self.store.set_progress(claim, stage, stage_fraction, fraction):
                    raise JobCancelled()

        try:
            result = self.run(models, self.config, jdir, attempt_dir, report)
            if active.cancel.is_set() or self._stop.is_set():
                raise JobCancelled()

            def publish() -> None:
                os.replace(attempt_dir / RESULT_DIR, jdir / RESULT_DIR)

            if self.store.complete(claim, result, publish):
                log.info("job %s done in %.2f s (attempt %d, %d exam(s), %d failed)", claim.job_id,
                         time.perf_counter() - started, claim.attempt, len(result.get("exams", [])),
                         len(result.get("errors", [])))
            else:
                log.warning("job %s finished but its lease was lost (deleted or taken over); result discarded",
                            claim.job_id)
        except JobCancelled:
            if self._stop.is_set() and self.store.release(claim, "service stopping"):
                log.info("job %s put back in the queue (service stopping)", claim.job_id)
            else:
                log.info("job %s stopped (deleted or lease lost)", claim.job_id)
        except (BreastscreenError, ValueError, OSError, KeyError) as exc:
            message = client_message(client_message(str(exc) or type(exc).__name__, jdir / UPLOAD_DIR), jdir)
            self.store.fail(claim, message)
            log.info("job %s failed after %.2f s: %s (reason given to its owner)", claim.job_id,
                     time.perf_counter() - started, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug must fail one job, not the worker
            frames = "".join(traceback.format_tb(exc.__traceback__))
            # The exception text can quote file contents or names: log its type and frames only.
            log.error("job %s failed with an internal error %s\n%s", claim.job_id, type(exc).__name__, frames)
            self.store.fail(claim, f"internal error ({type(exc).__name__}); the service log has details under "
                                   f"job id {claim.job_id}")
        finally:
            shutil.rmtree(attempt_dir, ignore_errors=True)
            with self._lock:
                self._active.pop(claim.job_id, None)
            if self.store.get(claim.job_id) is None:
                shutil.rmtree(jdir, ignore_errors=True)
