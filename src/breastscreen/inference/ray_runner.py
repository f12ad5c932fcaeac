"""Scale-out of ``breastscreen heatmaps`` and ``breastscreen predict`` on Ray (``--ray``).

The process that runs the command (the *driver*) keeps every decision about files: which images
or exams ``--resume`` skips, what is written and how (atomically), ``errors.csv`` and provenance.
Only the computation runs as Ray tasks, one per work unit:

* heatmaps: one *chunk* of ``images_per_chunk`` consecutive images (``--images-per-chunk 1`` for
  one image per task). A chunk is the unit of batching of the single-process run, so a worker
  evaluates exactly the same model batches and the files are the same;
* predict: one exam.

Each Ray worker process loads the model once (kept per process, keyed by the checkpoint hash)
and refuses a checkpoint whose hash differs from the driver's, so every node must see the same
files: image paths, checkpoints and heatmap folders must be readable at the same paths on every
node (a shared filesystem), and ``breastscreen`` must be installed there.

Results come back in submission order, at most ``max_in_flight`` units ahead of the one being
written. Failures: a worker process that dies (crash, OOM kill, lost node) makes Ray retry its
task (``max_retries``); any other error raised in a worker is resubmitted by the driver up to
``max_retries`` times, then the run stops. Problems of one image or exam (unreadable file, no
breast, NaN output) are not errors here: the worker returns them as rows of ``errors.csv``, as a
single-process run does, and they are never retried. A :class:`BreastscreenError` raised in a
worker (e.g. another checkpoint behind the same path on a node) stops the run at once.

Fault injection for tests: ``BREASTSCREEN_RAY_FAULT=exit:MARKER`` (or ``raise:MARKER``) in the
driver's environment makes the first unit that creates file MARKER kill its worker process (or
raise a ``RuntimeError``); later units, and the retry, run normally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from breastscreen.errors import BreastscreenError

RAY_MISSING = "--ray needs Ray: pip install 'breastscreen[ray]'"
FAULT_ENV = "BREASTSCREEN_RAY_FAULT"
logger = logging.getLogger("breastscreen")
K = TypeVar("K")


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    ``address`` None starts a new local Ray with ``num_cpus`` CPUs (None: all); otherwise it is
    given to ``ray.init(address=...)``: ``auto`` (``RAY_ADDRESS``, else the cluster ``ray start``
    made on this machine), ``HOST:6379`` or ``ray://HOST:10001``. Each task reserves one CPU and
    ``gpus_per_task`` GPUs.
    """

    address: str | None = None
    num_cpus: int | None = None
    gpus_per_task: float = 0.0
    max_retries: int = 3
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise BreastscreenError(f"--ray-cpus must be >= 1, got {self.num_cpus}")
        if self.address and self.num_cpus is not None:
            raise BreastscreenError("--ray-cpus applies to a local Ray only; a cluster's CPUs are set by `ray start`")
        if self.gpus_per_task < 0:
            raise BreastscreenError(f"--ray-gpus must be >= 0, got {self.gpus_per_task}")
        if self.max_retries < 0:
            raise BreastscreenError(f"max_retries must be >= 0, got {self.max_retries}")


