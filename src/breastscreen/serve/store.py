"""The job store: one SQLite database (WAL mode) under the service's data directory.

Tables:

* ``jobs``: one row per submitted exam upload — owner key, state (``queued`` / ``running`` /
  ``done`` / ``failed``), progress (stage and fractions), the lease of the worker running it,
  attempt count, the result document (JSON) and the error message;
* ``job_events``: an append-only audit trail (submitted, claimed, requeued, done, failed,
  deleted, lease_lost) that tests and the load benchmark read to prove that no job ran twice
  to completion;
* ``api_keys``: hashed API keys (see :mod:`breastscreen.serve.keys`);
* ``dicom_studies``: studies received by ``breastscreen dicom-node`` (see
  :mod:`breastscreen.serve.dicom_studies`), each linked to the job that predicts it.

Jobs have a ``kind`` (``exam`` for HTTP uploads, ``dicom`` for studies received by the DICOM
node); a :class:`JobStore` opened with one kind submits, claims, counts and recovers only jobs of
that kind, so the two front ends never run each other's jobs.

A worker *claims* a job in one ``BEGIN IMMEDIATE`` transaction (queued, or running with an
expired lease), renews the lease while it works and *completes* it only while it still holds
the lease, in the same transaction that moves the finished result folder into place. So a job
whose worker died is taken over by another one, and a worker that lost its lease can never
overwrite the result of the worker that took over.

Every call opens its own short-lived connection, so the store is safe to share between threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from breastscreen.errors import BreastscreenError

DB_NAME = "breastscreen-serve.sqlite"
JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed")
# 2: jobs.kind and the dicom_studies table (added in place to version-1 databases).
SCHEMA_VERSION = 2
JOB_KINDS: tuple[str, ...] = ("exam", "dicom")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    stage TEXT,
    stage_fraction REAL NOT NULL DEFAULT 0,
    fraction REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    n_files INTEGER NOT NULL DEFAULT 0,
    upload_bytes INTEGER NOT NULL DEFAULT 0,
    exam_ids TEXT NOT NULL DEFAULT '[]',
    modality TEXT,
    result TEXT,
    error TEXT,
    kind TEXT NOT NULL DEFAULT 'exam'
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    attempt INTEGER,
    worker TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS dicom_studies (
    study_key TEXT PRIMARY KEY,
    uid_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'submitted', 'sent', 'stored', 'send_failed', 'failed')),
    calling_ae TEXT,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    views TEXT NOT NULL DEFAULT '[]',
    late INTEGER NOT NULL DEFAULT 0,
    job_id TEXT UNIQUE,
    submitted_at REAL,
    complete_reason TEXT,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_send_at REAL,
    sent_at REAL,
    send_error TEXT
);
CREATE INDEX IF NOT EXISTS dicom_studies_state ON dicom_studies (state);
"""
# Run after _SCHEMA: a version-1 database gets the columns that later versions added.
_MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "kind", "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'exam'"),
)
_INDEXES_AFTER_MIGRATION = "CREATE INDEX IF NOT EXISTS jobs_kind_status ON jobs (kind, status, seq);"


@dataclass
class Job:
    """One row of the ``jobs`` table."""

    seq: int
    id: str
    owner: str
    status: str
    stage: str | None
    stage_fraction: float
    fraction: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    lease_owner: str | None
    lease_expires: float | None
    n_files: int
    upload_bytes: int
    exam_ids: list[str]
    modality: str | None
    result: dict[str, Any] | None
    error: str | None
    kind: str = "exam"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        """Build a job from a database row (JSON columns decoded)."""
        data = dict(row)
        data["exam_ids"] = json.loads(data["exam_ids"] or "[]")
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return cls(**data)


@dataclass
class Claim:
    """A job a worker holds: its id and the attempt number this worker runs."""

    job_id: str
    attempt: int
    worker: str


def new_job_id() -> str:
    """A random, unguessable job id (32 hex characters)."""
    return uuid.uuid4().hex


