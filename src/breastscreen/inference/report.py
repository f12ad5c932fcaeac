"""Pictures and the HTML page of a prediction run (``DIR/pictures/*.png``, ``DIR/index.html``).

File names are the exam ids made safe (:func:`breastscreen.safety.safe_name`).
Mammography: one PNG per exam, the four views in original geometry (the maps are mapped back
through each image's preprocessing record with ``to_original``: resample, flip and crop
undone). If the original file cannot be read any more, the preprocessed image is shown instead
and the panel title says so. Ultrasound: one PNG per breast, images ordered by attention with
the malignant saliency map overlaid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastscreen.data.predictions import table_columns, table_values
from breastscreen.data.types import view_side
from breastscreen.errors import BreastscreenError
from breastscreen.safety import safe_name
from breastscreen.viz.html import ReportRow, malignancy_score, write_report_html
from breastscreen.viz.overlay import ViewPanel, exam_overlay_figure, resize_map_to, us_breast_figure

PICTURES_DIR = "pictures"
logger = logging.getLogger("breastscreen")


def _breast_title(values: dict[str, Any], side: str | None) -> str:
    name = {"L": "left", "R": "right"}.get(side or "", "")
    b, m = values.get(f"{name}_benign"), values.get(f"{name}_malignant")
    parts = [f"benign {b:.2f}" if b is not None else "", f"malignant {m:.2f}" if m is not None else ""]
    text = ", ".join(p for p in parts if p)
    return f"{name}: {text}" if text else name


def original_panel(image: Any, maps: dict[str, np.ndarray] | None, title: str) -> ViewPanel:
    """A panel in original geometry (falls back to preprocessed geometry when the source is unreadable).

    ``image`` is the :class:`~breastscreen.specs.PreparedImage` the model saw.
    """
    from breastscreen.data.readers import load_image
    from breastscreen.preprocess.mammo import to_original

    record = image.record or {}
    source = record.get("source_path")
    try:
        if not source:
            raise BreastscreenError("no source_path in the preprocessing record")
        pixels = load_image(source, frame=record.get("source_frame")).pixels
        back = {}
        if maps:
            names = list(maps)
            stack = to_original(np.stack([maps[n] for n in names]).astype(np.float32), record, kind="linear")
            back = dict(zip(names, stack))
        return ViewPanel(pixels, back, title)
    except (BreastscreenError, ValueError, KeyError, OSError):
        return ViewPanel(image.pixels, dict(maps or {}), title + " (preprocessed geometry)")


def draw_exam_pictures(pred: Any, out: Path) -> tuple[list[str], str]:
    """Draw one exam's pictures into ``out/pictures``; return (paths relative to ``out``, note).

    A failure to draw is reported in the note (shown on the page), never raised: the
    predictions stand without their picture.
    """
    pic_dir = out / PICTURES_DIR
    pic_dir.mkdir(parents=True, exist_ok=True)
    try:
        return [str(Path(PICTURES_DIR) / Path(p).name) for p in _exam_pictures(pred, pic_dir)], ""
    except (BreastscreenError, ValueError, OSError) as exc:
        return [], f"picture failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - a picture never fails the run; the log keeps the traceback
        logger.error("drawing the pictures of exam %s failed", pred.exam_id, exc_info=exc)
        return [], f"picture failed: unexpected {type(exc).__name__} (traceback in the error log)"


def write_page(
    out: Path,
    predictions: Sequence[Any],
    pictures: dict[str, tuple[list[str], str]],
    errors: Sequence[tuple[str, str]],
    columns: Sequence[str],
    provenance: dict[str, Any],
) -> Path:
    """``index.html``: exams sorted by malignancy score with their pictures (``{exam_id: (paths, note)}``)."""
    rows = []  # write_report_html sorts them by score
    for pred in predictions:
        images, note = pictures.get(pred.exam_id, ([], ""))
        values = table_values(pred)
        rows.append(ReportRow(pred.exam_id, malignancy_score(values), values, list(images), note))
    prov = {k: v for k, v in provenance.items() if k != "models"}
    for i, m in enumerate(provenance.get("models", [])):
        prov[f"model {i + 1}"] = f"{m.get('name')} ({m.get('ref')}), sha256 {str(m.get('sha256'))[:16]}…"
    return write_report_html(out / "index.html", rows, table_columns(columns, predictions), "breastscreen predictions",
                             prov, errors)


def rank_by_malignancy(predictions: Sequence[Any]) -> list[Any]:
    """Predictions, highest malignancy score first (every breast, unknown side included); unscored last."""
    return sorted(predictions, key=lambda p: -(malignancy_score(table_values(p)) or -1.0))


def write_pictures_and_page(
    out: Path,
    predictions: Sequence[Any],
    errors: Sequence[tuple[str, str]],
    columns: Sequence[str],
    provenance: dict[str, Any],
    max_pictures: int | None = None,
) -> Path:
    """Write the per-exam PNGs (highest scores first, at most ``max_pictures``) and ``index.html``."""
    ordered = rank_by_malignancy(predictions)
    pictures = {pred.exam_id: draw_exam_pictures(pred, out) for rank, pred in enumerate(ordered)
                if max_pictures is None or rank < max_pictures}
    return write_page(out, predictions, pictures, errors, columns, provenance)


def _exam_pictures(pred: Any, pic_dir: Path) -> list[str]:
    name = safe_name(pred.exam_id)
    if pred.us_bags:
        paths = []
        for side, bag in pred.us_bags.items():
            sal = [resize_map_to(s, p.shape) for s, p in zip(bag["saliency"], bag["pixels"])]
            b, m = bag["probs"]
            breast = {"L": "left", "R": "right"}.get(side, "unknown side")
            title = f"{pred.exam_id} {breast} breast: benign {b:.2f}, malignant {m:.2f}"
            path = pic_dir / f"{name}_{side}.png"
            us_breast_figure(bag["pixels"], sal, list(bag["attention"]), title, path)
            paths.append(str(path))
        return paths
    if not pred.panels:
        raise BreastscreenError(f"exam {pred.exam_id}: no images to draw")
    panels = {}
    for view, (image, maps) in pred.panels.items():
        panels[view] = original_panel(image, maps, f"{view} — {_breast_title(pred.values, view_side(view))}")
    score = malignancy_score(pred.values)
    title = f"exam {pred.exam_id}" + (f" — malignancy score {score:.2f}" if score is not None else "")
    has_maps = any(p.maps for p in panels.values())
    path = pic_dir / f"{name}.png"
    exam_overlay_figure(panels, title, path, map_names=("malignant", "benign") if has_maps else ())
    return [str(path)]
