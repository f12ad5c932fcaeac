"""Random hyper-parameter search: ``breastscreen search KIND --trials N --space space.yaml``.

The space file maps configuration keys (dotted, as in ``key=value`` overrides) to one of

* ``{low: A, high: B, scale: log}``    -> ``10 ** uniform(log10 A, log10 B)``
* ``{low: A, high: B, scale: linear}`` -> ``uniform(A, B)``
* ``{low: A, high: B, scale: int}``    -> an integer uniform in ``[A, B]``
* ``{choices: [a, b, ...]}``           -> one of the values

Trial ``i`` draws its parameters from a generator seeded with ``(seed, i)``, so a search is
reproducible and can be extended or resumed. Every trial is a normal run directory
``OUT/trial_NNN`` (all with the base configuration's seed, so trials differ only in the sampled
parameters); trials are ranked by the best validation value of the monitored metric, and the
top ``k`` form ``OUT/ensemble.json`` (as the ultrasound paper ensembles its best trials).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastscreen.errors import BreastscreenError
from breastscreen.training.config import ConfigError, load_yaml, merge, parse_overrides
from breastscreen.training.loop import STATE_FILE, RunDirError, dist_info_from_env, prepare_run_dir
from breastscreen.training.runner import build_config, fit_one, write_ensemble_manifest
from breastscreen.utils import atomic_path

SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter."""

    name: str
    scale: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def sample(self, rng: np.random.Generator) -> Any:
        """Draw one value."""
        if self.scale == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.scale == "log":
            return float(10 ** rng.uniform(math.log10(self.low), math.log10(self.high)))
        if self.scale == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return float(rng.uniform(self.low, self.high))


def parse_space(data: dict[str, Any], source: str = "space") -> list[ParamSpec]:
    """Validate a search-space mapping (see the module docstring) into :class:`ParamSpec` objects."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: the search space must be a non-empty mapping of parameter -> spec")
    specs = []
    for name, spec in data.items():
        where = f"{source}: {name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: spec must be a mapping like {{low: 1e-5, high: 1e-3, scale: log}}, got {spec!r}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
            specs.append(ParamSpec(str(name), "choice", choices=tuple(choices)))
            continue
        scale = spec.get("scale", "linear")
        if scale not in ("log", "linear", "int"):
            raise ConfigError(f"{where}: scale must be log, linear or int, got {scale!r}")
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: needs numeric low and high, got {spec!r}") from None
        if not low <= high:
            raise ConfigError(f"{where}: low must be <= high, got low={low}, high={high}")
        if scale == "log" and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
        specs.append(ParamSpec(str(name), scale, low, high))
    return specs


def sample_trial(specs: Sequence[ParamSpec], seed: int, trial: int) -> dict[str, Any]:
    """Parameters of trial ``trial`` (flat dotted keys), reproducible from ``(seed, trial)``."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(trial), 0x5EA4C4])
    return {s.name: s.sample(rng) for s in specs}


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class SearchResult:
    """Outcome of :func:`run_search`."""

    out: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    ranked: list[dict[str, Any]] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    ensemble: Path | None = None


def run_search(
    kind: str,
    space_file: str | Path,
    trials: int,
    out: str | Path,
    manifest: str | None = None,
    val_manifest: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    top_k: int = 3,
    seed: int = 0,
    resume: bool = False,
) -> SearchResult:
    """Train ``trials`` randomly configured runs of ``kind`` and keep the best ``top_k`` as an ensemble."""
    if trials < 1:
        raise BreastscreenError(f"--trials must be >= 1, got {trials}")
    if top_k < 1:
        raise BreastscreenError(f"--top-k must be >= 1, got {top_k}")
    specs = parse_space(load_yaml(space_file), str(space_file))
    out = Path(out)
    info = dist_info_from_env()
    if info.is_main:
        if resume:
            if not (out / SEARCH_FILE).is_file():
                raise RunDirError(f"cannot resume: {out / SEARCH_FILE} does not exist")
        else:
            prepare_run_dir(out)
    base = merge({}, parse_overrides(list(overrides)))
    result = SearchResult(out=out)
    if info.is_main and not resume:
        _write_search(out, kind, specs, result, seed, top_k)  # marks OUT as a search directory
    for i in range(trials):
        params = sample_trial(specs, seed, i)
        run_dir = out / f"trial_{i:03d}"
        cfg = build_config(kind, manifest, val_manifest, str(run_dir), config_file, merge(base, _nested(params)))
        finished_before = resume and (run_dir / STATE_FILE).is_file()
        res = fit_one(cfg, resume=finished_before, overwrite=resume and not finished_before and run_dir.exists())
        value = res.best_value if res.best_value is not None else float("nan")
        result.trials.append({
            "trial": run_dir.name, "params": params, "metric": cfg.monitor, "mode": cfg.monitor_mode,
            "value": value, "best_epoch": res.best_epoch, "checkpoint": str(res.run_dir / "best.safetensors"),
        })
        if info.is_main:
            _write_search(out, kind, specs, result, seed, top_k)
    mode = result.trials[0]["mode"]
    valid = [t for t in result.trials if not math.isnan(t["value"])]
    result.ranked = sorted(valid, key=lambda t: t["value"], reverse=(mode == "max"))
    result.top = result.ranked[:top_k]
    if info.is_main:
        if not result.top:
            raise BreastscreenError("no trial produced a validation value; nothing to ensemble")
        result.ensemble = write_ensemble_manifest(
            out, [Path(t["checkpoint"]) for t in result.top],
            {"kind": kind, "n_models": len(result.top), "differs_in": "hyper-parameters (search)",
             "trials": [t["trial"] for t in result.top]},
        )
        _write_search(out, kind, specs, result, seed, top_k)
    return result


def _write_search(out: Path, kind: str, specs: Sequence[ParamSpec], result: SearchResult, seed: int, top_k: int) -> None:
    data = {
        "kind": kind,
        "seed": seed,
        "top_k": top_k,
        "space": [{"name": s.name, "scale": s.scale, "low": s.low, "high": s.high, "choices": list(s.choices)} for s in specs],
        "trials": result.trials,
        "ranking": [t["trial"] for t in result.ranked],
    }
    with atomic_path(out / SEARCH_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    with atomic_path(out / "search.csv") as tmp:
        names = [s.name for s in specs]
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["trial", *names, "metric", "value", "best_epoch"])
            for t in result.trials:
                w.writerow([t["trial"], *[t["params"][n] for n in names], t["metric"], t["value"], t["best_epoch"]])
