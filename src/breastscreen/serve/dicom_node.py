"""The DICOM node: a Storage SCP that predicts complete studies and sends the results back.

Threads of one running node (all sharing the job store of ``--data-dir``, SQLite in WAL mode):

* the pynetdicom server: C-ECHO, and C-STORE of the image SOP classes of
  :mod:`~breastscreen.serve.dicom_intake`; each instance is checked, written to a temporary
  file, fsynced and renamed into its study folder (see :mod:`~breastscreen.serve.dicom_studies`);
  at most ``--max-associations`` associations at a time (more are rejected, "local limit
  exceeded"); with ``--allow``, other calling AE titles are rejected ("calling AE title not
  recognised") and logged;
* the scheduler: every ``tick`` it queues a ``dicom`` job for each study that is complete (the
  four standard views, or ``--complete-after`` seconds without a new instance) — queued in the
  transaction that marks the study submitted, so exactly once;
* the workers (:class:`~breastscreen.serve.worker.WorkerPool`, as in the HTTP service): claim a
  job with a lease, predict the study with the shared :class:`~breastscreen.Predictor` and write
  the SR and overlays; the result folder is published in the completion transaction, so a job
  killed half-way is re-run after a restart and only one attempt's objects ever exist;
* the sender: C-STOREs each finished study's objects to ``--destination`` (retrying with
  back-off) and records that they went, so a restart resends what was not confirmed.

Logs carry job ids, hashed study UIDs, AE titles, views, statuses, sizes and durations — never
patient names, ids or UIDs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import ConfigDict, Field

from breastscreen import __version__
from breastscreen.data.predictions import table_values
from breastscreen.data.readers import DEFAULT_MAX_PIXELS
from breastscreen.errors import BreastscreenError
from breastscreen.inference.options import ValidatedOptions
from breastscreen.serve.config import NOT_FOR_CLINICAL_USE, ServeConfig
from breastscreen.serve.dicom_intake import (
    IMAGE_SOP_CLASSES,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_TOO_LARGE,
    STATUS_WRITE_FAILED,
    TRANSFER_SYNTAXES,
    check_instance,
)
from breastscreen.serve.dicom_studies import StudyBook, Study, uid_hash
from breastscreen.serve.runner import RESULT_DIR, LoadedModels
from breastscreen.serve.store import DataDirLock, JobStore
from breastscreen.serve.worker import WorkerPool, job_dir

log = logging.getLogger("breastscreen.serve.dicom")

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image
VERIFICATION = "1.2.840.10008.1.1"
RESULT_JSON = "result.json"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, as the AE VR allows
# C-STORE statuses the destination may answer that still mean "stored" (success, coercion warnings).
_STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Destination:
    """Where results go: a remote AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(value: str, what: str = "AE title") -> str:
    """``value`` stripped, when it is a valid AE title (1-16 printable ASCII characters, no backslash)."""
    v = value.strip()
    if not _AE_RE.match(v):
        raise BreastscreenError(f"{what} must be 1 to 16 printable ASCII characters without backslash, got {value!r}")
    return v


def parse_destination(text: str) -> Destination:
    """``AE@HOST:PORT`` (an IPv6 host in brackets: ``AE@[::1]:104``) as a :class:`Destination`."""
    m = re.match(r"^(?P<ae>[^@]+)@(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]@]+)):(?P<port>\d{1,5})$", text.strip())
    if not m:
        raise BreastscreenError(f"--destination must look like AE@HOST:PORT (e.g. PACS@10.0.0.5:104), got {text!r}")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise BreastscreenError(f"--destination port must be in [1, 65535], got {port}")
    return Destination(check_ae_title(m["ae"], "--destination AE title"), m["v6"] or m["host"], port)


def _safe_ae(value: Any) -> str:
    # Calling AE titles come from the network: keep only printable characters, bounded, for logs.
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text.strip())[:16] or "?"


