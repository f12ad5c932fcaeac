"""Helpers of the BUS-BRA cross-validation runner (:mod:`breastscreen.ultrasound.busbra`).

* :func:`spec_from_overrides`: the :class:`~breastscreen.specs.USSpec` that ``breastscreen train
  us`` builds from a list of ``KEY=VALUE`` options, so the runner can measure the crop guarantee
  and prepare images exactly as training will;
* :func:`prebuild_cache`: every image prepared once into the shared cache file before parallel
  folds start (two workers would otherwise both prepare everything);
* :func:`run_folds`: folds one after another, or in ``jobs`` worker processes with ``threads``
  torch/OpenCV threads each (two single-threaded folds on a 2-core machine use both cores;
  PyTorch's intra-op threading gains little on small convolutions).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

from breastscreen.data.bags import Breast
from breastscreen.data.types import Exam
from breastscreen.specs import USSpec


def spec_from_overrides(overrides: Sequence[str]) -> USSpec:
    """The ultrasound spec that ``breastscreen train us`` would build from ``overrides``."""
    from breastscreen.errors import BreastscreenError
    from breastscreen.training.config import parse_overrides, resolve_config
    from breastscreen.training.recipes import get_recipe

    recipe = get_recipe("us")
    cfg = resolve_config({**recipe.defaults, "kind": "us"}, recipe.options_cls, parse_overrides(list(overrides)))
    o = cfg.recipe
    try:
        return USSpec(input_size=o.input_size, prepare_size=o.prepare_size, augment_strength=o.augment_strength,
                      remove_annotations=o.remove_annotations, crop=o.crop)
    except ValueError as exc:
        raise BreastscreenError(f"train us options do not make a valid ultrasound spec: {exc}") from None


def prebuild_cache(breasts: Sequence[Breast], spec: USSpec, cache_path: str | Path,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prepare every image of ``breasts`` into ``cache_path`` (extending a matching cache); returns the exclusion report."""
    from breastscreen.errors import BreastscreenError
    from breastscreen.training.bag_dataset import ImageCache, build_cache

    existing = None
    if Path(cache_path).is_file():
        try:
            existing = ImageCache.load(cache_path)
        except BreastscreenError:
            existing = None  # another cache version: rebuilt
    t0 = time.time()
    cache, report = build_cache([im for b in breasts for im in b.images], spec, existing=existing)
    cache.save(cache_path)
    if log is not None:
        log(f"prepared-image cache: {len(cache)} images ({time.time() - t0:.0f} s), "
            f"{report.as_dict()['n_excluded']} excluded -> {cache_path}")
    return report.as_dict()


def _init_worker(threads: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _worker_log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_folds(tasks: Sequence[tuple[int, Path, int]], breasts: Sequence[Breast], exams: Sequence[Exam],
              overrides: Sequence[str], val_fraction: float, normal_ids: frozenset[str], jobs: int = 1,
              threads: int = 1, log: Callable[[str], None] | None = None,
              on_done: Callable[[Path], None] | None = None) -> list[dict[str, Any]]:
    """Run :func:`~breastscreen.ultrasound.busbra.run_fold` for every ``(fold, fold_dir, seed)``; results in task order.

    ``on_done(fold_dir)`` is called in this process as soon as each fold has finished (e.g. to
    archive it), not only when all have.
    """
    from breastscreen.errors import BreastscreenError
    from breastscreen.ultrasound.busbra import run_fold

    if jobs < 1 or threads < 1:
        raise BreastscreenError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    if jobs == 1:
        results = []
        for f, d, s in tasks:
            results.append(run_fold(f, breasts, exams, d, overrides, val_fraction, s, log, normal_ids))
            if on_done is not None:
                on_done(d)
        return results
    # spawn: a forked child would inherit the parent's torch thread pool state.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run_fold, f, list(breasts), list(exams), d, list(overrides), val_fraction, s,
                               _worker_log, normal_ids) for f, d, s in tasks]
        if on_done is not None:
            dirs = {fut: d for fut, (_, d, _) in zip(futures, tasks)}
            for fut in as_completed(futures):
                if fut.exception() is None:
                    on_done(dirs[fut])
        return [fut.result() for fut in futures]


def time_training_batches(width: int, input_size: int, prepare_size: int, batch_size: int = 16, n_batches: int = 6,
                          images_per_bag: float = 1.75, top_t: float = 0.2, beta: float = 0.03,
                          augment_strength: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Seconds per training batch and per validation batch of ``train us`` at this size, under the
    calling process's thread settings.

    A training batch = the spec's augmented input building for ``batch_size`` bags of one or two
    images (``images_per_bag`` on average), padding, forward, the paper's loss, backward and an
    Adam step; a validation batch = un-augmented inputs and a forward pass. Random prepared
    images: the cost does not depend on the pixels. The first batch of each kind (warm-up) is not
    counted.
    """
    import numpy as np
    import torch

    from breastscreen.models import create_model
    from breastscreen.specs import PreparedImage
    from breastscreen.training.bag_dataset import collate_bags
    from breastscreen.training.losses import us_mil_loss

    if not 1.0 <= images_per_bag <= 2.0 or n_batches < 1:
        raise ValueError(f"images_per_bag must be in [1, 2] and n_batches >= 1, got {images_per_bag}, {n_batches}")
    rng = np.random.default_rng(seed)
    model = create_model("us-mil", width=width, input_size=input_size, top_t=top_t)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    spec = USSpec(input_size=input_size, prepare_size=prepare_size, augment_strength=augment_strength)
    pool = [PreparedImage(rng.integers(0, 256, (prepare_size, prepare_size)).astype(np.float32), {}, None, f"r{i}")
            for i in range(4)]

    def batch(train: bool) -> dict[str, Any]:
        sizes = 1 + (rng.random(batch_size) < images_per_bag - 1.0)
        items = [{"images": torch.from_numpy(spec.bag_input(pool[:k], rng if train else None)), "index": i,
                  "image_ids": [], "labels": torch.tensor(rng.integers(0, 2, 2), dtype=torch.float32)}
                 for i, k in enumerate(sizes)]
        return collate_bags(items)

    times: dict[str, list[float]] = {"train": [], "val": []}
    for step in range(n_batches + 1):
        t0 = time.perf_counter()
        model.train()
        b = batch(True)
        out = model(b["images"], b["mask"])
        loss = us_mil_loss(out, b["labels"], b["mask"], beta)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times["train"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            b = batch(False)
            model(b["images"], b["mask"])
        if step:
            times["val"].append(time.perf_counter() - t0)
    return {"seconds_per_train_batch": float(np.mean(times["train"])),
            "seconds_per_val_batch": float(np.mean(times["val"])), "n_batches": n_batches,
            "torch_threads": torch.get_num_threads()}
