"""``breastscreen predict-lesions``: classify every outlined lesion of a preprocessed manifest.

Writes into ``OUT``:

* ``lesions.csv``: exam_id, patient_id, view, image, lesion_id, outcome (from the manifest,
  empty when unknown), kind, malignant, benign (the two sum to one) — the input of
  ``breastscreen evaluate --level lesion``;
* ``errors.csv``: one row per lesion (or image) that could not be scored — region outside the
  image, empty or unreadable mask, an image not preprocessed at the models' scale — while the
  batch goes on;
* ``run.json``: provenance (models and their sha256, the spec: windows, seed, maps), counts, time;
* ``lesions/<exam>_<VIEW>_<k>_<lesion>.png`` (unless ``pictures=False``): the lesion's
  neighbourhood with its ROI outline and a sample of its windows, and the image's saliency maps.

Window features and saliency maps are cached in ``OUT/cache`` (see
:mod:`breastscreen.inference.lesion_features`), so an interrupted run restarted with the same
command (and ``--resume``) reuses what it computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from breastscreen.data.types import MG_VIEWS
from breastscreen.errors import BreastscreenError
from breastscreen.inference.lesions import LESION_COLUMNS, LesionFailure, LesionPredictor, LesionResult
from breastscreen.outdir import check_output_owner, claim_output_dir
from breastscreen.utils import atomic_path

COMMAND = "predict-lesions"
ERROR_COLUMNS = ("exam_id", "view", "image", "lesion_id", "reason")


@dataclass
class LesionRun:
    """What a ``predict-lesions`` run produced."""

    out: Path
    rows: list[dict[str, Any]]
    errors: list[tuple[str, str, str, str, str]]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def lesion_picture(result: LesionResult, image: np.ndarray, path: Path, n_windows: int = 12) -> Path:
    """The lesion's neighbourhood (ROI outline, a sample of windows) beside the whole image with the
    global saliency maps over it (benign green, malignant red) and the lesion's place boxed."""
    import cv2
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from breastscreen.specs.wholeimage import resize_image
    from breastscreen.viz.overlay import ViewPanel, draw_panel, window_grey

    rec = result.record
    ys, xs = np.nonzero(result.region)
    boxes = result.boxes
    y0 = int(max(0, min(ys.min(), boxes[:, 0].min()) - 8))
    x0 = int(max(0, min(xs.min(), boxes[:, 1].min()) - 8))
    y1 = int(min(image.shape[0], max(ys.max(), boxes[:, 2].max()) + 8))
    x1 = int(min(image.shape[1], max(xs.max(), boxes[:, 3].max()) + 8))
    fig = Figure(figsize=(9, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(window_grey(image[y0:y1, x0:x1]), cmap="gray")
    contours, _ = cv2.findContours(result.region[y0:y1, x0:x1].astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    for c in contours:
        ax.plot(c[:, 0, 0], c[:, 0, 1], color="yellow", lw=1.2)
    for b in boxes[:n_windows]:
        ax.add_patch(Rectangle((b[1] - x0, b[0] - y0), b[3] - b[1], b[2] - b[0], fill=False, ec="cyan", lw=0.6,
                               alpha=0.7))
    ax.set_title(f"{rec.exam_id} {rec.view} lesion {rec.lesion_id}: malignant {result.malignant:.3f}, "
                 f"benign {result.benign:.3f}" + (f"\n(biopsy: {rec.outcome})" if rec.outcome else ""), fontsize=8)
    ax.axis("off")
    whole = fig.add_subplot(1, 2, 2)
    maps = {}
    if result.saliency is not None:
        sal = resize_image(result.saliency, image.shape, "linear")
        maps = {"benign": sal[0], "malignant": sal[1]}
    scale = min(1.0, 768 / max(image.shape))
    draw_panel(whole, ViewPanel(image, maps, "saliency maps (benign green, malignant red)" if maps
                                else "no context model (local only)"), max_side=768)
    whole.add_patch(Rectangle((xs.min() * scale - 3, ys.min() * scale - 3), (xs.max() - xs.min()) * scale + 6,
                              (ys.max() - ys.min()) * scale + 6, fill=False, ec="yellow", lw=1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns))
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def predict_lesions(manifest: str | Path, out: str | Path, patch_model: str, context_model: str | None = None,
                    model: str | None = None, *, device: str = "cpu", windows: int | None = None,
                    seed: int | None = None, pictures: bool = True, overwrite: bool = False, resume: bool = False,
                    allow_outside_paths: bool = False,
                    progress: Callable[[str], None] | None = None) -> LesionRun:
    """Score every lesion of ``manifest`` into ``out`` (see the module docstring)."""
    from breastscreen.data.manifest import read_manifest
    from breastscreen.inference.lesion_features import standardised_image

    if resume and overwrite:
        raise BreastscreenError("choose either --resume or --overwrite, not both")
    start = time.perf_counter()
    out = Path(out)
    check_output_owner(out, COMMAND)
    if (out / "lesions.csv").is_file() and not (overwrite or resume):
        raise BreastscreenError(f"{out} already holds lesions.csv of an earlier run; pass --resume to continue it, "
                                "--overwrite to replace it, or choose another --out")
    predictor = LesionPredictor.load(patch_model, context_model, model, device=device, windows=windows, seed=seed,
                                     cache_dir=out / "cache")
    refused: list[tuple[str, str]] = []
    exams = read_manifest(Path(manifest), allow_outside_paths=allow_outside_paths, problems=refused)
    claim_output_dir(out, COMMAND, source=str(Path(manifest).resolve()))
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str, str, str, str]] = [(f"({where})", "", "", "", reason) for where, reason in refused]
    n_images = 0
    for exam in exams:
        for view in MG_VIEWS:
            for k, image in enumerate(exam.views.get(view, [])):
                try:
                    results = predictor.predict_image(exam, view, k)
                except BreastscreenError as exc:
                    errors.append((exam.exam_id, view, str(k), "", str(exc)))
                    continue
                if not results:
                    continue
                n_images += 1
                std = None
                for res in results:
                    if isinstance(res, LesionFailure):
                        errors.append((exam.exam_id, view, str(k), res.record.lesion_id, res.reason))
                        continue
                    rows.append(res.row())
                    if pictures:
                        std = standardised_image(image) if std is None else std
                        name = _safe(f"{exam.exam_id}_{view}_{k}_{res.record.lesion_id}") + ".png"
                        lesion_picture(res, std, out / "lesions" / name)
                if progress:
                    progress(f"{exam.exam_id} {view}")
    _write_csv(out / "lesions.csv", LESION_COLUMNS, rows)
    _write_csv(out / "errors.csv", ERROR_COLUMNS, [dict(zip(ERROR_COLUMNS, e)) for e in errors])
    spec = predictor.spec
    run = {
        "command": COMMAND, "manifest": str(Path(manifest).resolve()),
        "mode": "local only (f_loc)" if predictor.local_only else "local + " + "+".join(spec.maps) + " (f_agg)",
        "models": {"patch_model": {"path": patch_model, "sha256": predictor.features.local.sha256},
                   "context_model": ({"path": context_model, "sha256": predictor.features.context.sha256}
                                     if predictor.features.context else None),
                   "model": {"path": model, "sha256": predictor.agg_sha256} if model else None},
        "spec": spec.to_dict(), "n_lesions": len(rows), "n_errors": len(errors), "n_images": n_images,
        "seconds": round(time.perf_counter() - start, 3),
    }
    with atomic_path(out / "run.json") as tmp:
        Path(tmp).write_text(json.dumps(run, indent=2))
    return LesionRun(out, rows, errors)