class NodeConfig(ValidatedOptions):
    """Everything the node needs to start (see ``breastscreen dicom-node --help`` for each option)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field(..., min_length=1)
    patch_model: Optional[str] = None
    ae_title: str = "BSCREEN"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    destination: Optional[str] = None
    data_dir: Path = Path("breastscreen-dicom-data")
    allow: tuple[str, ...] = ()
    complete_after: float = Field(60.0, gt=0, le=7 * 86400, description="quiet period (s) that completes a study")
    workers: int = Field(1, ge=1, le=64)
    max_associations: int = Field(8, ge=1, le=1000)
    max_instance_bytes: int = Field(512 * 1024**2, ge=1024)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    device: str = "auto"
    tta: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)  # None: Predictor's default_batch_size
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100)
    send_attempts: int = Field(10, ge=1, le=1000, description="tries to deliver a study's results")
    send_retry_seconds: float = Field(10.0, gt=0, description="first wait after a failed send (doubles, max 1 h)")
    network_timeout: float = Field(60.0, gt=0)
    tick_seconds: float = Field(0.5, gt=0, le=60)


class DicomNode:
    """A running DICOM node (see the module docstring); :meth:`start`, then :meth:`stop`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.ae_title = check_ae_title(config.ae_title)
        self.allow = [check_ae_title(a, "--allow") for a in config.allow]
        self.destination = parse_destination(config.destination) if config.destination else None
        self.data_dir = Path(config.data_dir)
        self._lock = DataDirLock(self.data_dir)
        self.store: JobStore | None = None
        self.book: StudyBook | None = None
        self.models: LoadedModels | None = None
        self.pool: WorkerPool | None = None
        self._server: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.device_uid = ""
        self.port = config.port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take the data directory, recover unfinished work, load the model and start listening."""
        from pydicom.uid import generate_uid

        self._lock.acquire()
        try:
            self.store = JobStore(self.data_dir, kind="dicom")
            self.book = StudyBook(self.store)
            stale = self.book.clear_temp()
            requeued = self.store.recover()
            found = self.book.reconcile()
            if stale or requeued or found:
                log.info("recovered after a stop: %d partial file(s) removed, %d job(s) requeued, %d study folder(s) "
                         "registered", stale, len(requeued), len(found))
            self.device_uid = generate_uid(entropy_srcs=[str(self.data_dir.resolve()), self.ae_title])
            self.models = self._load_models()
            serve_config = ServeConfig(models=self.config.models, data_dir=self.data_dir, workers=self.config.workers,
                                       lease_seconds=self.config.lease_seconds, max_attempts=self.config.max_attempts,
                                       device=self.config.device)
            self.pool = WorkerPool(self.store, serve_config, lambda: self.models, run=self._run_study)
            self.pool.start()
            for name, target in (("bs-dicom-scheduler", self._schedule_loop), ("bs-dicom-sender", self._send_loop)):
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)
            self._start_server()
        except BaseException:
            self.stop()
            raise
        log.info("DICOM node %s listening on %s:%d (destination %s, quiet period %.0f s, model %s)", self.ae_title,
                 self.config.host, self.port, self.destination or "none: results kept on disk",
                 self.config.complete_after, " + ".join(self.config.models))

    def stop(self) -> None:
        """Stop listening and working; unfinished studies and jobs are finished by the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.pool is not None:
            self.pool.stop()
        for t in self._threads:
            t.join(10.0)
        self._threads = []
        self._lock.release()

    def _load_models(self) -> LoadedModels:
        from breastscreen import Predictor
        from breastscreen.data.types import Modality
        from breastscreen.models import load_checkpoint

        predictor = Predictor.load(list(self.config.models), self.config.device, tta=self.config.tta,
                                   seed=self.config.seed, batch_size=self.config.batch_size)
        patch_ref = None
        if predictor.modality is Modality.MG and predictor.needs_heatmaps:
            # Resolved as `breastscreen predict` does: --patch-model, else the one the model names.
            patch_ref = self.config.patch_model or predictor.members[0].metadata.get("patch_model")
            if not patch_ref:
                raise BreastscreenError(f"model {predictor.members[0].name} takes image + heatmaps: pass --patch-model")
            predictor = Predictor.load(list(self.config.models), self.config.device, tta=self.config.tta,
                                       seed=self.config.seed, batch_size=self.config.batch_size,
                                       patch_model=str(patch_ref))
        loaded = LoadedModels(predictor, list(self.config.models))
        if patch_ref:
            loaded.patch_ref = str(patch_ref)
            loaded.patch = load_checkpoint(str(patch_ref))
        return loaded

    def _start_server(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = self.config.network_timeout
        ae.acse_timeout = 30
        ae.dimse_timeout = self.config.network_timeout
        if self.allow:
            ae.require_calling_aet = list(self.allow)
        ae.add_supported_context(VERIFICATION)
        for uid in IMAGE_SOP_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ACCEPTED, self._on_accepted)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])

    # ------------------------------------------------------------------ network events

    def _on_accepted(self, event: Any) -> None:
        log.info("association accepted from AE %s (%s)", _safe_ae(event.assoc.requestor.ae_title),
                 event.assoc.requestor.address)

    def _on_rejected(self, event: Any) -> None:
        calling = _safe_ae(event.assoc.requestor.ae_title)
        if self.allow and calling not in self.allow:
            why = "calling AE title not in --allow"
        else:
            why = f"more than --max-associations {self.config.max_associations} at once"
        log.warning("association from AE %s (%s) rejected: %s", calling, event.assoc.requestor.address, why)

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> Any:
        from pydicom import Dataset

        started = time.perf_counter()
        calling = _safe_ae(event.assoc.requestor.ae_title)
        assert self.book is not None  # set by start(), before the server exists
        tmp = self.book.temp_path()

        def refuse(status: int, comment: str) -> Any:
            log.warning("C-STORE from AE %s refused: status 0x%04X (%s)", calling, status, comment)
            answer = Dataset()
            answer.Status = status
            answer.ErrorComment = comment[:64]
            return answer

        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - any decoding failure of a peer's data set is its error
            return refuse(STATUS_CANNOT_UNDERSTAND, f"data set cannot be encoded ({type(exc).__name__})")
        if len(data) > self.config.max_instance_bytes:
            return refuse(STATUS_TOO_LARGE, f"{len(data)} bytes, above --max-instance-mb")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return refuse(STATUS_WRITE_FAILED, f"cannot write the instance ({type(exc).__name__})")
        try:
            intake = check_instance(tmp, event.context.abstract_syntax, max_pixels=self.config.max_pixels)
            if not intake.ok:
                return refuse(intake.status, intake.comment)
            outcome = self.book.commit_instance(tmp, intake.study_uid, intake.sop_uid, intake.view, calling)
        except OSError as exc:
            return refuse(STATUS_WRITE_FAILED, f"cannot store the instance ({type(exc).__name__})")
        finally:
            tmp.unlink(missing_ok=True)
        log.info("C-STORE from AE %s: %s instance of study %s (%s, %d bytes, %.2f s)", calling, outcome,
                 uid_hash(intake.study_uid), intake.view or "view unknown", len(data), time.perf_counter() - started)
        if outcome == "late":
            log.warning("study %s: instance arrived after the study was submitted; kept, not predicted",
                        uid_hash(intake.study_uid))
        return 0x0000

    # ------------------------------------------------------------------ scheduler and sender

    def _schedule_loop(self) -> None:
        assert self.book is not None and self.pool is not None  # set by start()
        while not self._stop.wait(self.config.tick_seconds):
            try:
                submitted = self.book.submit_complete(self.config.complete_after)
            except Exception:  # noqa: BLE001 - a busy or failing database must not stop the scheduler
                log.exception("checking for complete studies failed; retrying")
                continue
            for study in submitted:
                log.info("study %s complete (%s; %d instance(s), views %s): job %s queued", study.uid_hash,
                         study.complete_reason, study.n_instances, ",".join(study.views) or "-", study.job_id)
            if submitted:
                self.pool.notify()

    def _send_loop(self) -> None:
        assert self.book is not None  # set by start()
        while not self._stop.wait(self.config.tick_seconds):
            try:
                due = self.book.finished_unsent()
            except Exception:  # noqa: BLE001 - keep delivering through database hiccups
                log.exception("reading the studies to send failed; retrying")
                continue
            for study, status in due:
                if self._stop.is_set():
                    return
                self._deliver(study, status)

    def _deliver(self, study: Study, job_status: str) -> None:
        assert self.book is not None and study.job_id is not None
        if job_status == "failed":
            self.book.mark(study.study_key, "failed")
            log.warning("study %s: job %s failed; nothing to send (the job's error is in the job store)",
                        study.uid_hash, study.job_id)
            return
        files = sorted((job_dir(self.data_dir, study.job_id) / RESULT_DIR).glob("*.dcm"))
        if self.destination is None:
            self.book.mark(study.study_key, "stored")
            log.info("study %s: %d result object(s) kept under job %s (no --destination)", study.uid_hash,
                     len(files), study.job_id)
            return
        started = time.perf_counter()
        try:
            send_files(files, self.destination, self.ae_title, self.config.network_timeout)
        except (BreastscreenError, OSError, ValueError) as exc:
            delay = min(3600.0, self.config.send_retry_seconds * 2 ** study.send_attempts)
            attempts = self.book.retry_later(study.study_key, delay, str(exc)[:500])
            if attempts >= self.config.send_attempts:
                self.book.mark(study.study_key, "send_failed", str(exc)[:500])
                log.error("study %s: giving up sending to %s after %d attempts (%s)", study.uid_hash,
                          self.destination, attempts, type(exc).__name__)
            else:
                log.warning("study %s: sending to %s failed (attempt %d, %s); retrying in %.0f s", study.uid_hash,
                            self.destination, attempts, exc, delay)
            return
        self.book.mark(study.study_key, "sent")
        log.info("study %s: %d result object(s) of job %s sent to %s in %.2f s", study.uid_hash, len(files),
                 study.job_id, self.destination, time.perf_counter() - started)

    # ------------------------------------------------------------------ one job

    def _run_study(self, models: LoadedModels, config: ServeConfig, jdir: Path, attempt_dir: Path,
                   report: Any) -> dict[str, Any]:
        """Predict one submitted study; write the SR and overlays into ``attempt_dir/result``."""
        assert self.book is not None
        study = self.book.by_job(jdir.name)
        if study is None:
            raise BreastscreenError(f"job {jdir.name} belongs to no received study")
        report("predict", 0.0, 0.0)
        out = attempt_dir / RESULT_DIR
        out.mkdir(parents=True, exist_ok=True)
        doc = predict_study(models, self.book.study_dir(study.study_key), out, node_name=self.ae_title,
                            device_uid=self.device_uid)
        report("predict", 1.0, 1.0)
        doc["study"] = study.uid_hash
        doc["exams"] = [study.uid_hash]  # the worker's log counts these
        doc["complete_reason"] = study.complete_reason
        return doc