class JobStore:
    """The SQLite job store of one data directory (see the module docstring).

    ``kind`` selects the jobs this instance submits, claims, counts and recovers (``exam``: the
    HTTP service; ``dicom``: the DICOM node).
    """

    def __init__(self, data_dir: str | os.PathLike[str], kind: str = "exam") -> None:
        if kind not in JOB_KINDS:
            raise BreastscreenError(f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        self.kind = kind
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        with self.connect() as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BreastscreenError(f"{self.path}: SQLite refused WAL mode (got {mode}); use a local file system")
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() else None
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise BreastscreenError(
                    f"{self.path}: made by a newer breastscreen (schema {row[0]}, this one reads {SCHEMA_VERSION})"
                )
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                for table, column, ddl in _MIGRATIONS:
                    columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
                    if column not in columns:
                        con.execute(ddl)
                con.execute(_INDEXES_AFTER_MIGRATION)
                con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value="
                            "excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                            (str(SCHEMA_VERSION),))
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode; callers open explicit transactions where they need them."""
        try:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise BreastscreenError(f"{self.path}: cannot open the job database ({exc})") from None
        con.row_factory = sqlite3.Row
        # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the
        # last transactions), which is the failure the service must survive.
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA busy_timeout=30000")
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction, committed when the block succeeds."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def journal_mode(self) -> str:
        """The database's journal mode (``wal``)."""
        with self.connect() as con:
            return str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    @staticmethod
    def _event(con: sqlite3.Connection, job_id: str, event: str, attempt: int | None = None,
               worker: str | None = None, detail: str | None = None) -> None:
        con.execute("INSERT INTO job_events (job_id, at, event, attempt, worker, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, time.time(), event, attempt, worker, detail))

    # ------------------------------------------------------------------ jobs

    def submit(self, job_id: str, owner: str, *, n_files: int, upload_bytes: int, exam_ids: list[str],
               modality: str, max_queued: int | None = None) -> bool:
        """Queue a new job; False (nothing written) when ``max_queued`` jobs are already waiting."""
        with self.transaction() as con:
            if max_queued is not None:
                waiting = con.execute("SELECT COUNT(*) FROM jobs WHERE status='queued' AND kind=?",
                                      (self.kind,)).fetchone()[0]
                if waiting >= max_queued:
                    return False
            self.insert_job(con, job_id, owner, n_files=n_files, upload_bytes=upload_bytes, exam_ids=exam_ids,
                            modality=modality)
        return True

    def insert_job(self, con: sqlite3.Connection, job_id: str, owner: str, *, n_files: int, upload_bytes: int,
                   exam_ids: list[str], modality: str) -> None:
        """Queue a job of this store's kind inside the caller's open transaction ``con``.

        For callers that must queue a job atomically with their own bookkeeping (the DICOM node
        marks a study submitted in the same transaction, so a study is never queued twice).
        """
        con.execute(
            "INSERT INTO jobs (id, owner, status, stage, created_at, n_files, upload_bytes, exam_ids, modality, kind) "
            "VALUES (?, ?, 'queued', 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, owner, time.time(), n_files, upload_bytes, json.dumps(exam_ids), modality, self.kind),
        )
        self._event(con, job_id, "submitted")

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self.connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(self, owner: str, limit: int, before_seq: int | None = None) -> list[Job]:
        """Jobs of ``owner``, newest first, at most ``limit``, older than ``before_seq`` when given."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT * FROM jobs WHERE owner=? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (owner, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        with self.connect() as con:
            rows = con.execute("SELECT status, COUNT(*) FROM jobs WHERE kind=? GROUP BY status",
                               (self.kind,)).fetchall()
        out = {s: 0 for s in JOB_STATES}
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def queue_position(self, job_id: str) -> int | None:
        """1-based position of a queued job in the queue (None when it is not queued)."""
        with self.connect() as con:
            row = con.execute("SELECT seq FROM jobs WHERE id=? AND status='queued' AND kind=?",
                              (job_id, self.kind)).fetchone()
            if row is None:
                return None
            return int(con.execute("SELECT COUNT(*) FROM jobs WHERE status='queued' AND kind=? AND seq <= ?",
                                   (self.kind, row[0])).fetchone()[0])

    def mean_run_seconds(self, last: int = 20) -> float | None:
        """Mean wall time of the last ``last`` finished jobs (None before any finished)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT finished_at - started_at FROM jobs WHERE status='done' AND kind=? AND started_at IS NOT NULL "
                "ORDER BY finished_at DESC LIMIT ?", (self.kind, last)).fetchall()
        times = [float(r[0]) for r in rows if r[0] is not None and r[0] >= 0]
        return sum(times) / len(times) if times else None

    def claim(self, worker: str, lease_s: float, max_attempts: int) -> Claim | None:
        """Take the oldest runnable job (queued, or running with an expired lease) for ``worker``.

        A job that already used ``max_attempts`` attempts is failed instead of run again (it
        stopped the service each time it ran, for example by exhausting memory).
        """
        now = time.time()
        with self.transaction() as con:
            while True:
                row = con.execute(
                    "SELECT id, attempts, status FROM jobs WHERE kind=? AND (status='queued' OR "
                    "(status='running' AND lease_expires < ?)) ORDER BY seq LIMIT 1", (self.kind, now)
                ).fetchone()
                if row is None:
                    return None
                job_id, attempts = row["id"], int(row["attempts"])
                if row["status"] == "running":
                    self._event(con, job_id, "lease_expired", attempts)
                if attempts >= max_attempts:
                    con.execute(
                        "UPDATE jobs SET status='failed', finished_at=?, lease_owner=NULL, lease_expires=NULL, "
                        "error=? WHERE id=?",
                        (now, f"gave up after {attempts} attempts: the service stopped while running this job "
                              "each time", job_id))
                    self._event(con, job_id, "failed", attempts, detail="too many attempts")
                    continue
                con.execute(
                    "UPDATE jobs SET status='running', lease_owner=?, lease_expires=?, attempts=attempts+1, "
                    "started_at=?, stage='starting', stage_fraction=0, fraction=0 WHERE id=?",
                    (worker, now + lease_s, now, job_id))
                self._event(con, job_id, "claimed", attempts + 1, worker)
                return Claim(job_id, attempts + 1, worker)

    def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend the lease; False when this worker no longer holds it (job deleted or taken over)."""
        with self.connect() as con:
            cur = con.execute(
                "UPDATE jobs SET lease_expires=? WHERE id=? AND status='running' AND lease_owner=?",
                (time.time() + lease_s, claim.job_id, claim.worker))
            return cur.rowcount == 1

    def holds(self, claim: Claim) -> bool:
        """True while ``claim``'s worker still holds the job's lease."""
        with self.connect() as con:
            row = con.execute("SELECT 1 FROM jobs WHERE id=? AND status='running' AND lease_owner=?",
                              (claim.job_id, claim.worker)).fetchone()
        return row is not None

    def set_progress(self, claim: Claim, stage: str, stage_fraction: float, fraction: float) -> bool:
        """Record progress; False when the lease is lost (the caller should stop)."""
        with self.connect() as con:
            cur = con.execute(
                "UPDATE jobs SET stage=?, stage_fraction=?, fraction=? WHERE id=? AND status='running' "
                "AND lease_owner=?",
                (stage, min(1.0, max(0.0, stage_fraction)), min(1.0, max(0.0, fraction)), claim.job_id,
                 claim.worker))
            return cur.rowcount == 1

    def complete(self, claim: Claim, result: dict[str, Any], commit_files: Callable[[], None] | None = None) -> bool:
        """Mark the job done with ``result`` if ``claim`` still holds it; False otherwise.

        ``commit_files`` (moving the finished result folder into place) runs inside the write
        transaction, after the lease check, so only the lease holder's files are ever published.
        """
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM jobs WHERE id=? AND status='running' AND lease_owner=?",
                           (claim.job_id, claim.worker)).fetchone() is None:
                self._event(con, claim.job_id, "lease_lost", claim.attempt, claim.worker)
                return False
            if commit_files is not None:
                commit_files()
            con.execute(
                "UPDATE jobs SET status='done', stage='done', stage_fraction=1, fraction=1, finished_at=?, "
                "lease_owner=NULL, lease_expires=NULL, result=?, error=NULL WHERE id=?",
                (time.time(), json.dumps(result), claim.job_id))
            self._event(con, claim.job_id, "done", claim.attempt, claim.worker)
        return True

    def fail(self, claim: Claim, error: str, result: dict[str, Any] | None = None) -> bool:
        """Mark the job failed with a message for its owner, if ``claim`` still holds it."""
        with self.transaction() as con:
            cur = con.execute(
                "UPDATE jobs SET status='failed', finished_at=?, lease_owner=NULL, lease_expires=NULL, error=?, "
                "result=? WHERE id=? AND status='running' AND lease_owner=?",
                (time.time(), error, json.dumps(result) if result else None, claim.job_id, claim.worker))
            if cur.rowcount == 1:
                self._event(con, claim.job_id, "failed", claim.attempt, claim.worker)
            return cur.rowcount == 1

    def release(self, claim: Claim, reason: str) -> bool:
        """Put a claimed job back in the queue (service stopping); the attempt is not counted."""
        with self.transaction() as con:
            cur = con.execute(
                "UPDATE jobs SET status='queued', stage='queued', stage_fraction=0, fraction=0, lease_owner=NULL, "
                "lease_expires=NULL, attempts=MAX(0, attempts-1) WHERE id=? AND status='running' AND lease_owner=?",
                (claim.job_id, claim.worker))
            if cur.rowcount == 1:
                self._event(con, claim.job_id, "requeued", claim.attempt, claim.worker, reason)
            return cur.rowcount == 1

    def recover(self) -> list[str]:
        """Requeue every running job (call only while holding the data-directory lock: their workers are gone)."""
        with self.transaction() as con:
            rows = con.execute("SELECT id, attempts FROM jobs WHERE status='running' AND kind=?",
                               (self.kind,)).fetchall()
            for r in rows:
                con.execute("UPDATE jobs SET status='queued', stage='queued', stage_fraction=0, fraction=0, "
                            "lease_owner=NULL, lease_expires=NULL WHERE id=?", (r["id"],))
                self._event(con, r["id"], "requeued", int(r["attempts"]), detail="service restarted")
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove a job's row (a worker running it loses its lease and discards its work)."""
        with self.transaction() as con:
            cur = con.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            if cur.rowcount:
                self._event(con, job_id, "deleted")
            return cur.rowcount == 1

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first (of one job, or of all)."""
        with self.connect() as con:
            if job_id is None:
                rows = con.execute("SELECT * FROM job_events ORDER BY seq").fetchall()
            else:
                rows = con.execute("SELECT * FROM job_events WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
        return [dict(r) for r in rows]


class DataDirLock:
    """An exclusive lock on a data directory, so that two services never share one job store.

    Held with ``flock`` on ``serve.lock``; the operating system drops it when the process dies
    (even by SIGKILL), so a restarted service can take it at once and requeue the jobs that
    were running.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / "serve.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`BreastscreenError` when another service holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise BreastscreenError(
                f"{self.path.parent}: another breastscreen serve is using this --data-dir; stop it or choose another"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
