"""Allowed ranges of model configs and checkpoint metadata read from files, checked before anything is built.

A checkpoint header is user input: ``num_classes`` 2e9 or ``growth_rate`` 1e5 would make
``create_model`` allocate gigabytes (or hang) before strict key matching could object, and a
non-numeric ``patch_size`` would fail deep inside inference. :func:`check_config` checks every
field of a stored config against the type of the architecture's default and the ranges below
(and recursively the ``trunk_overrides`` of composite models); :func:`check_size` then builds
the model on PyTorch's ``meta`` device (no memory) to compare its parameter count and tensor
shapes with the file; :func:`check_metadata` checks the documented metadata keys.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from breastscreen.errors import CheckpointError

# Closed ranges of config fields, by name (shared by the architectures that use the name).
FIELD_LIMITS: dict[str, tuple[float, float]] = {
    "num_classes": (1, 1000), "growth_rate": (1, 512), "num_init_features": (1, 4096), "bn_size": (1, 16),
    "embedding_dim": (0, 8192), "in_channels": (1, 16), "stem_channels": (1, 16), "input_size": (8, 16384),
    "input_size_cc": (8, 16384), "input_size_mlo": (8, 16384), "num_filters": (1, 2048), "width": (1, 8192),
    "hidden": (1, 16384), "fc_hidden": (1, 16384), "attention_hidden": (1, 16384), "padding": (0, 64),
    "top_stride": (1, 64), "block_config": (1, 256), "layers": (1, 256), "blocks_per_layer": (1, 64),
    "stage_convs": (1, 64), "stage_widths": (1, 16384), "grid_size": (1, 4096), "heatmap_pool_size": (1, 4096),
    "layer_strides": (1, 64), "top_blocks": (1, 16384), "first_kernel": (1, 64), "first_stride": (1, 64),
    "first_padding": (0, 64), "pool_kernel": (1, 64), "pool_stride": (1, 64), "pool_padding": (0, 64),
    "growth_factor": (1, 16), "compression": (0.01, 1.0), "drop_rate": (0.0, 0.99), "dropout": (0.0, 0.99),
    "noise_std": (0.0, 10.0), "top_t": (1e-6, 1.0), "width_multiplier": (0.01, 16.0),
}
DEFAULT_INT_LIMITS = (0, 65536)
DEFAULT_FLOAT_LIMITS = (-1e6, 1e6)
MAX_SEQUENCE_ITEMS = 64
MAX_TEXT = 256
# Far above the largest published model here (VGG-16, 138 M); a bigger one is a hostile config.
MAX_PARAMETERS = 1_000_000_000


def _check_value(value: Any, default: Any, key: str, where: str, depth: int = 0) -> None:
    lo, hi = FIELD_LIMITS.get(key.split(".")[0], (None, None))
    if depth > 4:
        raise CheckpointError(f"{where}: config field {key} is nested too deeply")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CheckpointError(f"{where}: config field {key} must be true or false, got {value!r}")
        return
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{where}: config field {key} must be an integer, got {str(value)[:40]!r}")
        lo, hi = (lo, hi) if lo is not None else DEFAULT_INT_LIMITS
        if not lo <= value <= hi:
            raise CheckpointError(f"{where}: config field {key} must be in [{lo:g}, {hi:g}], got {value}")
        return
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise CheckpointError(f"{where}: config field {key} must be a finite number, got {str(value)[:40]!r}")
        lo, hi = (lo, hi) if lo is not None else DEFAULT_FLOAT_LIMITS
        if not lo <= float(value) <= hi:
            raise CheckpointError(f"{where}: config field {key} must be in [{lo:g}, {hi:g}], got {value}")
        return
    if isinstance(default, str):
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise CheckpointError(f"{where}: config field {key} must be a short text, got {str(value)[:40]!r}")
        return
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_SEQUENCE_ITEMS:
            raise CheckpointError(f"{where}: config field {key} must be a list of at most {MAX_SEQUENCE_ITEMS} items, "
                                  f"got {str(value)[:60]!r}")
        template = default[0] if default else 0
        for i, item in enumerate(value):
            _check_value(item, template, key, where, depth + 1)
        return
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: config field {key} must be an object, got {str(value)[:40]!r}")
        return  # checked against the sub-model's own config by check_config
    if default is None:
        return  # optional field: the builder validates what it receives


def check_config(name: str, config: Any, where: str, depth: int = 0) -> dict[str, Any]:
    """Check a stored config of model ``name`` (see module doc); return it as a dict.

    Raises :class:`CheckpointError` naming ``where``, the field, the rule and the value.
    """
    from breastscreen.models.registry import get_entry

    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    entry = get_entry(name)
    defaults = {f.name: getattr(entry.default_config, f.name) for f in dataclasses.fields(entry.default_config)}
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise CheckpointError(f"{where}: model {name!r} has no config field(s) {unknown}; valid: {sorted(defaults)}")
    for key, value in config.items():
        _check_value(value, defaults[key], key, where)
    trunk = config.get("trunk", defaults.get("trunk"))
    if isinstance(config.get("trunk_overrides"), dict) and isinstance(trunk, str) and depth < 2:
        try:
            check_config(trunk, config["trunk_overrides"], f"{where} (trunk {trunk})", depth + 1)
        except KeyError as exc:
            raise CheckpointError(f"{where}: {exc.args[0]}") from None
    return dict(config)


def check_size(name: str, config: dict[str, Any], state: dict[str, Any], where: str) -> None:
    """Build ``name`` on the meta device (no memory) and refuse it when it is implausibly large or
    its tensor shapes differ from ``state`` (the weights in the file) — before any real allocation."""
    import torch

    from breastscreen.models.registry import count_parameters, create_model

    try:
        with torch.device("meta"):
            model = create_model(name, **config)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild model {name!r} from its config: {exc}") from None
    n = count_parameters(model, trainable_only=False)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: the config makes a model of {n:,} parameters, above the limit of "
                              f"{MAX_PARAMETERS:,} (refused before building it)")
    from breastscreen.models.checkpoint import check_state_dict

    check_state_dict(model, state, where)


def _number(meta: dict[str, Any], key: str, where: str, lo: float, hi: float, integer: bool = False) -> None:
    if key not in meta or meta[key] is None:
        return
    v = meta[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    if ok and integer:
        ok = float(v).is_integer()
    if not ok or not lo <= float(v) <= hi:
        kind = "an integer" if integer else "a number"
        raise CheckpointError(f"{where}: metadata {key} must be {kind} in [{lo:g}, {hi:g}], got {str(v)[:40]!r}")


def _sizes_ok(value: Any, depth: int = 0) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 1 <= value <= 16384
    if depth < 2 and isinstance(value, list) and 1 <= len(value) <= 8:
        return all(_sizes_ok(v, depth + 1) for v in value)
    if depth < 1 and isinstance(value, dict) and 1 <= len(value) <= 8:
        return all(isinstance(k, str) and _sizes_ok(v, depth + 1) for k, v in value.items())
    return False


def check_metadata(meta: Any, where: str) -> dict[str, Any]:
    """Check the metadata keys a later stage reads (scale, patch size and stride, input size,
    classes, patch model); other keys are free-form. Returns the metadata."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    _number(meta, "scale", where, 1e-3, 16.0)
    _number(meta, "patch_size", where, 1, 4096, integer=True)
    _number(meta, "patch_stride", where, 1, 4096, integer=True)
    if meta.get("patch_size") and meta.get("patch_stride") and meta["patch_stride"] > meta["patch_size"]:
        raise CheckpointError(f"{where}: metadata patch_stride {meta['patch_stride']} exceeds patch_size {meta['patch_size']}")
    size = meta.get("input_size")
    if size is not None and not _sizes_ok(size):
        raise CheckpointError(f"{where}: metadata input_size must be integers in [1, 16384] (one, a list, or a "
                              f"list per view), got {str(size)[:60]!r}")
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) > 64
                                or not all(isinstance(c, str) and len(c) <= 64 for c in classes)):
        raise CheckpointError(f"{where}: metadata classes must be a list of short texts, got {str(classes)[:60]!r}")
    ref = meta.get("patch_model")
    if ref is not None and (not isinstance(ref, str) or len(ref) > 4096):
        raise CheckpointError(f"{where}: metadata patch_model must be a checkpoint path or name, got {str(ref)[:60]!r}")
    return meta
