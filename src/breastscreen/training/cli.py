"""``breastscreen train`` and ``breastscreen search`` (thin wrappers over the training library)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from breastscreen.errors import BreastscreenError

_TRAIN_HELP = (
    "Train a model of KIND from a preprocessed manifest (see docs/training.md).\n\n"
    "KIND is one of: patch (patch classifier for heatmaps; with model=densenet161-patch-embed the lesion "
    "classifier's local module f_loc), birads (BI-RADS 0/1/2 pretraining; also the MV-DCN with model=mvdcn), "
    "breast (breast-level cancer model, image-only or with --heatmaps DIR), us (ultrasound gated-attention MIL), "
    "roi-patch (ROI patch classifier of the all-convolutional system), whole-image (the all-convolutional "
    "whole-image classifier, built from a roi-patch checkpoint with init_from=), context (the lesion classifier's "
    "global saliency network) and lesion (the lesion classifier f_agg on f_loc embeddings and saliency maps). "
    "Defaults follow the papers' recipes; change any option with KEY=VALUE overrides after the options, e.g. "
    "`lr=3e-5 epochs=40 patience=10 model_args.num_filters=8 recipe.jitter_px=50`.\n\n"
    "The run directory gets config.yaml, metrics.csv (one row per epoch), best.safetensors (weights + the model's "
    "spec), last.safetensors, val_predictions.csv (the best epoch's validation predictions in `breastscreen "
    "predict` format) and state.pt; an existing directory is refused unless --resume or --overwrite is given. "
    "Under `torchrun --nproc_per_node N` the run uses DistributedDataParallel."
)


def train_command(
    kind: str = typer.Argument(..., help="What to train: patch, birads, breast, us, roi-patch, whole-image, context or lesion."),
    overrides: Optional[list[str]] = typer.Argument(None, help="KEY=VALUE options overriding the recipe and --config."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="Training manifest (preprocessed JSONL)."),
    val_manifest: Optional[Path] = typer.Option(None, "--val-manifest", "-v", help="Validation manifest (preprocessed JSONL)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of options (overridden by KEY=VALUE)."),
    heatmaps: Optional[Path] = typer.Option(
        None, "--heatmaps", help="Breast model: folder of patch heatmaps (from `breastscreen heatmaps`) -> image+heatmaps model."
    ),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the killed or finished run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run directory at --out first."),
    n_models: int = typer.Option(1, "--n-models", help="Train an ensemble of N copies differing only in FC-layer init."),
) -> None:
    from breastscreen.training.runner import train

    items = list(overrides or [])
    if heatmaps is not None:
        items.append(f"recipe.heatmaps={heatmaps}")
    outcome = train(
        kind,
        manifest=str(manifest) if manifest else None,
        val_manifest=str(val_manifest) if val_manifest else None,
        out=str(out) if out else None,
        config_file=config,
        overrides=items,
        resume=resume,
        overwrite=overwrite,
        n_models=n_models,
    )
    from breastscreen.training.loop import dist_info_from_env, shutdown_distributed

    shutdown_distributed()
    if not dist_info_from_env().is_main:
        return
    for r in outcome.results:
        best = "n/a" if r.best_value is None else f"{r.best_value:.4f}"
        typer.echo(f"{r.run_dir}: {r.epochs_run} epoch(s), best epoch {r.best_epoch} (monitored value {best})"
                   f"{', stopped early' if r.stopped_early else ''}")
    if outcome.ensemble is not None:
        typer.echo(f"ensemble manifest: {outcome.ensemble}")


_SEARCH_HELP = """Random hyper-parameter search for KIND: train one run per sampled trial and rank the trials.

Samples the parameters declared in --space (log or linear scales, or choices), trains one run
per trial, ranks the trials by their best validation value of the monitored metric and writes
OUT/search.json, OUT/search.csv and an ensemble manifest OUT/ensemble.json of the top --top-k
trials.

space.yaml example:

  lr: {low: 1.0e-6, high: 1.0e-4, scale: log}
  weight_decay: {low: 1.0e-6, high: 1.0e-3, scale: log}
  recipe.window_jitter: {low: 0.0, high: 0.1, scale: linear}
  batch_size: {choices: [2, 4]}
"""


def search_command(
    kind: str = typer.Argument(..., help="What to train (as for `breastscreen train`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="KEY=VALUE options fixed for every trial."),
    space: Path = typer.Option(..., "--space", help="YAML file declaring the parameters to sample."),
    trials: int = typer.Option(..., "--trials", help="Number of trials."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="Training manifest."),
    val_manifest: Optional[Path] = typer.Option(None, "--val-manifest", "-v", help="Validation manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Search directory (one run directory per trial)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of base options."),
    top_k: int = typer.Option(3, "--top-k", help="Keep the best K trials as an ensemble."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parameter sampling."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted search in --out."),
) -> None:
    from breastscreen.training.search import run_search

    result = run_search(
        kind,
        space_file=space,
        trials=trials,
        out=out,
        manifest=str(manifest) if manifest else None,
        val_manifest=str(val_manifest) if val_manifest else None,
        config_file=config,
        overrides=list(overrides or []),
        top_k=top_k,
        seed=seed,
        resume=resume,
    )
    from breastscreen.training.loop import dist_info_from_env, shutdown_distributed

    shutdown_distributed()
    if not dist_info_from_env().is_main:
        return
    for row in result.ranked:
        typer.echo(f"{row['trial']}: {row['metric']}={row['value']:.4f} {row['params']}")
    typer.echo(f"ensemble of top {len(result.top)}: {result.ensemble}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``search`` to ``app``."""
    app.command("train", help=_TRAIN_HELP, context_settings={"allow_interspersed_args": True})(train_command)
    app.command("search", help=_SEARCH_HELP)(search_command)


def standalone_app() -> typer.Typer:
    """A typer app whose only command is ``train`` (for ``python -m breastscreen.training`` / torchrun)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=_TRAIN_HELP)
    app.command(help=_TRAIN_HELP)(train_command)
    return app


def main() -> None:
    """Entry point of ``python -m breastscreen.training KIND ...`` (used with torchrun)."""
    import sys

    try:
        standalone_app()()
    except BreastscreenError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
