"""One registry for every architecture: ``create_model(name, **overrides)`` and ``list_models()``.

Each architecture file registers its named variants with :func:`register_model`, giving a builder
that takes a config dataclass, the variant's default config, a description and a default input
size. ``create_model`` copies the default config, applies the overrides (unknown fields are an
error naming the valid ones) and calls the builder.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# Architecture modules, imported on first registry use so that every variant is registered.
_ARCHITECTURE_MODULES: tuple[str, ...] = (
    "breastscreen.models.nyu_multiview",
    "breastscreen.models.mvdcn",
    "breastscreen.models.densenet",
    "breastscreen.models.resnet",
    "breastscreen.models.vgg",
    "breastscreen.models.gmic_global",
    "breastscreen.models.lesion_agg",
    "breastscreen.models.allconv",
    "breastscreen.models.us_mil",
)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model variant."""

    name: str
    builder: Callable[[Any], nn.Module]
    default_config: Any
    description: str
    input_size: str
    task: str
    tiny_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What ``list_models`` reports about one registered variant."""

    name: str
    params: int
    input_size: str
    task: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: Callable[[Any], nn.Module],
    default_config: Any,
    description: str,
    input_size: str,
    task: str,
    tiny_overrides: dict[str, Any] | None = None,
) -> None:
    """Register a named variant; registering the same name twice is an error.

    ``tiny_overrides`` are config overrides that keep the architecture but make it cheap enough for
    the registry-wide CPU test (narrower widths, same-padding); they are never applied implicitly.
    """
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered ({_REGISTRY[name].description!r})")
    if not dataclasses.is_dataclass(default_config):
        raise TypeError(f"default_config of {name!r} must be a dataclass instance, got {type(default_config)!r}")
    _REGISTRY[name] = ModelEntry(name, builder, default_config, description, input_size, task, dict(tiny_overrides or {}))


def _ensure_loaded() -> None:
    for module in _ARCHITECTURE_MODULES:
        importlib.import_module(module)


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"unknown model {name!r}{hint} (run `breastscreen models list` for all names)")


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise ``KeyError`` suggesting the closest."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def _coerce(value: Any, default: Any) -> Any:
    # Configs travel through JSON (checkpoint headers): lists come back where tuples were.
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(_coerce(v, default[0] if default else None) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def make_config(name: str, **overrides: Any) -> Any:
    """The default config of ``name`` with ``overrides`` applied (unknown fields are an error)."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.default_config)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"model {name!r} has no config field(s) {bad}; valid fields: {sorted(fields)}")
    defaults = dataclasses.asdict(entry.default_config)
    coerced = {k: _coerce(v, defaults[k]) for k, v in overrides.items()}
    return dataclasses.replace(entry.default_config, **coerced)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` with its default config updated by ``overrides``.

    The returned module has ``.config`` (the dataclass used) and ``.model_name`` (``name``).
    """
    entry = get_entry(name)
    config = make_config(name, **overrides)
    model = entry.builder(config)
    model.model_name = name
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; shared modules are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_model_parameters(name: str, **overrides: Any) -> int:
    """Trainable parameters of a registered model, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return count_parameters(model)


def list_models() -> list[ModelInfo]:
    """Every registered variant (sorted by name) with its parameter count and default input size."""
    _ensure_loaded()
    return [
        ModelInfo(e.name, count_model_parameters(e.name), e.input_size, e.task, e.description)
        for e in sorted(_REGISTRY.values(), key=lambda e: e.name)
    ]


def model_names() -> list[str]:
    """Registered names, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)