class RayWorkError(RuntimeError):
    """A work unit failed in every attempt (worker crashes or unexpected errors)."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`BreastscreenError` with the install line when it is missing."""
    try:
        import ray
    except ImportError:
        raise BreastscreenError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Connect to Ray (or start a local instance) for the block; shut down only what it started.

    A Ray already initialised in this process (e.g. by a caller or a test fixture) is used as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if options.address:
        check_reachable(options.address)
        kwargs["address"] = options.address
    else:
        # "local" always starts a new instance: a bare ray.init() would join whatever cluster
        # `ray start` last recorded on this machine (even a dead one), or RAY_ADDRESS.
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if options.num_cpus is not None:
            kwargs["num_cpus"] = options.num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"connect to Ray at {options.address}" if options.address else "start a local Ray"
        raise BreastscreenError(f"could not {where}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens, in seconds.

    Without this, ``ray.init`` retries an unreachable head for a quarter of an hour.
    ``auto`` and other forms are left to Ray.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BreastscreenError(
            f"could not connect to Ray at {address}: {exc}; start the head node with `ray start --head` "
            "and pass the address it prints"
        ) from None


def worker_ref(ref: str) -> str:
    """A model reference that means the same file in a worker: existing files made absolute."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_file() else ref


# --------------------------------------------------------------------------- driver side


def ordered_map(fn: Callable[..., Any], units: Iterable[tuple[K, tuple[Any, ...]]], options: RayOptions,
                what: str = "unit") -> Iterator[tuple[K, Any]]:
    """Run ``fn(*args)`` as a Ray task for each ``(key, args)`` of ``units``; yield ``(key, result)`` in order.

    ``units`` is read lazily, at most ``max_in_flight`` ahead of the result being yielded (default
    two per CPU of the cluster), so a long list never floods the object store. See the module
    docstring for retries.
    """
    ray = import_ray()
    remote = ray.remote(num_cpus=1, num_gpus=options.gpus_per_task, max_retries=options.max_retries)(fn)
    limit = options.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    fault = os.environ.get(FAULT_ENV) or None
    source = iter(units)
    keys: dict[int, Any] = {}
    args: dict[int, tuple[Any, ...]] = {}
    attempts: dict[int, int] = {}
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    submitted = next_out = 0
    exhausted = False
    try:
        while True:
            while not exhausted and submitted - next_out < limit:
                try:
                    key, a = next(source)
                except StopIteration:
                    exhausted = True
                    break
                keys[submitted], args[submitted], attempts[submitted] = key, a, 1
                pending[remote.remote(*a, fault)] = submitted
                submitted += 1
            if next_out in results:
                args.pop(next_out), attempts.pop(next_out)
                yield keys.pop(next_out), results.pop(next_out)
                next_out += 1
                continue
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            seq = pending.pop(ready[0])
            try:
                results[seq] = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, BreastscreenError):
                    raise cause from None
                if attempts[seq] > options.max_retries:
                    raise RayWorkError(f"{what} {keys[seq]} failed in {attempts[seq]} attempts on Ray: "
                                       f"{type(cause or err).__name__}: {cause or err}") from err
                logger.warning("%s %s failed on Ray (attempt %d of %d), resubmitted: %s", what, keys[seq],
                               attempts[seq], options.max_retries + 1, cause or err)
                attempts[seq] += 1
                pending[remote.remote(*args[seq], fault)] = seq
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):  # best effort: the run is over either way
                ray.cancel(ref)


def worker_device(options: RayOptions, device: str) -> str:
    """``device`` as a worker resolves it (``auto`` becomes ``cpu`` or ``cuda``), so it can be recorded."""
    ray = import_ray()
    remote = ray.remote(num_cpus=1, num_gpus=options.gpus_per_task, max_retries=options.max_retries)(_resolve)
    try:
        return ray.get(remote.remote(device))
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        raise BreastscreenError(f"--device {device} on a Ray worker: {cause or err}") from None


def map_heatmap_chunks(options: RayOptions, job: "HeatmapJob",
                       chunks: Iterable[tuple[K, Sequence[Any]]]) -> Iterator[tuple[K, tuple[list, int]]]:
    """Heatmap events of each ``(key, items)`` chunk, computed on Ray, in order (``(key, (events, batches))``)."""
    ray = import_ray()
    job_ref = ray.put(job)
    units = ((key, (job_ref, list(items))) for key, items in chunks)
    yield from ordered_map(heatmap_chunk_task, units, options, what="heatmap chunk")


def map_exams(options: RayOptions, job: "PredictJob", exams: Iterable[Any]) -> Iterator[tuple[str, tuple]]:
    """``(exam_id, (prediction or None, reason, traceback))`` of each exam, predicted on Ray, in order."""
    ray = import_ray()
    job_ref = ray.put(job)
    yield from ordered_map(predict_exam_task, ((e.exam_id, (job_ref, e)) for e in exams), options, what="exam")


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class HeatmapJob:
    """What a worker needs to rebuild the driver's sliding-window heatmapper."""

    model_ref: str
    sha256: str
    patch: int
    stride: int
    batch_size: int
    device: str
    amp: bool | None
    skip_background: bool
    class_names: tuple[str, ...]
    engine: Any = None  # EngineOptions; None = the exact default


@dataclass(frozen=True)
class PredictJob:
    """What a worker needs to rebuild the driver's Predictor and heatmap source."""

    models: tuple[str, ...]
    sha256: tuple[str, ...]
    device: str
    tta: int
    seed: int
    batch_size: int | None
    heatmaps_dir: str | None
    keep_pictures: bool
    precision: str = "fp32"


# One loaded model per kind and worker process: tasks of a run reuse it instead of reloading.
_LOADED: dict[str, tuple[Any, Any]] = {}


def _cached(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    hit = _LOADED.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    _LOADED.pop(kind, None)  # free the previous model before loading the next one
    value = make()
    _LOADED[kind] = (key, value)
    return value


def _resolve(device: str) -> str:
    from breastscreen.utils import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        raise BreastscreenError(str(exc)) from None


def _maybe_fail(fault: str | None) -> None:
    """Test hook (see the module docstring): fail once, in whichever worker first creates the marker."""
    if not fault:
        return
    mode, _, marker = fault.partition(":")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if mode == "exit":
        os._exit(1)  # a dying process, as a crash or an OOM kill would leave it
    raise RuntimeError(f"injected worker failure ({FAULT_ENV})")


def _check_hash(ref: str, found: str, expected: str) -> None:
    if found != expected:
        raise BreastscreenError(
            f"{ref} on Ray node {socket.gethostname()} has checkpoint hash {found[:12]}, the driver's has "
            f"{expected[:12]}; every node must see the same model files"
        )


def _load_heatmapper(job: HeatmapJob) -> Any:
    from breastscreen.inference.heatmaps import SlidingWindowHeatmapper
    from breastscreen.models import load_checkpoint

    ckpt = load_checkpoint(job.model_ref)
    _check_hash(job.model_ref, ckpt.sha256, job.sha256)
    device = _resolve(job.device)
    return SlidingWindowHeatmapper(ckpt.model.to(device), job.patch, job.stride, batch_size=job.batch_size,
                                   device=device, amp=job.amp, skip_background=job.skip_background,
                                   class_names=job.class_names, **(job.engine.kwargs() if job.engine else {}))


def heatmap_chunk_task(job: HeatmapJob, items: list[Any], fault: str | None = None) -> tuple[list, int]:
    """Ray task: :func:`~breastscreen.inference.heatmap_runner.chunk_events` of one chunk, and its model batches."""
    from breastscreen.inference.heatmap_runner import chunk_events

    _maybe_fail(fault)
    inferer = _cached("heatmaps", job, lambda: _load_heatmapper(job))
    before = inferer.batches_run
    events = list(chunk_events(inferer, items, job.skip_background))
    return events, inferer.batches_run - before


def _load_predictor(job: PredictJob) -> Any:
    from breastscreen.inference.predictor import Predictor

    predictor = Predictor.load(list(job.models), job.device, tta=job.tta, seed=job.seed, batch_size=job.batch_size,
                               precision=job.precision)
    for member, expected in zip(predictor.members, job.sha256):
        _check_hash(member.ref.ref, member.sha256, expected)
    return predictor


def predict_exam_task(job: PredictJob, exam: Any, fault: str | None = None) -> tuple[Any, str | None, str | None]:
    """Ray task: :func:`~breastscreen.inference.predict.predict_one` of one exam."""
    from breastscreen.inference.predict import heatmap_files, predict_one
    from breastscreen.inference.predictor import ExamPrediction

    _maybe_fail(fault)
    key = (job.models, job.sha256, job.device, job.tta, job.seed, job.batch_size)
    predictor = _cached("predict", key, lambda: _load_predictor(job))
    source = heatmap_files(Path(job.heatmaps_dir)) if job.heatmaps_dir else None
    pred, reason, trace = predict_one(predictor, exam, source)
    if pred is not None and not job.keep_pictures:
        # Prepared images are only needed to draw pictures; do not ship them back otherwise.
        pred = ExamPrediction(pred.exam_id, pred.values, pred.details)
    return pred, reason, trace
