"""Training recipes: one per KIND (``patch``, ``birads``, ``breast``, and KINDs other stages add).

A recipe names its defaults (the paper's values), its options dataclass (``recipe.*`` keys of
the configuration) and a ``build(cfg, dist, member)`` function that returns the
:class:`~breastscreen.training.loop.TrainTask` to fit. ``member`` is the index of an ensemble
copy (``None`` for a single model); recipes pass it to :func:`reinit_fc_layers` so ensemble
members differ only in the initialisation of their fully connected layers.

Other stages register their KINDs with :func:`register_recipe` in a module listed in
``RECIPE_MODULES`` (modules that are not installed are skipped).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from breastscreen.errors import BreastscreenError

RECIPE_MODULES: tuple[str, ...] = (
    "breastscreen.training.recipes.patch",
    "breastscreen.training.recipes.birads",
    "breastscreen.training.recipes.breast",
    "breastscreen.training.recipes.us",
    "breastscreen.training.recipes.wholeimage",
    "breastscreen.training.recipes.context",
    "breastscreen.training.recipes.lesion",
)


@dataclass(frozen=True)
class Recipe:
    """A training KIND: defaults, options class and task builder."""

    kind: str
    description: str
    options_cls: type
    defaults: dict[str, Any]
    build: Callable[..., Any]
    metric_help: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> None:
    """Add a KIND; registering the same KIND twice is an error."""
    if recipe.kind in _RECIPES:
        raise ValueError(f"training KIND {recipe.kind!r} is already registered")
    _RECIPES[recipe.kind] = recipe


def _load_all() -> None:
    for name in RECIPE_MODULES:
        parent = name.rsplit(".", 1)[0]
        if importlib.util.find_spec(parent) is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name)


def recipe_kinds() -> list[str]:
    """Registered KINDs, sorted."""
    _load_all()
    return sorted(_RECIPES)


def get_recipe(kind: str) -> Recipe:
    """The recipe of ``kind``; unknown KINDs raise a BreastscreenError suggesting the closest."""
    _load_all()
    if kind not in _RECIPES:
        close = difflib.get_close_matches(kind, list(_RECIPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BreastscreenError(f"unknown training KIND {kind!r}{hint}; choose from {', '.join(sorted(_RECIPES))}")
    return _RECIPES[kind]


def reinit_fc_layers(model: nn.Module, seed: int) -> list[str]:
    """Re-initialise every fully connected (``nn.Linear``) layer from a generator seeded ``seed``.

    Used for ensemble members: the convolutional columns keep their (pretrained or seeded)
    weights and only the FC layers differ. Returns the names of the re-initialised modules.
    The global torch RNG is forked, so the caller's random stream is unchanged.
    """
    names = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
                names.append(name)
    if not names:
        raise BreastscreenError(f"{type(model).__name__} has no fully connected layer to re-initialise for an ensemble")
    return names
