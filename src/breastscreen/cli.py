"""The ``breastscreen`` command line: one typer app; each stage registers its own thin commands."""

from __future__ import annotations

import importlib
import sys

import typer

from breastscreen import __version__
from breastscreen.errors import BreastscreenError

app = typer.Typer(
    name="breastscreen",
    help="Deep-learning breast cancer screening: manifests, preprocessing, models, inference, evaluation.\n\n"
    "Research software: bundled models are trained on synthetic images and are NOT for clinical use.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines ``register(app)``; the order here is the order in ``--help``.
_COMMAND_MODULES = (
    "breastscreen.synthetic.cli",
    "breastscreen.data.cli",
    "breastscreen.preprocess.cli",
    "breastscreen.models.cli",
    "breastscreen.inference.cli",
    "breastscreen.training.cli",
    "breastscreen.evaluation.cli",
    "breastscreen.ultrasound.cli",
    "breastscreen.serve.cli",
    "breastscreen.demo",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root() -> None:
    """breastscreen command line."""


@app.command("version")
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point: user errors become a one-line message and exit status 2."""
    try:
        app()
    except BreastscreenError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
