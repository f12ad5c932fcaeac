"""The FastAPI application of ``breastscreen serve``: API under ``/v1``, health checks, the web viewer at ``/``.

:func:`create_app` builds the app around a :class:`~breastscreen.serve.config.ServeConfig`. At
start-up it takes the data-directory lock, opens the job store, requeues the jobs a previous
process left running, removes upload folders of jobs that never reached the database, loads the
models in a background thread (``/readyz`` answers 503 until they are loaded) and starts the
worker threads. Every ``/v1`` route needs ``Authorization: Bearer KEY``; a job belongs to the key
that submitted it. See ``docs/serve.md`` for the API with examples.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mimetypes
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breastscreen import __version__
from breastscreen.errors import BreastscreenError
from breastscreen.serve import schemas
from breastscreen.serve.config import NOT_FOR_CLINICAL_USE, ServeConfig
from breastscreen.serve.keys import KeyInfo, verify_key
from breastscreen.serve.runner import RESULT_DIR, LoadedModels, load_models
from breastscreen.serve.store import DataDirLock, Job, JobStore, new_job_id
from breastscreen.serve.uploads import (
    MAPPING_CSV,
    UPLOAD_DIR,
    UploadError,
    UploadLimits,
    check_modality,
    check_pixels,
    discard,
    extract_zip,
    find_exams,
    is_zip,
    parse_mapping,
    receive_form,
    write_mapping_csv,
)
from breastscreen.serve.worker import JOBS_DIR, WorkerPool, job_dir

log = logging.getLogger("breastscreen.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The viewer may only load its own files and talk to this service (no CDN, nothing external).
VIEWER_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
              "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DEFAULT_RETRY_S = 10.0


@dataclass
class ServiceState:
    """What the routes share: settings, store, models (None while loading) and workers."""

    config: ServeConfig
    store: JobStore
    pool: WorkerPool | None = None
    models: LoadedModels | None = None
    load_error: str | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def limits(self) -> UploadLimits:
        """Upload limits from the settings."""
        c = self.config
        return UploadLimits(c.max_upload_bytes, c.max_files, c.max_unzipped_bytes, c.max_pixels)

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again when the queue is full."""
        queued = self.store.counts()["queued"]
        per_job = self.store.mean_run_seconds() or DEFAULT_RETRY_S
        workers = max(1, self.config.workers)
        return int(min(3600, max(1, math.ceil(per_job * max(1, queued) / workers))))


class _Guard:
    """Outermost handler of unexpected errors: a plain 500, and a log line without the exception text.

    Starlette would otherwise log the full exception, whose message can quote file names.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - last line of defence
            log.error("internal error %s on %s %s", type(exc).__name__, scope.get("method"), scope.get("path"))
            if not started:
                await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)


def _headers_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        """No MIME sniffing, no referrer; the viewer's files get the Content-Security-Policy."""
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        path = request.url.path
        if path == "/" or path.startswith("/static/"):
            response.headers.setdefault("Content-Security-Policy", VIEWER_CSP)
        return response


def _job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "files": f"/v1/jobs/{job_id}/files/", "viewer": f"/#job={job_id}"}


def _linked(job_id: str, rel: str) -> str:
    return f"/v1/jobs/{job_id}/files/{rel}"


def _link_result(job_id: str, exam: dict[str, Any]) -> dict[str, Any]:
    """An exam document with its file names turned into API links."""
    out = dict(exam)
    views = {}
    for view, v in (exam.get("views") or {}).items():
        v = dict(v)
        v["image"] = _linked(job_id, v["image"])
        v["overlays"] = {k: _linked(job_id, p) for k, p in (v.get("overlays") or {}).items()}
        if v.get("heatmaps"):
            v["heatmaps"] = _linked(job_id, v["heatmaps"])
        views[view] = v
    out["views"] = views
    breasts = {}
    for side, b in (exam.get("breasts") or {}).items():
        b = dict(b)
        b["images"] = [{**im, "image": _linked(job_id, im["image"]),
                        "overlays": {k: _linked(job_id, p) for k, p in (im.get("overlays") or {}).items()}}
                       for im in b.get("images", [])]
        if b.get("saliency"):
            b["saliency"] = _linked(job_id, b["saliency"])
        breasts[side] = b
    out["breasts"] = breasts
    out["figures"] = [_linked(job_id, f) for f in exam.get("figures") or []]
    return out


def _progress(job: Job) -> schemas.Progress:
    return schemas.Progress(stage=job.stage, stage_fraction=job.stage_fraction, fraction=job.fraction)


