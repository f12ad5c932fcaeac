"""Studies received by the DICOM node: where their files live and what state they are in.

A study's life, recorded in the ``dicom_studies`` table of the job store (one row per
StudyInstanceUID):

``receiving``  instances arrive; each is written under ``dicom/studies/<study>/`` first, then counted
``submitted``  complete (four standard views, or the quiet period passed): a ``dicom`` job is queued
               in the *same* transaction that changes the state, so a study is queued exactly once
``sent``       the job is done and its results went to ``--destination``
``stored``     the job is done and no destination is configured (results stay on disk)
``send_failed`` the destination refused or was unreachable after every retry
``failed``     the job failed (no usable image, model error); nothing is sent

Instances arriving after a study was submitted are kept under ``dicom/late/<study>/`` and counted
(``late``) but not predicted: the submitted job keeps exactly the images it was queued with.

Folder names come from the UID only when it is a well-formed UID (digits and dots, at most 64
characters); anything else is replaced by its SHA-256, so no UID can name a path outside the data
directory. Logs name studies by :func:`uid_hash` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breastscreen.errors import BreastscreenError
from breastscreen.safety import is_within
from breastscreen.serve.store import JobStore, new_job_id

DICOM_DIR = "dicom"
STUDIES_DIR = "studies"
LATE_DIR = "late"
TMP_DIR = ".tmp"
STANDARD_VIEWS: frozenset[str] = frozenset({"L-CC", "R-CC", "L-MLO", "R-MLO"})
JOB_OWNER = "dicom-node"

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uid_hash(uid: str) -> str:
    """A short, stable, non-reversible name for a UID in logs (first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def safe_uid_name(uid: str) -> str:
    """A file-system name for ``uid``: the UID itself when well formed, else ``h-`` + its SHA-256."""
    if 0 < len(uid) <= 64 and _UID_RE.match(uid):
        return uid
    return "h-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass
class Study:
    """One row of ``dicom_studies``."""

    study_key: str
    uid_hash: str
    state: str
    calling_ae: str | None
    first_at: float
    last_at: float
    n_instances: int
    views: list[str]
    late: int
    job_id: str | None
    submitted_at: float | None
    complete_reason: str | None
    send_attempts: int
    next_send_at: float | None
    sent_at: float | None
    send_error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Study":
        """Build a study from a database row."""
        data = dict(row)
        data["views"] = json.loads(data["views"] or "[]")
        return cls(**data)


class StudyBook:
    """Files and states of received studies under ``data_dir`` (see the module docstring)."""

    def __init__(self, store: JobStore) -> None:
        if store.kind != "dicom":
            raise BreastscreenError(f"the DICOM node needs a job store of kind 'dicom', got {store.kind!r}")
        self.store = store
        self.root = (Path(store.data_dir) / DICOM_DIR).resolve()
        self.studies_dir = self.root / STUDIES_DIR
        self.late_dir = self.root / LATE_DIR
        self.tmp_dir = self.root / TMP_DIR
        for d in (self.studies_dir, self.late_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths

    def _inside(self, path: Path) -> Path:
        # Names are sanitised already; this is the last line of defence against a future change.
        if not is_within(path, self.root):
            raise BreastscreenError("refusing to write outside the data directory")
        return path

    def study_dir(self, study_key: str) -> Path:
        """Folder of the instances a study was (or will be) predicted from."""
        return self._inside(self.studies_dir / study_key)

    def temp_path(self) -> Path:
        """A fresh temporary file name on the same file system as the study folders (atomic renames)."""
        return self.tmp_dir / f"{new_job_id()}.part"

    def clear_temp(self) -> int:
        """Remove partial files left by a crash; return how many."""
        n = 0
        for f in self.tmp_dir.glob("*.part"):
            f.unlink(missing_ok=True)
            n += 1
        return n

    # ------------------------------------------------------------------ intake

    def commit_instance(self, tmp: Path, study_uid: str, sop_uid: str, view: str | None, calling_ae: str) -> str:
        """Move a validated instance into its study; return ``new``, ``duplicate`` or ``late``.

        The rename happens inside the transaction that reads the study's state, so an instance
        is either part of the submitted study or recorded as late, never both and never lost.
        """
        key = safe_uid_name(study_uid)
        name = safe_uid_name(sop_uid) + ".dcm"
        now = time.time()
        with self.store.transaction() as con:
            row = con.execute("SELECT state, views FROM dicom_studies WHERE study_key=?", (key,)).fetchone()
            if row is not None and row["state"] != "receiving":
                target = self._inside(self.late_dir / key / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                duplicate = (self.study_dir(key) / name).exists() or target.exists()
                os.replace(tmp, target)
                if not duplicate:
                    con.execute("UPDATE dicom_studies SET late=late+1 WHERE study_key=?", (key,))
                return "duplicate" if duplicate else "late"
            folder = self.study_dir(key)
            folder.mkdir(parents=True, exist_ok=True)
            target = self._inside(folder / name)
            duplicate = target.exists()
            os.replace(tmp, target)
            _fsync_dir(folder)
            views = set(json.loads(row["views"])) if row is not None else set()
            if view:
                views.add(view)
            if row is None:
                con.execute(
                    "INSERT INTO dicom_studies (study_key, uid_hash, state, calling_ae, first_at, last_at, n_instances, "
                    "views) VALUES (?, ?, 'receiving', ?, ?, ?, 1, ?)",
                    (key, uid_hash(study_uid), calling_ae, now, now, json.dumps(sorted(views))))
            else:
                con.execute("UPDATE dicom_studies SET last_at=?, n_instances=n_instances+?, views=? WHERE study_key=?",
                            (now, 0 if duplicate else 1, json.dumps(sorted(views)), key))
        return "duplicate" if duplicate else "new"

    def reconcile(self) -> list[str]:
        """Register study folders that have files but no row (the process died between the rename
        and the commit); return their keys. They wait for the quiet period like any other study."""
        added = []
        with self.store.transaction() as con:
            known = {r[0] for r in con.execute("SELECT study_key FROM dicom_studies").fetchall()}
            for folder in sorted(p for p in self.studies_dir.iterdir() if p.is_dir()):
                files = list(folder.glob("*.dcm"))
                if folder.name in known or not files:
                    continue
                last = max(f.stat().st_mtime for f in files)
                con.execute(
                    "INSERT INTO dicom_studies (study_key, uid_hash, state, first_at, last_at, n_instances) "
                    "VALUES (?, ?, 'receiving', ?, ?, ?)",
                    (folder.name, uid_hash(folder.name), last, last, len(files)))
                added.append(folder.name)
        return added

    # ------------------------------------------------------------------ completion

    def submit_complete(self, quiet_s: float, now: float | None = None) -> list[Study]:
        """Queue a job for every receiving study that is complete; return the submitted studies.

        Complete: the four standard views are present, or nothing arrived for ``quiet_s`` seconds.
        """
        now = time.time() if now is None else now
        submitted = []
        with self.store.transaction() as con:
            rows = con.execute("SELECT * FROM dicom_studies WHERE state='receiving' ORDER BY first_at").fetchall()
            for row in rows:
                study = Study.from_row(row)
                if STANDARD_VIEWS <= set(study.views):
                    reason = "four views"
                elif now - study.last_at >= quiet_s:
                    reason = "quiet period"
                else:
                    continue
                job_id = new_job_id()
                self.store.insert_job(con, job_id, JOB_OWNER, n_files=study.n_instances, upload_bytes=0,
                                      exam_ids=[study.uid_hash], modality="MG")
                con.execute("UPDATE dicom_studies SET state='submitted', job_id=?, submitted_at=?, complete_reason=? "
                            "WHERE study_key=? AND state='receiving'", (job_id, now, reason, study.study_key))
                study.state, study.job_id, study.complete_reason = "submitted", job_id, reason
                submitted.append(study)
        return submitted

    # ------------------------------------------------------------------ queries and results

    def get(self, study_key: str) -> Study | None:
        """The study with this folder name, or None."""
        with self.store.connect() as con:
            row = con.execute("SELECT * FROM dicom_studies WHERE study_key=?", (study_key,)).fetchone()
        return Study.from_row(row) if row else None

    def by_job(self, job_id: str) -> Study | None:
        """The study a job predicts, or None."""
        with self.store.connect() as con:
            row = con.execute("SELECT * FROM dicom_studies WHERE job_id=?", (job_id,)).fetchone()
        return Study.from_row(row) if row else None

    def all(self) -> list[Study]:
        """Every study, oldest first."""
        with self.store.connect() as con:
            rows = con.execute("SELECT * FROM dicom_studies ORDER BY first_at").fetchall()
        return [Study.from_row(r) for r in rows]

    def finished_unsent(self, now: float | None = None) -> list[tuple[Study, str]]:
        """(study, job status) of submitted studies whose job finished and whose results are due to go out."""
        now = time.time() if now is None else now
        with self.store.connect() as con:
            rows = con.execute(
                "SELECT s.*, j.status AS job_status FROM dicom_studies s JOIN jobs j ON j.id = s.job_id "
                "WHERE s.state='submitted' AND j.status IN ('done', 'failed') AND "
                "(s.next_send_at IS NULL OR s.next_send_at <= ?) ORDER BY s.submitted_at", (now,)).fetchall()
        out = []
        for r in rows:
            data = dict(r)
            status = data.pop("job_status")
            data["views"] = json.loads(data["views"] or "[]")
            out.append((Study(**data), status))
        return out

    def mark(self, study_key: str, state: str, error: str | None = None) -> None:
        """Record the final state of a submitted study (``sent``, ``stored``, ``send_failed``, ``failed``)."""
        with self.store.transaction() as con:
            con.execute("UPDATE dicom_studies SET state=?, sent_at=?, send_error=? WHERE study_key=?",
                        (state, time.time() if state == "sent" else None, error, study_key))

    def retry_later(self, study_key: str, delay_s: float, error: str) -> int:
        """Count a failed send and schedule the next try; return the attempts made so far."""
        with self.store.transaction() as con:
            con.execute("UPDATE dicom_studies SET send_attempts=send_attempts+1, next_send_at=?, send_error=? "
                        "WHERE study_key=?", (time.time() + delay_s, error, study_key))
            row = con.execute("SELECT send_attempts FROM dicom_studies WHERE study_key=?", (study_key,)).fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        """Number of studies per state."""
        with self.store.connect() as con:
            rows = con.execute("SELECT state, COUNT(*) FROM dicom_studies GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems); the rename itself stands
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync of a directory is advisory on some file systems; the data file was synced
    finally:
        os.close(fd)


def describe(study: Study) -> dict[str, Any]:
    """A study as a JSON-able dict without identifiers (for logs and status output)."""
    return {"study": study.uid_hash, "state": study.state, "instances": study.n_instances, "views": study.views,
            "late": study.late, "job": study.job_id, "complete_reason": study.complete_reason}
