"""The fit loop every training KIND shares: epochs, validation, early stopping, checkpoints, resume, DDP.

A recipe turns a :class:`~breastscreen.training.config.TrainConfig` into a :class:`TrainTask`
(model, training set, per-epoch sampler, loss, validation); :func:`fit` runs it.

Run directory (``cfg.out``)::

    config.yaml          resolved configuration (enough to repeat the run)
    metrics.csv          one row per epoch: epoch, train_loss, lr, seconds, validation metrics
    last.safetensors     model after the latest epoch   (models.save_checkpoint, with metadata)
    best.safetensors     model at the best monitored validation value so far
    state.pt             resumable state: model, optimizer, AMP scaler, RNG states, epoch,
                         early-stopping state and metrics history (torch.save of tensors and
                         plain containers only, read back with weights_only=True)
    tb/                  TensorBoard logs, when the ``tensorboard`` package is installed

Every file is written atomically (temporary file + rename), the state file last, so a run
killed at any moment resumes from its last completed epoch. Determinism: every epoch reseeds
torch from ``(seed, epoch)``, samplers and augmentation draw from generators seeded with
``(seed, epoch, ...)`` and DataLoader workers are seeded from the loader's seeded generator; so
on CPU a resumed run ends with exactly the weights of an uninterrupted one.

Distributed data parallel: launched with ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``
in the environment), the loop initialises ``torch.distributed`` (NCCL on CUDA, gloo on CPU),
wraps the model in ``DistributedDataParallel``, gives every rank its share of each epoch's
indices and gathers validation predictions so all ranks take the same early-stopping
decision. Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from breastscreen.errors import BreastscreenError
from breastscreen.training.config import TrainConfig, save_config, to_dict
from breastscreen.training.samplers import EpochSampler, ShuffleSampler, shard_indices
from breastscreen.utils import atomic_path, resolve_device

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
# Files that mark a directory as a run directory (single run, ensemble, search) for --overwrite.
RUN_MARKERS = (CONFIG_FILE, "ensemble_plan.json", "search.json")


class RunDirError(BreastscreenError):
    """The run directory cannot be used as asked (exists, or has nothing to resume)."""


# --------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when running under torch.distributed with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun (defaults: one process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise BreastscreenError(f"torchrun environment variables must be integers: {exc}") from None
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Initialise the default process group for ``info`` (no-op for one process or if already done)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)


def shutdown_distributed() -> None:
    """Destroy the default process group if one was initialised (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def _mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def _broadcast_bool(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


# --------------------------------------------------------------------------------------------
# early stopping
# --------------------------------------------------------------------------------------------


class EarlyStopping:
    """Stop when the monitored value has not improved for ``patience`` epochs.

    ``step(value, epoch)`` records one evaluation; an improvement is a value better than the
    best so far by more than ``min_delta`` (NaN never improves). ``should_stop`` becomes true
    once ``epoch - best_epoch >= patience``; ``patience <= 0`` never stops.
    """

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int = -1
        self.last_epoch: int = -1

    def is_better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far."""
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value`` at ``epoch``; return True when it is a new best."""
        self.last_epoch = int(epoch)
        if self.is_better(value):
            self.best = float(value)
            self.best_epoch = int(epoch)
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """True when ``patience`` epochs have passed since the best epoch."""
        if self.patience <= 0 or self.last_epoch < 0:
            return False
        reference = self.best_epoch if self.best_epoch >= 0 else -1
        return self.last_epoch - reference >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (plain numbers) for the resumable state file."""
        return {
            "patience": self.patience,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "best": float("nan") if self.best is None else self.best,
            "has_best": self.best is not None,
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best = float(state["best"]) if state["has_best"] else None
        self.best_epoch = int(state["best_epoch"])
        self.last_epoch = int(state["last_epoch"])


# --------------------------------------------------------------------------------------------
# task description
# --------------------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """What a recipe's validation function may use."""

    device: torch.device
    dist: DistInfo
    epoch: int
    batch_size: int
    num_workers: int
    amp: bool
    progress: bool
    max_batches: int = 0
    run_dir: Path | None = None

    def autocast(self) -> Any:
        """Mixed-precision context on CUDA when AMP is on, else a no-op."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return nullcontext()

    def predict(
        self,
        model: nn.Module,
        dataset: Dataset,
        forward: Callable[[nn.Module, Any, torch.device], Sequence[Any]],
        collate_fn: Callable | None = None,
        description: str = "validate",
    ) -> list[Any]:
        """Run ``forward(model, batch, device) -> per-item outputs`` over ``dataset``, in dataset order.

        Under DDP each rank predicts its share and the shares are gathered, so every rank
        returns the full list. ``max_batches`` (if set) truncates the dataset for quick runs.
        """
        n = len(dataset)
        if self.max_batches:
            n = min(n, self.max_batches * self.batch_size)
        order = shard_indices(np.arange(n, dtype=np.int64), self.dist.rank, self.dist.world_size)
        loader = DataLoader(
            _IndexedSubset(dataset, order.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_IndexedCollate(collate_fn),
            worker_init_fn=seed_worker,
        )
        results: dict[int, Any] = {}
        was_training = model.training
        model.eval()
        with torch.inference_mode(), self.autocast(), _progress(self.progress and self.dist.is_main) as bar:
            task = bar.add_task(description, total=len(loader)) if bar is not None else None
            for indices, batch in loader:
                outs = forward(model, batch, self.device)
                if len(outs) != len(indices):
                    raise RuntimeError(f"forward returned {len(outs)} outputs for a batch of {len(indices)}")
                for i, o in zip(indices, outs):
                    results[int(i)] = o
                if bar is not None:
                    bar.advance(task)
        model.train(was_training)
        if self.dist.enabled:
            gathered: list[dict[int, Any]] = [None] * self.dist.world_size  # type: ignore[list-item]
            dist.all_gather_object(gathered, results)
            for part in gathered:
                results.update(part)
        return [results[i] for i in range(n)]


class _IndexedSubset(Dataset):
    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.indices[i], self.dataset[self.indices[i]]


class _IndexedCollate:
    """Collate ``(index, item)`` pairs: indices as a list, items with the wrapped collate."""

    def __init__(self, collate_fn: Callable | None) -> None:
        self.collate_fn = collate_fn

    def __call__(self, pairs: list[tuple[int, Any]]) -> tuple[list[int], Any]:
        from torch.utils.data import default_collate

        indices = [p[0] for p in pairs]
        items = [p[1] for p in pairs]
        return indices, (self.collate_fn or default_collate)(items)


@dataclass
class TrainTask:
    """Everything :func:`fit` needs from a recipe.

    ``compute_loss(model, batch, device)`` returns the scalar training loss of one batch (the
    model may be DDP-wrapped). ``evaluate(model, ctx)`` returns validation metrics (a dict of
    floats that must contain ``cfg.monitor``); it runs every ``eval_every`` epochs and after
    the last one. ``metadata`` goes into every checkpoint. ``snapshot_every`` > 0 also keeps
    ``epoch_NNNN.safetensors`` every that many epochs (the patch recipe's checkpoints).
    """

    model: nn.Module
    train_set: Dataset
    compute_loss: Callable[[nn.Module, Any, torch.device], torch.Tensor]
    evaluate: Callable[[nn.Module, EvalContext], dict[str, float]] | None = None
    sampler: EpochSampler | None = None
    collate_fn: Callable | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1
    snapshot_every: int = 0
    param_groups: Callable[[nn.Module], Any] | None = None


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    history: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------------------------


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and integers (epoch, stream ...), stable across runs."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(p) for p in parts]])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# run directory
# --------------------------------------------------------------------------------------------


def prepare_run_dir(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Check the run directory: refuse to reuse one unless resuming or explicitly overwriting.

    ``overwrite`` deletes an earlier run's directory only when it is empty or looks like a run
    directory (has one of :data:`RUN_MARKERS`), so a mistyped path never wipes unrelated files.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise RunDirError(f"cannot resume: {run_dir / STATE_FILE} does not exist (no completed epoch)")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(f"run directory {run_dir} already exists and is not empty; use --resume or --overwrite")
        if not any((run_dir / marker).is_file() for marker in RUN_MARKERS):
            raise RunDirError(
                f"refusing to overwrite {run_dir}: it is not a training run directory (none of {', '.join(RUN_MARKERS)})"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    """Write the per-epoch history (union of keys as columns, in first-seen order)."""
    columns: list[str] = []
    for row in history:
        for k in row:
            if k not in columns:
                columns.append(k)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, "") for k in columns})


def read_metrics_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run's metrics.csv as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_model(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Write a checkpoint (atomically) with the model zoo's ``save_checkpoint``."""
    from breastscreen.models.checkpoint import save_checkpoint

    save_checkpoint(_unwrap(model), path, metadata=metadata)


class _Progress:
    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )

    def __enter__(self) -> "_Progress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def add_task(self, description: str, total: int) -> int:
        return self.progress.add_task(description, total=total, info="")

    def advance(self, task: int, info: str = "") -> None:
        self.progress.update(task, advance=1, info=info)


def _progress(enabled: bool) -> Any:
    return _Progress() if enabled else nullcontext(None)


def _log(msg: str, info: DistInfo) -> None:
    if info.is_main:
        from rich.console import Console

        Console(stderr=True).print(msg, highlight=False)


def _tensorboard(run_dir: Path, info: DistInfo) -> Any:
    """A SummaryWriter when the tensorboard package is installed (rank 0 only), else None."""
    if not info.is_main:
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(task: TrainTask, cfg: TrainConfig, resume: bool = False, info: DistInfo | None = None) -> FitResult:
    """Train ``task`` as ``cfg`` says, writing the run directory ``cfg.out`` (see module doc).

    The caller prepares the run directory (:func:`prepare_run_dir`) and seeds torch before it
    builds the model, so that all ranks start from the same weights. With ``resume`` the model,
    optimizer, scaler, RNG and early-stopping states and the metrics history are restored from
    ``state.pt`` and training continues at the next epoch.
    """
    info = info or dist_info_from_env()
    run_dir = Path(cfg.out)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    init_distributed(info, device)

    model = task.model.to(device)
    params = task.param_groups(model) if task.param_groups is not None else model.parameters()
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(cfg.patience, cfg.monitor_mode, cfg.min_delta)
    history: list[dict[str, Any]] = []
    start_epoch = 0

    if resume:
        state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        history = [dict(r) for r in state["history"]]
        _set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        _log(f"resuming {run_dir} after epoch {start_epoch} (best {cfg.monitor}={stopper.best})", info)
        if stopper.should_stop or start_epoch >= cfg.epochs:
            _log("nothing left to do: the run had already finished", info)
    elif info.is_main:
        save_config(cfg, run_dir / CONFIG_FILE)

    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    sampler = task.sampler or ShuffleSampler(len(task.train_set), seed=cfg.seed)
    sampler.rank, sampler.world_size = info.rank, info.world_size
    writer = _tensorboard(run_dir, info)
    metadata = {**task.metadata, "training": {**task.metadata.get("training", {}), "config": to_dict(cfg)}}
    stopped_early = stopper.should_stop
    epoch = start_epoch - 1

    for epoch in range(start_epoch, cfg.epochs if not stopped_early else start_epoch):
        t0 = time.perf_counter()
        # Reseeding per epoch makes each epoch independent of earlier ones' RNG consumption,
        # which is what lets a resumed run reproduce an uninterrupted one.
        torch.manual_seed(derive_seed(cfg.seed, epoch, 0))
        sampler.set_epoch(epoch)
        if hasattr(task.train_set, "set_epoch"):
            task.train_set.set_epoch(epoch)
        loader = DataLoader(
            task.train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=task.collate_fn,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 1)),
            drop_last=False,
        )
        ddp_model.train()
        total, count = 0.0, 0
        n_batches = len(loader) if not cfg.max_train_batches else min(len(loader), cfg.max_train_batches)
        with _progress(cfg.progress and info.is_main) as bar:
            bar_task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches) if bar is not None else None
            for step, batch in enumerate(loader):
                if step >= n_batches:
                    break
                optimizer.zero_grad(set_to_none=True)
                ctx = torch.autocast(device_type="cuda", dtype=torch.float16) if use_amp else nullcontext()
                with ctx:
                    loss = task.compute_loss(ddp_model, batch, device)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach())
                count += 1
                if bar is not None:
                    bar.advance(bar_task, info=f"loss {total / count:.4f}")
        if info.enabled:
            # DDP keeps parameters in sync but BatchNorm running statistics drift with each
            # rank's last batches; take rank 0's so validation and checkpoints agree everywhere.
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        train_loss = _mean_across_ranks(total / max(count, 1), info, device)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"]}

        is_last = epoch + 1 == cfg.epochs
        evaluated = task.evaluate is not None and ((epoch + 1) % max(task.eval_every, 1) == 0 or is_last)
        metrics: dict[str, float] = {}
        if evaluated:
            ectx = EvalContext(
                device=device,
                dist=info,
                epoch=epoch,
                batch_size=cfg.val_batch_size or cfg.batch_size,
                num_workers=cfg.num_workers,
                amp=use_amp,
                progress=cfg.progress,
                max_batches=cfg.max_val_batches,
                run_dir=run_dir,
            )
            metrics = {k: float(v) for k, v in task.evaluate(model, ectx).items()}
        row.update(metrics)
        monitored = row.get(cfg.monitor)
        improved = False
        if evaluated or task.evaluate is None:
            if monitored is None:
                raise BreastscreenError(
                    f"monitor {cfg.monitor!r} is not among the epoch metrics {sorted(row)}; set monitor=<one of them>"
                )
            improved = stopper.step(float(monitored), epoch)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row["best"] = int(improved)
        history.append(row)

        if info.is_main:
            epoch_meta = {**metadata, "epoch": epoch + 1, "validation_metrics": {k: row[k] for k in metrics}}
            save_model(model, run_dir / LAST_FILE, epoch_meta)
            if improved:
                save_model(model, run_dir / BEST_FILE, epoch_meta)
            if task.snapshot_every and (epoch + 1) % task.snapshot_every == 0:
                save_model(model, run_dir / f"epoch_{epoch + 1:04d}.safetensors", epoch_meta)
            write_metrics_csv(history, run_dir / METRICS_FILE)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "early_stopping": stopper.state_dict(),
                "history": history,
                "rng": _rng_state(),
            }
            with atomic_path(run_dir / STATE_FILE) as tmp:
                torch.save(state, tmp)
            shown = f"epoch {epoch + 1}/{cfg.epochs} train_loss {train_loss:.4f}"
            if monitored is not None and cfg.monitor != "train_loss":
                shown += f" {cfg.monitor} {float(monitored):.4f}"
            if stopper.best is not None:
                shown += f" (best {stopper.best:.4f} @ epoch {stopper.best_epoch + 1})"
            _log(f"{shown} {row['seconds']:.1f}s{'  *' if improved else ''}", info)
        _barrier(info)
        stopped_early = _broadcast_bool(stopper.should_stop, info, device)
        if stopped_early:
            _log(f"early stopping: {cfg.monitor} has not improved for {cfg.patience} epochs", info)
            break

    if writer is not None:
        writer.close()
    if info.is_main and not (run_dir / BEST_FILE).exists() and (run_dir / LAST_FILE).exists():
        shutil.copyfile(run_dir / LAST_FILE, run_dir / BEST_FILE)
    _barrier(info)
    return FitResult(
        run_dir=run_dir,
        epochs_run=epoch + 1,
        best_epoch=stopper.best_epoch + 1,
        best_value=stopper.best,
        stopped_early=stopped_early,
        history=history,
    )
