"""Pictures of a finished job for the viewer: greyscale views and colour overlays as separate PNGs.

Mammograms are shown in original geometry (maps mapped back through each image's preprocessing
record, as ``breastscreen predict`` draws them) and mirrored where needed for the standard
hanging: right-breast views with the chest wall on the right edge, left-breast views with the
chest wall on the left edge, so the pair meets back to back. When the original file cannot be
read, the preprocessed image is used (the viewer says so). Each overlay is an RGBA PNG whose
opacity is proportional to the map value (malignant red, benign green); the viewer scales it
with its opacity slider. Ultrasound images are the model's prepared images, with the malignant
saliency map as overlay. Each exam also gets the composite figure ``predict`` writes
(``pictures/<exam>.png``) for scripts that want one picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.data.types import view_side
from breastscreen.errors import BreastscreenError

MAP_RGB: dict[str, tuple[int, int, int]] = {"malignant": (255, 0, 0), "benign": (0, 217, 0)}
# Fast zlib level: these PNGs travel over a local network once; optimize=True cost ~0.15 s per image.
PNG_LEVEL = 1


def _grey_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    from breastscreen.viz.overlay import window_grey

    Image.fromarray(np.round(window_grey(pixels) * 255).astype(np.uint8), mode="L").save(path, compress_level=PNG_LEVEL)


def _map_png(values: np.ndarray, rgb: tuple[int, int, int], path: Path) -> None:
    from PIL import Image

    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    rgba = np.zeros((*v.shape, 4), dtype=np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = np.round(v * 255).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(path, compress_level=PNG_LEVEL)


def _display_geometry(prepared: Any, maps: dict[str, np.ndarray] | None) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                                 bool, bool]:
    """(image, maps, original geometry?, chest wall on the left?) of one prepared mammogram."""
    from breastscreen.inference.report import original_panel

    record = prepared.record or {}
    panel = original_panel(prepared, maps, "")
    original = not panel.title.endswith("(preprocessed geometry)")
    # Preprocessing turns every breast chest-wall-left (flipping when it had to), so the original
    # faces the other way exactly when the record says it was flipped.
    chest_left = (not bool(record.get("flipped"))) if original else True
    return panel.image, dict(panel.maps), original, chest_left


def mammo_view_pictures(prepared: Any, maps: dict[str, np.ndarray] | None, view: str, out_dir: Path, stem: str,
                        max_side: int) -> dict[str, Any]:
    """Write the greyscale view and its overlays; return their file names (relative to ``out_dir``'s parent)."""
    from breastscreen.viz.overlay import display_resize

    image, back, original, chest_left = _display_geometry(prepared, maps)
    mirror = chest_left != (view_side(view) == "L")
    if mirror:
        image = image[:, ::-1]
        back = {k: v[:, ::-1] for k, v in back.items()}
    image = display_resize(np.ascontiguousarray(image), max_side)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{stem}.png"
    _grey_png(image, out_dir / name)
    overlays = {}
    for key, values in back.items():
        small = display_resize(np.ascontiguousarray(values, dtype=np.float32), max_side)
        if small.shape != image.shape:
            from breastscreen.viz.overlay import resize_map_to

            small = resize_map_to(small, image.shape)
        _map_png(small, MAP_RGB.get(key, (255, 153, 0)), out_dir / f"{stem}_{key}.png")
        overlays[key] = f"{out_dir.name}/{stem}_{key}.png"
    return {"image": f"{out_dir.name}/{name}", "overlays": overlays, "width": int(image.shape[1]),
            "height": int(image.shape[0]), "geometry": "original" if original else "preprocessed",
            "mirrored_for_display": bool(mirror)}


def us_image_pictures(pixels: np.ndarray, saliency: np.ndarray | None, out_dir: Path, stem: str,
                      max_side: int) -> dict[str, Any]:
    """Write one ultrasound image and its malignant saliency overlay; return their file names."""
    from breastscreen.viz.overlay import display_resize, resize_map_to

    image = display_resize(np.asarray(pixels, dtype=np.float32), max_side)
    out_dir.mkdir(parents=True, exist_ok=True)
    _grey_png(image, out_dir / f"{stem}.png")
    overlays = {}
    if saliency is not None:
        _map_png(resize_map_to(np.asarray(saliency, dtype=np.float32), image.shape), MAP_RGB["malignant"],
                 out_dir / f"{stem}_malignant.png")
        overlays["malignant"] = f"{out_dir.name}/{stem}_malignant.png"
    return {"image": f"{out_dir.name}/{stem}.png", "overlays": overlays, "width": int(image.shape[1]),
            "height": int(image.shape[0])}


def exam_figure(pred: Any, out_dir: Path, stem: str) -> list[str]:
    """The composite PNG(s) ``breastscreen predict`` draws for one exam; names relative to ``out_dir``'s parent."""
    from breastscreen.inference.report import original_panel
    from breastscreen.viz.overlay import exam_overlay_figure, resize_map_to, us_breast_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    if pred.us_bags:
        for side, bag in pred.us_bags.items():
            sal = [resize_map_to(s, p.shape) for s, p in zip(bag["saliency"], bag["pixels"])]
            b, m = (float(v) for v in bag["probs"])
            breast = {"L": "left", "R": "right"}.get(side, "unknown side")
            path = out_dir / f"{stem}_{side}.png"
            us_breast_figure(bag["pixels"], sal, list(bag["attention"]),
                             f"{breast} breast: benign {b:.2f}, malignant {m:.2f}", path)
            names.append(f"{out_dir.name}/{path.name}")
        return names
    panels = {view: original_panel(image, maps, view) for view, (image, maps) in pred.panels.items()}
    if not panels:
        raise BreastscreenError("no view to draw")
    has_maps = any(p.maps for p in panels.values())
    path = out_dir / f"{stem}.png"
    exam_overlay_figure(panels, "breastscreen — research use only, not for clinical use", path,
                        map_names=("malignant", "benign") if has_maps else ())
    return [f"{out_dir.name}/{path.name}"]
