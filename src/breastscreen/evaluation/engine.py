"""The bootstrap engine and the assembly of its results into the metrics.json dictionary.

Sections of an evaluation register *jobs* (a metrics path, the cluster index of each case and
a function of the resample weights) with one :class:`BootstrapEngine`; the engine evaluates
every job on the data and on the same bootstrap resamples, so CIs of differences are paired.
Values that need no resampling are collected as ``extra`` entries and placed after the run.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from breastscreen.evaluation.stats import Resampler, percentile_interval

__all__ = [
    "Job",
    "ClusterIndex",
    "BootstrapEngine",
    "finite_or_none",
    "ci_entry",
    "assemble",
    "merge",
    "jsonable",
]

#: A metric job: ``None`` → point estimates, an ``(n_resamples, n_cases)`` weight matrix →
#: one value per resample; keys are ``/``-separated paths below the job's own path.
Job = Callable[[np.ndarray | None], dict[str, np.ndarray]]
#: Maps a units frame (and an optional row mask) to the resampler's cluster index per row.
ClusterIndex = Callable[..., np.ndarray]

_COUNT_KEYS = {"tp", "fp", "tn", "fn"}


class BootstrapEngine:
    """Collects metric jobs, evaluates each on the data and on every bootstrap resample."""

    def __init__(self, resampler: Resampler | None, confidence: float) -> None:
        self.resampler = resampler
        self.confidence = confidence
        self.jobs: list[tuple[tuple[str, ...], np.ndarray, Job]] = []

    def add(self, path: tuple[str, ...], clusters: np.ndarray, fn: Job) -> int:
        """Register ``fn`` for the cases whose cluster indices are ``clusters``; return its job number."""
        self.jobs.append((path, clusters, fn))
        return len(self.jobs) - 1

    def run(self) -> list[dict[str, tuple[float, np.ndarray | None]]]:
        """Per job: ``{name: (point estimate, resampled values or None)}``, in registration order."""
        results: list[dict[str, tuple[float, np.ndarray | None]]] = []
        points = [{k: float(np.asarray(v)[0]) for k, v in fn(None).items()} for _, _, fn in self.jobs]
        samples: list[dict[str, list[np.ndarray]]] = [{k: [] for k in p} for p in points]
        if self.resampler is not None:
            counts = self.resampler.counts()
            # Chunks bound the memory of the weight matrices; every job sees the same chunk.
            for start in range(0, self.resampler.n_resamples, self.resampler.chunk):
                block = counts[start:start + self.resampler.chunk]
                for j, (_, clusters, fn) in enumerate(self.jobs):
                    W = block[:, clusters]  # small integer counts; metrics convert after sorting
                    for k, v in fn(W).items():
                        samples[j][k].append(np.asarray(v, dtype=float))
        for j, p in enumerate(points):
            res = {}
            for k, v in p.items():
                res[k] = (v, np.concatenate(samples[j][k]) if samples[j][k] else None)
            results.append(res)
        return results


def finite_or_none(x: Any) -> float | None:
    """``float(x)``, or ``None`` when it is NaN or infinite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def ci_entry(value: float, samples: np.ndarray | None, confidence: float) -> dict[str, Any]:
    """``{"value"}`` plus the percentile CI and the number of failed resamples when resampled."""
    out: dict[str, Any] = {"value": finite_or_none(value)}
    if samples is not None:
        lo, hi = percentile_interval(samples, confidence)
        out["ci_low"], out["ci_high"] = finite_or_none(lo), finite_or_none(hi)
        out["n_failed"] = int((~np.isfinite(samples)).sum())
    return out


def _set(d: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def _place(metrics: dict[str, Any], path: tuple[str, ...], res: dict[str, tuple[float, np.ndarray | None]],
           confidence: float) -> None:
    for name, (value, samples) in res.items():
        parts = tuple(name.split("/"))
        # Confusion counts are reported as plain numbers: a CI of a count is not meaningful.
        if parts[-1] in _COUNT_KEYS:
            _set(metrics, path + parts, finite_or_none(value))
        else:
            _set(metrics, path + parts, ci_entry(value, samples, confidence))


def assemble(metrics: dict[str, Any], engine: BootstrapEngine, results: list[dict[str, tuple[float, np.ndarray | None]]],
             extra: list[tuple[tuple[str, ...], Any]]) -> None:
    """Place the engine's ``results`` and then the ``extra`` ``(path, value)`` entries into ``metrics``.

    Extras come second so that counts and chosen thresholds merge into the entries of the jobs.
    """
    for (path, _, _), res in zip(engine.jobs, results):
        inner: dict[str, Any] = {}
        _place(inner, (), res, engine.confidence)
        target = metrics
        for p in path:
            target = target.setdefault(p, {})
        merge(target, inner)
    for path, value in extra:
        target = metrics
        for p in path[:-1]:
            target = target.setdefault(p, {})
        if isinstance(value, dict) and isinstance(target.get(path[-1]), dict):
            merge(target[path[-1]], value)
        else:
            target[path[-1]] = jsonable(value)


def merge(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Recursively merge ``b`` into ``a`` (values of ``b`` win unless both are dictionaries)."""
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v


def jsonable(o: Any) -> Any:
    """``o`` with NumPy scalars/arrays and tuples turned into JSON types and non-finite floats into ``None``."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return finite_or_none(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def format_estimate(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.812 [0.750, 0.870]`` from a metrics.json estimate (``value``, ``ci_low``, ``ci_high``); ``n/a`` when undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    s = f"{entry['value']:.{digits}f}"
    if entry.get("ci_low") is not None:
        s += f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    return s
