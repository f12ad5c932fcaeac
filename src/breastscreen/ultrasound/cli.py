"""CLI commands of the ultrasound stage (registered on the main app by ``breastscreen.cli``).

``breastscreen train us`` and ``breastscreen search us --space FILE`` come from the training
stage (KIND ``us`` is registered by :mod:`breastscreen.training.recipes.us`), and
``breastscreen predict`` handles ultrasound manifests through the inference stage. This module
adds the two commands that need ultrasound knowledge:

* ``breastscreen us-search``: the paper's random search without writing a space file;
* ``breastscreen us-space``: write the paper's space as a YAML file for ``breastscreen search us``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_US_SEARCH_HELP = """Random hyper-parameter search of the ultrasound classifier (Shen et al. 2021).

Samples per trial lr in 10^[-5.5, -4], saliency weight beta in 10^[-3, 0.5], weight decay in
10^[-6, -3.5] (log scale) and top-t pooling fraction t in [0.1, 0.5] (linear); trains each trial
with `breastscreen train us`, keeps each trial's epoch with the best validation malignant
AUROC and writes OUT/ensemble.json of the --top-k best trials, for
`breastscreen predict --model OUT/ensemble.json`. KEY=VALUE options after the flags are fixed
for every trial (e.g. `epochs=20 recipe.input_size=160 model_args.width=32`).
"""


def us_search_command(
    overrides: Optional[list[str]] = typer.Argument(None, help="KEY=VALUE options fixed for every trial."),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Training manifest (ultrasound exams with labels)."),
    val_manifest: Path = typer.Option(..., "--val-manifest", "-v", help="Validation manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Search directory (one run directory per trial)."),
    trials: int = typer.Option(..., "--trials", help="Number of trials."),
    top_k: int = typer.Option(3, "--top-k", help="Ensemble the best K trials (paper: 3)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parameter sampling."),
    space: Optional[Path] = typer.Option(None, "--space", help="YAML space instead of the paper's (see us-space)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of base options."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted search in --out."),
) -> None:
    from breastscreen.ultrasound.search import search_us

    result = search_us(str(manifest), str(val_manifest), out, trials, top_k=top_k, seed=seed,
                       overrides=list(overrides or []), config_file=config, space_file=space, resume=resume)
    for row in result.ranked:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        typer.echo(f"{row['trial']}: {row['metric']}={row['value']:.4f} (epoch {row['best_epoch']}) {params}")
    typer.echo(f"ensemble of top {len(result.top)}: {result.ensemble}")


def us_space_command(
    out: Path = typer.Argument(..., help="YAML file to write."),
) -> None:
    """Write the paper's ultrasound search space as a YAML file for `breastscreen search us --space`."""
    from breastscreen.ultrasound.search import write_paper_space

    typer.echo(str(write_paper_space(out)))


def register(app: typer.Typer) -> None:
    """Add ``us-search`` and ``us-space`` to ``app``."""
    app.command("us-search", help=_US_SEARCH_HELP, context_settings={"allow_interspersed_args": True})(us_search_command)
    app.command("us-space")(us_space_command)
