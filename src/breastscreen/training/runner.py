"""``train()``: resolve a configuration, prepare the run directory and fit one model or an ensemble.

This is what ``breastscreen train`` and ``python -m breastscreen.training`` call.

Ensembles (``n_models > 1``): members are trained one after the other in
``RUN_DIR/member_K/`` (each a complete run directory, resumable on its own) with the same data
order and the same starting weights except for the fully connected layers, which member ``K``
initialises from seed ``seed + 1000 * (K + 1)``. ``RUN_DIR/ensemble.json`` lists the members'
best checkpoints (paths relative to the JSON file); ``breastscreen predict --model
RUN_DIR/ensemble.json`` averages them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from breastscreen.errors import BreastscreenError
from breastscreen.training.config import (
    TrainConfig,
    load_yaml,
    parse_overrides,
    resolve_config,
    save_config,
    to_dict,
)
from breastscreen.training.loop import (
    BEST_FILE,
    CONFIG_FILE,
    FitResult,
    RunDirError,
    dist_info_from_env,
    fit,
    prepare_run_dir,
)
from breastscreen.training.ensemble import ENSEMBLE_FILE, write_ensemble_manifest
from breastscreen.training.recipes import get_recipe
from breastscreen.utils import atomic_path, seed_everything

PLAN_FILE = "ensemble_plan.json"
PLAN_CONFIG_FILE = "ensemble_config.yaml"


@dataclass
class TrainOutcome:
    """Result of :func:`train`: one FitResult per model and the ensemble manifest, if any."""

    run_dir: Path
    results: list[FitResult] = field(default_factory=list)
    ensemble: Path | None = None

    @property
    def best_checkpoints(self) -> list[Path]:
        """The best checkpoint of every trained model."""
        return [r.run_dir / BEST_FILE for r in self.results]


def build_config(
    kind: str,
    manifest: str | None = None,
    val_manifest: str | None = None,
    out: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
) -> TrainConfig:
    """Resolve the configuration of a new run: recipe defaults, YAML file, explicit options, overrides."""
    recipe = get_recipe(kind)
    layers: list[dict[str, Any]] = []
    if config_file:
        layers.append(load_yaml(config_file))
    explicit = {k: v for k, v in {"manifest": manifest, "val_manifest": val_manifest, "out": out}.items() if v}
    layers.append(explicit)
    layers.append(dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    cfg = resolve_config({**recipe.defaults, "kind": kind}, recipe.options_cls, *layers)
    if cfg.kind != kind:
        raise BreastscreenError(f"the config file sets kind={cfg.kind!r} but the command trains {kind!r}")
    for name in ("manifest", "out"):
        if not getattr(cfg, name):
            raise BreastscreenError(f"--{name.replace('_', '-')} is required (or set {name}: in the config file)")
    for name in ("manifest", "val_manifest", "init_from"):
        value = getattr(cfg, name)
        if value and not Path(value).exists() and name != "init_from":
            raise BreastscreenError(f"{name} file not found: {value}")
    return cfg


def _resume_config(kind: str, run_dir: Path, overrides: Sequence[str] | dict[str, Any]) -> TrainConfig:
    recipe = get_recipe(kind)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"cannot resume: {path} does not exist")
    saved = load_yaml(path)
    if saved.get("kind") != kind:
        raise BreastscreenError(f"{run_dir} holds a {saved.get('kind')!r} run, not {kind!r}")
    extra = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides))
    cfg = resolve_config({}, recipe.options_cls, saved, extra)
    if extra:
        save_config(cfg, path)
    return cfg


def fit_one(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, member: int | None = None) -> FitResult:
    """Prepare ``cfg.out`` and fit one model (``member`` selects an ensemble copy's FC seed)."""
    recipe = get_recipe(cfg.kind)
    info = dist_info_from_env()
    run_dir = Path(cfg.out)
    if info.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    seed_everything(cfg.seed)
    task = recipe.build(cfg, info, member)
    return fit(task, cfg, resume=resume, info=info)


def train(
    kind: str,
    manifest: str | None = None,
    val_manifest: str | None = None,
    out: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    resume: str | Path | None = None,
    overwrite: bool = False,
    n_models: int = 1,
) -> TrainOutcome:
    """Train a model of ``kind`` (or an ensemble of ``n_models``), or resume the run at ``resume``.

    ``overrides`` are ``key=value`` strings (or a nested dict); on resume they may change
    options such as ``epochs`` or ``patience``, and the saved config.yaml is updated.
    """
    if n_models < 1:
        raise BreastscreenError(f"--n-models must be >= 1, got {n_models}")
    if resume:
        run_dir = Path(resume)
        ensemble = run_dir / ENSEMBLE_FILE
        if (run_dir / PLAN_FILE).exists():
            return _train_ensemble_resume(kind, run_dir, overrides)
        cfg = _resume_config(kind, run_dir, overrides)
        result = fit_one(cfg, resume=True)
        return TrainOutcome(run_dir=run_dir, results=[result], ensemble=ensemble if ensemble.exists() else None)

    cfg = build_config(kind, manifest, val_manifest, out, config_file, overrides)
    run_dir = Path(cfg.out)
    if n_models == 1:
        return TrainOutcome(run_dir=run_dir, results=[fit_one(cfg, overwrite=overwrite)])

    info = dist_info_from_env()
    if info.is_main:
        prepare_run_dir(run_dir, overwrite=overwrite)
        save_config(cfg, run_dir / PLAN_CONFIG_FILE)
        with atomic_path(run_dir / PLAN_FILE) as tmp:
            tmp.write_text(json.dumps({"kind": kind, "n_models": n_models}) + "\n", encoding="utf-8")
    return _train_members(kind, run_dir, cfg, n_models, overrides=(), resume=False)


def _train_members(
    kind: str, run_dir: Path, cfg: TrainConfig, n_models: int, overrides: Sequence[str] | dict[str, Any], resume: bool
) -> TrainOutcome:
    recipe = get_recipe(kind)
    outcome = TrainOutcome(run_dir=run_dir)
    for k in range(n_models):
        mdir = run_dir / f"member_{k}"
        if resume and (mdir / "state.pt").exists():
            outcome.results.append(fit_one(_resume_config(kind, mdir, overrides), resume=True, member=k))
            continue
        member_cfg = resolve_config({}, recipe.options_cls, to_dict(cfg), {"out": str(mdir)})
        outcome.results.append(fit_one(member_cfg, overwrite=resume, member=k))
    if dist_info_from_env().is_main:
        outcome.ensemble = write_ensemble_manifest(
            run_dir, outcome.best_checkpoints, {"kind": kind, "n_models": n_models, "differs_in": "fc_init"}
        )
    return outcome


def _train_ensemble_resume(kind: str, run_dir: Path, overrides: Sequence[str] | dict[str, Any]) -> TrainOutcome:
    plan = json.loads((run_dir / PLAN_FILE).read_text(encoding="utf-8"))
    if plan.get("kind") != kind:
        raise BreastscreenError(f"{run_dir} holds a {plan.get('kind')!r} ensemble, not {kind!r}")
    cfg = resolve_config({}, get_recipe(kind).options_cls, load_yaml(run_dir / PLAN_CONFIG_FILE))
    return _train_members(kind, run_dir, cfg, int(plan["n_models"]), overrides, resume=True)
