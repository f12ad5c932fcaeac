"""Training: configs, samplers, losses, the shared fit loop (resume, early stopping, DDP) and the papers' recipes.

Entry points: :func:`breastscreen.training.runner.train` (``breastscreen train``),
:func:`breastscreen.training.search.run_search` (``breastscreen search``) and
:func:`breastscreen.training.loop.fit` for custom tasks. See docs/training.md.
"""