def _status(state: ServiceState, job: Job) -> schemas.JobStatus:
    result = job.result or {}
    return schemas.JobStatus(
        id=job.id, status=job.status, progress=_progress(job),  # type: ignore[arg-type]
        queue_position=state.store.queue_position(job.id) if job.status == "queued" else None,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, attempts=job.attempts,
        n_files=job.n_files, upload_bytes=job.upload_bytes, exam_ids=job.exam_ids, modality=job.modality,
        exams=[_link_result(job.id, e) for e in result.get("exams", [])] if job.status == "done" else [],
        errors=result.get("errors", []), error=job.error, models=result.get("models", []),
        provenance=result.get("provenance", {}), notice=NOT_FOR_CLINICAL_USE, links=_job_links(job.id),
    )


def _model_infos(models: LoadedModels) -> list[schemas.ModelInfo]:
    from breastscreen.models.hub import list_bundled, read_model_card

    bundled = {b.name: b for b in list_bundled()}
    out = []
    for m in models.describe():
        ref = str(m["ref"])
        b = bundled.get(ref)
        meta = m.get("metadata") or {}
        out.append(schemas.ModelInfo(
            ref=ref, name=m["name"], version=str(m["sha256"])[:12], sha256=m["sha256"], role=m["role"],
            family=m["family"], bundled=b is not None, summary=b.summary if b else None,
            model_card=read_model_card(ref) if b else None,
            training_data=meta.get("training_data"), validation_metrics=meta.get("validation_metrics"),
        ))
    return out


