"""``breastscreen demo``: the built-in end-to-end run on synthetic data."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
