"""HTTP service and web viewer: ``breastscreen serve`` (exams in, probabilities and heatmaps out).

:func:`~breastscreen.serve.app.create_app` builds the FastAPI application; the job store
(:mod:`~breastscreen.serve.store`), API keys (:mod:`~breastscreen.serve.keys`), uploads
(:mod:`~breastscreen.serve.uploads`), worker threads (:mod:`~breastscreen.serve.worker`) and the
job pipeline (:mod:`~breastscreen.serve.runner`) are usable on their own. The viewer is plain
HTML/JS/CSS in ``static/`` (no CDN; works offline). Research software: not for clinical use.
"""

from __future__ import annotations

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that `breastscreen keys ...` does not import FastAPI or torch.
    if name == "create_app":
        from breastscreen.serve.app import create_app

        return create_app
    if name == "ServeConfig":
        from breastscreen.serve.config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'breastscreen.serve' has no attribute {name!r}")
