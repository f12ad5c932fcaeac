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
from breastscreen.training.distributed import (  # noqa: F401 - re-exported for recipes and the CLI
    DistInfo,
    _barrier,
    _broadcast_bool,
    _mean_across_ranks,
    dist_info_from_env,
    init_distributed,
    shutdown_distributed,
)
from breastscreen.training.early_stopping import EarlyStopping
from breastscreen.training.rundir import (  # noqa: F401 - re-exported
    BEST_FILE,
    CONFIG_FILE,
    LAST_FILE,
    METRICS_FILE,
    RUN_MARKERS,
    STATE_FILE,
    VAL_PREDICTIONS_FILE,
    RunDirError,
    _rng_state,
    _set_rng_state,
    derive_seed,
    prepare_run_dir,
    read_metrics_csv,
    seed_worker,
    write_metrics_csv,
)
from breastscreen.training.samplers import EpochSampler, ShuffleSampler, shard_indices
from breastscreen.utils import atomic_path, resolve_device

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
    predictions: list[Any] | None = None
    prediction_columns: list[str] = field(default_factory=list)

    def record_predictions(self, columns: Sequence[str], rows: list[Any]) -> None:
        """Keep this evaluation's per-exam predictions (``PredictionRow``-like: exam_id, values,
        details); the loop writes them as ``val_predictions.csv`` when the checkpoint is the best."""
        self.prediction_columns = list(columns)
        self.predictions = rows

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
    spec: Any = None
    make_optimizer: Callable[[Any, TrainConfig], torch.optim.Optimizer] | None = None
    make_scheduler: Callable[[torch.optim.Optimizer, TrainConfig], Any] | None = None
    stages: Sequence["Stage"] = ()


@dataclass(frozen=True)
class Stage:
    """A training stage: ``epochs`` long, at ``lr`` (every parameter group's base lr is scaled by
    ``lr / cfg.lr``), training only the parameters whose name ``trainable(name)`` accepts
    (None = all), with ``weight_decay`` when given (else the optimizer's). Stages run in order;
    the last one lasts until the run ends."""

    epochs: int
    lr: float
    trainable: Callable[[str], bool] | None = None
    name: str = ""
    weight_decay: float | None = None


def stage_at(stages: Sequence[Stage], epoch: int) -> tuple[int, Stage] | None:
    """(index, stage) that ``epoch`` (0-based) falls in, or None without stages."""
    if not stages:
        return None
    end = 0
    for i, st in enumerate(stages):
        end += st.epochs
        if epoch < end:
            return i, st
    return len(stages) - 1, stages[-1]


def apply_stage(model: nn.Module, optimizer: torch.optim.Optimizer, stage: Stage, base_lr: float,
                base_lrs: Sequence[float]) -> None:
    """Freeze / unfreeze parameters and set the learning rates of ``stage``."""
    for name, p in model.named_parameters():
        p.requires_grad_(stage.trainable is None or bool(stage.trainable(name)))
    for group, lr0 in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr0 * stage.lr / base_lr
        if stage.weight_decay is not None:
            group["weight_decay"] = stage.weight_decay


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    history: list[dict[str, Any]]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_model(model: nn.Module, path: Path, metadata: dict[str, Any], spec: Any = None) -> None:
    """Write a checkpoint (atomically) with the model zoo's ``save_checkpoint``."""
    from breastscreen.models.checkpoint import save_checkpoint

    save_checkpoint(_unwrap(model), path, metadata=metadata, spec=spec)


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
    if task.make_optimizer is not None:
        optimizer = task.make_optimizer(model, cfg)
    else:
        params = task.param_groups(model) if task.param_groups is not None else model.parameters()
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scheduler = task.make_scheduler(optimizer, cfg) if task.make_scheduler is not None else None
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
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
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
        current = stage_at(task.stages, epoch)
        if current is not None:
            apply_stage(model, optimizer, current[1], cfg.lr, base_lrs)
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
            accum = max(1, cfg.grad_accum)
            for step, batch in enumerate(loader):
                if step >= n_batches:
                    break
                if step % accum == 0:
                    optimizer.zero_grad(set_to_none=True)
                ctx = torch.autocast(device_type="cuda", dtype=torch.float16) if use_amp else nullcontext()
                with ctx:
                    loss = task.compute_loss(ddp_model, batch, device)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
                scaler.scale(loss / accum).backward()
                if (step + 1) % accum == 0 or step + 1 == n_batches:
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
        if scheduler is not None:
            scheduler.step()

        is_last = epoch + 1 == cfg.epochs
        evaluated = task.evaluate is not None and ((epoch + 1) % max(task.eval_every, 1) == 0 or is_last)
        metrics: dict[str, float] = {}
        ectx = None
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
            save_model(model, run_dir / LAST_FILE, epoch_meta, task.spec)
            if improved:
                save_model(model, run_dir / BEST_FILE, epoch_meta, task.spec)
                if ectx is not None and ectx.predictions is not None:
                    from breastscreen.data.predictions import write_predictions_csv

                    write_predictions_csv(run_dir / VAL_PREDICTIONS_FILE, ectx.prediction_columns, ectx.predictions)
            if task.snapshot_every and (epoch + 1) % task.snapshot_every == 0:
                save_model(model, run_dir / f"epoch_{epoch + 1:04d}.safetensors", epoch_meta, task.spec)
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
                **({"scheduler": scheduler.state_dict()} if scheduler is not None else {}),
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