def create_app(config: ServeConfig, *, models: LoadedModels | None = None,
               loader: Callable[[ServeConfig], LoadedModels] = load_models, start_workers: bool = True) -> FastAPI:
    """Build the service (see the module docstring).

    ``models`` skips loading (tests share one loaded model); ``loader`` replaces
    :func:`~breastscreen.serve.runner.load_models`; ``start_workers=False`` leaves jobs queued
    (tests of the queue limits).
    """
    data_dir = Path(config.data_dir)
    holder: dict[str, Any] = {}

    def get_state() -> ServiceState:
        """The state made at start-up (routes run only after it exists)."""
        return holder["state"]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Start-up and shutdown (see the module docstring)."""
        lock = DataDirLock(data_dir)
        lock.acquire()
        store = JobStore(data_dir)
        state = ServiceState(config, store)
        holder["state"] = state
        requeued = store.recover()
        if requeued:
            log.info("requeued %d job(s) left running by a previous process: %s", len(requeued), " ".join(requeued))
        _remove_orphans(store, data_dir)
        if not _any_key(store):
            log.warning("no API key in %s: every /v1 request will get 401; create one with "
                        "`breastscreen keys add NAME --data-dir %s`", data_dir, data_dir)

        def load() -> None:
            try:
                state.models = models if models is not None else loader(config)
                log.info("models loaded: %s; ready", state.models.name)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log
                state.load_error = f"{type(exc).__name__}: {exc}"
                log.error("loading the models failed: %s", state.load_error)

        loader_thread = threading.Thread(target=load, name="bs-model-loader", daemon=True)
        loader_thread.start()
        state.pool = WorkerPool(store, config, lambda: state.models, n_workers=config.workers if start_workers else 0)
        state.pool.start()
        try:
            yield
        finally:
            state.pool.stop()
            lock.release()

    app = FastAPI(
        title="breastscreen",
        version=__version__,
        description="Per-breast benign/malignant probabilities and heatmaps for mammography and ultrasound exams. "
                    + NOT_FOR_CLINICAL_USE,
        lifespan=lifespan,
    )
    app.add_middleware(_Guard)
    _headers_middleware(app)

    def require_key(request: Request) -> KeyInfo:
        """The caller's key from ``Authorization: Bearer KEY``, else 401."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        key = verify_key(get_state().store, token) if scheme.lower() == "bearer" and token else None
        if key is None:
            raise HTTPException(401, "missing or invalid API key: send Authorization: Bearer KEY "
                                     "(create one with `breastscreen keys add NAME --data-dir DIR`)",
                                headers={"WWW-Authenticate": "Bearer"})
        return key

    def owned_job(job_id: str, key: KeyInfo = Depends(require_key)) -> Job:
        """The job if it exists (404) and belongs to the caller's key (403)."""
        job = get_state().store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        if job.owner != key.key_id:
            raise HTTPException(403, f"job {job_id} belongs to another API key")
        return job

    # ------------------------------------------------------------------ health

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> schemas.Health:
        """Liveness: the process answers."""
        return schemas.Health(status="ok", version=__version__)

    @app.get("/readyz", response_model=schemas.Health, tags=["health"],
             responses={503: {"model": schemas.Health, "description": "models still loading or failed to load"}})
    def readyz() -> Any:
        """Readiness: 200 once the models are loaded and the job store answers, else 503."""
        state = get_state()
        queue = state.store.counts()
        if state.models is None:
            status = "failed" if state.load_error else "loading"
            body = schemas.Health(status=status, detail=state.load_error, version=__version__, queue=queue)
            return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
        return schemas.Health(status="ready", version=__version__, models=list(state.models.refs), queue=queue)

    # ------------------------------------------------------------------ models

    @app.get("/v1/models", response_model=schemas.ModelsResponse, tags=["models"])
    def get_models(key: KeyInfo = Depends(require_key)) -> schemas.ModelsResponse:
        """The loaded models: names, versions (checkpoint hashes), model cards and the not-for-clinical-use notice."""
        state = get_state()
        if state.models is None:
            raise HTTPException(503, "models are still loading", headers={"Retry-After": "5"})
        p = state.models.predictor
        c = state.config
        return schemas.ModelsResponse(
            models=_model_infos(state.models), modality=p.modality.value, columns=list(p.columns), tta=p.tta,
            device=str(p.device), notice=NOT_FOR_CLINICAL_USE,
            limits={"max_upload_bytes": c.max_upload_bytes, "max_files": c.max_files,
                    "max_unzipped_bytes": c.max_unzipped_bytes, "max_pixels": c.max_pixels,
                    "max_queued": c.max_queued},
        )

    # ------------------------------------------------------------------ jobs

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "DICOM / PNG / TIFF files of one or more exams, or one zip of them"},
                    "mapping": {"type": "string", "description":
                                'optional JSON: {"file name": "L-CC"} or {"file name": {"view": "L-CC", '
                                '"exam_id": "A1"}} for files whose names or tags do not tell their view'},
                    "exam_id": {"type": "string", "description": "exam id for mapping entries without one"},
                },
            }}},
        }
    }

    @app.post("/v1/exams", status_code=202, response_model=schemas.JobCreated, tags=["jobs"],
              openapi_extra=upload_doc,
              responses={401: {"description": "no valid API key"}, 413: {"description": "upload over a limit"},
                         422: {"description": "unusable upload (the message names the file and problem)"},
                         429: {"description": "queue full; see Retry-After"},
                         503: {"description": "models still loading"}})
    async def submit_exam(request: Request, key: KeyInfo = Depends(require_key)) -> Any:
        """Upload an exam (multipart field ``files``, repeated) and queue it; answers 202 with the job id."""
        state = get_state()
        if state.models is None:
            raise HTTPException(503, "models are still loading", headers={"Retry-After": "5"})
        if state.store.counts()["queued"] >= state.config.max_queued:
            raise HTTPException(429, "the job queue is full; try again later",
                                headers={"Retry-After": str(state.retry_after())})
        job_id = new_job_id()
        jdir = job_dir(data_dir, job_id)
        upload = jdir / UPLOAD_DIR
        try:
            form = await receive_form(request.headers.get("content-type"), request.headers.get("content-length"),
                                      request.stream(), upload, state.limits)
            exam_ids, files = await run_in_threadpool(_prepare_upload, state, form, jdir)
            accepted = state.store.submit(job_id, key.key_id, n_files=len(files), upload_bytes=form.body_bytes,
                                          exam_ids=exam_ids, modality=state.models.predictor.modality.value,
                                          max_queued=state.config.max_queued)
            if not accepted:
                raise HTTPException(429, "the job queue is full; try again later",
                                    headers={"Retry-After": str(state.retry_after())})
        except UploadError as exc:
            discard(jdir)
            log.info("upload refused with %d (%s)", exc.status, "limit" if exc.status == 413 else "unusable input")
            raise HTTPException(exc.status, str(exc)) from None
        except BaseException:
            discard(jdir)
            raise
        log.info("job %s queued: %d file(s), sha256 %s", job_id, len(files),
                 " ".join(f.sha256[:16] for f in files))
        if state.pool is not None:
            state.pool.notify()
        body = schemas.JobCreated(id=job_id, status="queued", exam_ids=exam_ids, links=_job_links(job_id))
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs", response_model=schemas.JobList, tags=["jobs"])
    def list_jobs(limit: int = Query(20, ge=1, le=200), cursor: Optional[str] = Query(None),
                  key: KeyInfo = Depends(require_key)) -> schemas.JobList:
        """The caller's jobs, newest first, ``limit`` per page; follow ``next_cursor`` for older ones."""
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise HTTPException(422, f"cursor must be a value of next_cursor, got {cursor!r}")
            before = int(cursor)
        jobs = get_state().store.list(key.key_id, limit + 1, before)
        page = jobs[:limit]
        summaries = [schemas.JobSummary(id=j.id, status=j.status, progress=_progress(j),  # type: ignore[arg-type]
                                        created_at=j.created_at, finished_at=j.finished_at, exam_ids=j.exam_ids,
                                        modality=j.modality, n_files=j.n_files) for j in page]
        return schemas.JobList(jobs=summaries, next_cursor=str(page[-1].seq) if len(jobs) > limit else None)

    @app.get("/v1/jobs/{job_id}", response_model=schemas.JobStatus, tags=["jobs"],
             responses={403: {"description": "the job belongs to another key"}, 404: {"description": "no such job"}})
    def get_job(job: Job = Depends(owned_job)) -> schemas.JobStatus:
        """Status, progress and (when done) per-breast probabilities, per-view outputs and links to pictures."""
        return _status(get_state(), job)

    @app.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"],
                responses={403: {"description": "the job belongs to another key"}, 404: {"description": "no such job"}})
    def delete_job(job: Job = Depends(owned_job)) -> Response:
        """Delete a job with its uploads and results (a running job is stopped)."""
        state = get_state()
        state.store.delete(job.id)
        if state.pool is not None:
            state.pool.cancel(job.id)
        discard(job_dir(data_dir, job.id))
        log.info("job %s deleted", job.id)
        return Response(status_code=204)

    @app.get("/v1/jobs/{job_id}/files/{path:path}", tags=["jobs"],
             responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}}})
    def job_file(path: str, job: Job = Depends(owned_job)) -> FileResponse:
        """A result file of a finished job (viewer images, overlays, heatmap arrays, figures)."""
        if job.status != "done":
            raise HTTPException(409, f"job {job.id} is {job.status}; files exist once it is done")
        root = (job_dir(data_dir, job.id) / RESULT_DIR).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"no file {path!r} in job {job.id}")
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media, headers={"Cache-Control": "private, max-age=86400, immutable"})

    # ------------------------------------------------------------------ viewer

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        """The web viewer's page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _prepare_upload(state: ServiceState, form: Any, jdir: Path) -> tuple[list[str], list[Any]]:
    """Unzip, apply the mapping and find the exams of a received upload (422/413 on problems)."""
    upload = jdir / UPLOAD_DIR
    files = list(form.files)
    if not files:
        raise UploadError(422, "no file in the upload: send one or more 'files' fields")
    zips = [f for f in files if is_zip(upload / f.name)]
    if zips:
        if len(files) > 1:
            raise UploadError(422, f"{zips[0].name}: send one zip on its own, or image files without a zip")
        archive = upload / zips[0].name
        staging = jdir / "unzip"
        files = extract_zip(archive, staging, state.limits, zips[0].name)
        archive.unlink()
        upload.rmdir()
        staging.rename(upload)
    mapping_csv = None
    sent_csv = [f for f in files if f.name.lower() == MAPPING_CSV]
    if sent_csv:
        if "mapping" in form.fields:
            raise UploadError(422, "send the mapping either as the 'mapping' field or as mapping.csv, not both")
        (upload / sent_csv[0].name).rename(jdir / MAPPING_CSV)
        files = [f for f in files if f is not sent_csv[0]]
        mapping_csv = jdir / MAPPING_CSV
    elif "mapping" in form.fields:
        mapping = parse_mapping(form.fields["mapping"])
        default_exam = (form.fields.get("exam_id") or "exam").strip() or "exam"
        write_mapping_csv(mapping, files, default_exam, jdir / MAPPING_CSV)
        mapping_csv = jdir / MAPPING_CSV
    check_pixels(upload, files, state.config.max_pixels)
    exams = find_exams(upload, mapping_csv)
    models = state.models
    if models is None:  # the caller checked it before reading the body; kept for the type checker
        raise UploadError(503, "models are still loading")
    check_modality(exams, models.predictor.modality, models.name, upload)
    return [e.exam_id for e in exams], files


def _any_key(store: JobStore) -> bool:
    with store.connect() as con:
        return con.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None


def _remove_orphans(store: JobStore, data_dir: Path) -> None:
    """Delete job folders without a database row (an upload interrupted before it was queued)."""
    root = data_dir / JOBS_DIR
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and store.get(d.name) is None:
            discard(d)


__all__ = ["BreastscreenError", "ServiceState", "create_app"]
