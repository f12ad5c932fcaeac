"""Training configuration: dataclasses resolved from defaults, a YAML file and ``key=value`` overrides.

Resolution order (later wins): the recipe's defaults for the KIND (the papers' values), the
YAML file given with ``--config``, then command-line overrides such as ``lr=3e-5`` or
``recipe.patience=10``. Keys of the recipe's own options may be given without the
``recipe.`` prefix when they do not clash with a generic key. The resolved configuration is
written to ``RUN_DIR/config.yaml`` and is enough to repeat the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from breastscreen.errors import BreastscreenError


class ConfigError(BreastscreenError):
    """A configuration file or override breaks the documented format."""


@dataclass
class TrainConfig:
    """Options shared by every training KIND (recipe-specific options live in ``recipe``).

    ``epochs`` is the maximum number of epochs; early stopping on ``monitor`` (higher is
    better when ``monitor_mode`` is ``max``) ends the run sooner when ``patience`` epochs pass
    without an improvement larger than ``min_delta``. ``patience <= 0`` disables early stopping.
    """

    kind: str = "breast"
    manifest: str = ""
    val_manifest: str = ""
    out: str = ""
    model: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    grad_accum: int = 1
    monitor: str = "val_auc"
    monitor_mode: str = "max"
    patience: int = 20
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    val_batch_size: int = 0
    max_train_batches: int = 0
    max_val_batches: int = 0
    cache_mb: int = 2048
    progress: bool = True
    recipe: Any = None

    def __post_init__(self) -> None:
        if self.monitor_mode not in ("max", "min"):
            raise ConfigError(f"monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip", "min_delta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("num_workers", "val_batch_size", "max_train_batches", "max_val_batches", "cache_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML-parsed ``value`` to the field type ``tp`` or raise a ConfigError naming ``key``."""
    tp = _strip_optional(tp)
    if value is None:
        return None
    if tp is Any:
        return value
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return build_dataclass(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        kt, vt = (typing.get_args(tp) or (Any, Any))
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return seq if origin is list else tuple(seq)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


_RULES = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
          "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def bounded(default: Any, **rules: float) -> Any:
    """A dataclass field with declarative range rules (``ge``, ``gt``, ``le``, ``lt``) that
    :func:`build_dataclass` checks, naming the key, the rule and the value received."""
    unknown = set(rules) - set(_RULES)
    if unknown:
        raise TypeError(f"unknown rule(s) {sorted(unknown)}; use {sorted(_RULES)}")
    return field(default=default, metadata={"rules": rules})


def check_rules(value: Any, rules: Mapping[str, float], key: str) -> None:
    """Raise ConfigError when ``value`` breaks one of ``rules`` (None is left to the type)."""
    if value is None:
        return
    for name, bound in rules.items():
        test, symbol = _RULES[name]
        if not test(value, bound):
            raise ConfigError(f"{key} must be {symbol} {bound}, got {value!r}")


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, coercing types and rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls) if f.init}
    names = list(by_name)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown option {prefix}{key}{_suggest(key, names)}; valid: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        check_rules(kwargs[key], by_name[key].metadata.get("rules", {}), f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list form of a config (for YAML and checkpoint metadata)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (dotted keys nest) into a nested dict; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override must look like key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"override has an empty key: {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse value of override {item!r}: {exc}") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (an empty file gives an empty dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of options, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "model_args":
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _route_bare_recipe_keys(values: dict[str, Any], recipe_cls: type | None) -> dict[str, Any]:
    """Move keys that only the recipe options know (e.g. ``heatmaps=DIR``) under ``recipe``."""
    if recipe_cls is None:
        return values
    generic = {f.name for f in fields(TrainConfig)}
    recipe_names = {f.name for f in fields(recipe_cls)}
    out = dict(values)
    for key in list(out):
        if key not in generic and key in recipe_names:
            out.setdefault("recipe", {})
            if not isinstance(out["recipe"], dict):
                raise ConfigError(f"recipe must be a mapping, got {out['recipe']!r}")
            out["recipe"] = {**out["recipe"], key: out.pop(key)}
    return out


def resolve_config(
    defaults: Mapping[str, Any],
    recipe_cls: type | None,
    *layers: Mapping[str, Any],
) -> TrainConfig:
    """Build a :class:`TrainConfig` from ``defaults`` overlaid by ``layers`` (YAML, then CLI)."""
    values: dict[str, Any] = dict(defaults)
    if recipe_cls is not None:
        # Start from the recipe dataclass defaults so nested mappings (class compositions)
        # are merged key by key rather than replaced by a partial override.
        values = merge({"recipe": to_dict(recipe_cls())}, _route_bare_recipe_keys(values, recipe_cls))
    for layer in layers:
        values = merge(values, _route_bare_recipe_keys(dict(layer), recipe_cls))
    recipe_values = values.pop("recipe", None) or {}
    if recipe_cls is not None and not isinstance(recipe_values, Mapping):
        raise ConfigError(f"recipe must be a mapping, got {recipe_values!r}")
    cfg = build_dataclass(TrainConfig, values)
    if recipe_cls is not None:
        cfg.recipe = build_dataclass(recipe_cls, recipe_values, prefix="recipe.")
    elif recipe_values:
        raise ConfigError(f"KIND {cfg.kind!r} takes no recipe options, got {dict(recipe_values)}")
    return cfg


def config_from_dict(data: Mapping[str, Any], recipe_cls: type | None) -> TrainConfig:
    """Rebuild a resolved config written by :func:`save_config` (used by ``--resume``)."""
    return resolve_config({}, recipe_cls, data)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    from breastscreen.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with some generic fields changed (the recipe options are copied)."""
    return dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe) if cfg.recipe is not None else None, **changes)