def predict_study(models: LoadedModels, folder: Path, out: Path, *, node_name: str, device_uid: str) -> dict[str, Any]:
    """Predict the study in ``folder`` as ``breastscreen predict`` would; write ``sr.dcm``, overlays, result.json.

    The exam is found by :func:`~breastscreen.data.build.build_manifest` (group by study), so
    the images, views and sides are exactly those ``predict`` uses on the same files.
    """
    import highdicom as hd
    import pydicom

    from breastscreen.data.build import build_manifest
    from breastscreen.data.types import view_side
    from breastscreen.serve.dicom_results import ModelInfo, build_overlays, build_report

    started = time.perf_counter()
    predictor = models.predictor
    built = build_manifest(folder, group_by="study")
    exams = [e for e in built.exams if e.modality is predictor.modality]
    if not exams:
        kinds = sorted({e.modality.value for e in built.exams})
        raise BreastscreenError(
            f"no image this model reads ({predictor.modality.value}); study holds {kinds or 'no usable image'}, "
            f"{len(built.problems)} file(s) refused by the manifest rules")
    exam = max(exams, key=lambda e: sum(1 for _ in e.iter_images()))
    pred = predictor.predict_exam(exam)
    sources, sides, by_view = [], [], {}
    for view, images in exam.views.items():
        for image in images:
            ds = pydicom.dcmread(image.path, stop_before_pixels=True)
            sources.append(ds)
            sides.append(view_side(view))
            by_view.setdefault(view, ds)
    member = predictor.members[0]
    info = ModelInfo(name=" + ".join(m.name for m in predictor.members), version=member.sha256[:12],
                     device_uid=device_uid, node_name=node_name,
                     # SR text here is ISO-IR 6 (ASCII): the notice's dash would be replaced by '?'.
                     notice=NOT_FOR_CLINICAL_USE.replace("\u2014", "-").encode("ascii", "replace").decode())
    sr_uid = hd.UID()
    values = table_values(pred)  # with unknown_* of an ultrasound bag without laterality
    sr = build_report(values, sources, sides, info, hd.UID(), sr_uid)
    sr.save_as(out / "sr.dcm", enforce_file_format=True)
    overlay_uids = {v: hd.UID() for v in by_view}
    overlays = build_overlays(pred.panels, by_view, pred.values, hd.UID(), overlay_uids)
    for view, sc in overlays.items():
        sc.save_as(out / f"overlay_{view}.dcm", enforce_file_format=True)
    doc = {
        "values": {k: (None if v is None else float(v)) for k, v in values.items()},
        "views_used": pred.details.get("views_used", []),
        "missing_views": pred.details.get("missing_views", []),
        "n_images": len(sources),
        "refused_files": len(built.problems),
        "sr_sop_instance_uid": sr_uid,
        "overlays": {v: overlay_uids[v] for v in overlays},
        "models": [{"name": m.name, "sha256": m.sha256} for m in predictor.members],
        "package_version": __version__,
        "seconds": round(time.perf_counter() - started, 3),
        "notice": NOT_FOR_CLINICAL_USE,
    }
    (out / RESULT_JSON).write_text(json.dumps(doc, indent=1))
    return doc


def send_files(files: list[Path], destination: Destination, calling_ae: str, timeout: float = 60.0) -> None:
    """C-STORE every file to ``destination`` in one association; raise :class:`BreastscreenError` on any refusal."""
    import pydicom
    from pynetdicom import AE

    if not files:
        return
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise BreastscreenError(f"{destination}: association rejected, aborted or host unreachable")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in _STORED_STATUSES:
                raise BreastscreenError(f"{destination}: C-STORE answered status "
                                        f"{'none (timeout or abort)' if code < 0 else f'0x{code:04X}'}")
    finally:
        if assoc.is_established:
            assoc.release()
