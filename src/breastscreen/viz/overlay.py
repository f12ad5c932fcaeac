"""Overlay pictures: heatmaps / saliency maps on mammograms, ultrasound images ordered by attention.

Colours: malignant in red, benign in green; a map value v is drawn with opacity
``alpha_max * v`` (so 0 is invisible and 1 is strongest). The greyscale image underneath is
windowed to its 0.5-99.5 percentiles.

Mammography pictures show the four views side by side in the radiological order
R-CC, L-CC, R-MLO, L-MLO, in ORIGINAL geometry (the maps are mapped back through the
preprocessing record: crop and flip undone), downsampled for display so the longest side is at
most ``max_side`` pixels. Views without an image are drawn as an empty panel marked "missing".
All drawing uses matplotlib's object API with the Agg canvas (no global pyplot state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# Display order of mammography views (right breast on the viewer's left, as on a reading station).
DISPLAY_ORDER: tuple[str, ...] = ("R-CC", "L-CC", "R-MLO", "L-MLO")
MAP_COLOURS: dict[str, tuple[float, float, float]] = {
    "malignant": (1.0, 0.0, 0.0),
    "benign": (0.0, 0.85, 0.0),
}


@dataclass
class ViewPanel:
    """One panel: a greyscale ``image`` and maps aligned with it ({"benign": [H, W], "malignant": ...})."""

    image: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    title: str = ""


def window_grey(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale an image to [0, 1] between its ``low`` and ``high`` percentiles (for display)."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high]) if x.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def display_resize(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a 2-D array so its longest side is at most ``max_side`` (area averaging)."""
    h, w = arr.shape
    f = min(1.0, max_side / max(h, w))
    if f >= 1.0:
        return np.asarray(arr, dtype=np.float32)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(np.asarray(arr, dtype=np.float32), size, interpolation=cv2.INTER_AREA)


def map_rgba(values: np.ndarray, colour: Sequence[float], alpha_max: float = 0.6) -> np.ndarray:
    """RGBA image of one colour whose opacity is ``alpha_max * value`` (values clipped to [0, 1])."""
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    rgba = np.zeros((*v.shape, 4), dtype=np.float32)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha_max * v
    return rgba


def draw_panel(ax: Axes, panel: ViewPanel | None, max_side: int = 1024, alpha_max: float = 0.6) -> None:
    """Draw one view (or a 'missing' placeholder) with its maps on a matplotlib axes."""
    ax.set_xticks([])
    ax.set_yticks([])
    if panel is None:
        ax.set_facecolor("0.15")
        ax.text(0.5, 0.5, "missing", color="0.8", ha="center", va="center", transform=ax.transAxes)
        return
    ax.imshow(display_resize(window_grey(panel.image), max_side), cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    # Draw benign first so malignant (the finding that matters most) is on top.
    for name in sorted(panel.maps, key=lambda n: n == "malignant"):
        colour = MAP_COLOURS.get(name, (1.0, 0.6, 0.0))
        ax.imshow(map_rgba(display_resize(panel.maps[name], max_side), colour, alpha_max), interpolation="bilinear")
    ax.set_title(panel.title, fontsize=9)


def fit_suptitle(fig: Figure, title: str, fontsize: float = 11) -> int:
    """Set ``fig``'s title, broken between words so no line is wider than the figure; returns the line count.

    A one-image ultrasound picture is about 3 inches wide, and a centred title wider than that
    is clipped on both sides (the exam id and the malignant probability were lost). Widths are
    measured with the Agg renderer, so the break is exact for the font in use; a single word
    wider than the figure stays on its own line.
    """
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    limit = 0.98 * fig.bbox.width

    def width(text: str) -> float:
        probe = fig.text(0, 0, text, fontsize=fontsize, parse_math=False)
        w = probe.get_window_extent(renderer).width
        probe.remove()
        return w

    lines: list[str] = []
    for word in title.split(" "):
        if lines and width(f"{lines[-1]} {word}") <= limit:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    fig.suptitle("\n".join(lines), fontsize=fontsize, parse_math=False)  # exam ids may hold '$'
    return len(lines)


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    from breastscreen.utils import atomic_path

    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor=fig.get_facecolor())
    return path


def exam_overlay_figure(
    panels: Mapping[str, ViewPanel | None],
    title: str,
    path: str | os.PathLike[str],
    order: Sequence[str] = DISPLAY_ORDER,
    map_names: Sequence[str] = ("malignant", "benign"),
    max_side: int = 1024,
    alpha_max: float = 0.6,
    dpi: int = 110,
) -> Path:
    """Write a PNG with the views of one exam side by side, maps overlaid, a legend and ``title``."""
    fig = Figure(figsize=(3.2 * len(order), 5.4), facecolor="white")
    axes = fig.subplots(1, len(order))
    axes = np.atleast_1d(axes)
    for ax, view in zip(axes, order):
        panel = panels.get(view)
        draw_panel(ax, panel, max_side, alpha_max)
        if panel is None:
            ax.set_title(view, fontsize=9)
    handles = [
        Patch(color=MAP_COLOURS.get(n, (1.0, 0.6, 0.0)), label=f"{n} (opacity ∝ probability)") for n in map_names
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    lines = fit_suptitle(fig, title)
    if lines > 1:
        fig.set_size_inches(fig.get_figwidth(), 5.4 + 0.2 * (lines - 1))
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - (0.55 + 0.2 * lines) / fig.get_figheight(), bottom=0.08,
                        wspace=0.04)
    return _save(fig, path, dpi)


def us_breast_figure(
    images: Sequence[np.ndarray],
    saliency: Sequence[np.ndarray | None],
    attention: Sequence[float],
    title: str,
    path: str | os.PathLike[str],
    max_side: int = 512,
    alpha_max: float = 0.6,
    dpi: int = 100,
    max_images: int = 12,
) -> Path:
    """Write a PNG of one breast's ultrasound images ordered by attention (highest first).

    Each panel shows the malignant saliency map in red and its attention weight in the title.
    At most ``max_images`` images are drawn (the rest are counted in the title).
    """
    if not (len(images) == len(saliency) == len(attention)):
        raise ValueError(
            f"images, saliency and attention must have equal lengths, got {len(images)}, {len(saliency)}, {len(attention)}"
        )
    if not images:
        raise ValueError("us_breast_figure needs at least one image")
    order = list(np.argsort(-np.asarray(attention, dtype=np.float64), kind="stable"))[:max_images]
    n = len(order)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.0 * cols, 3.1 * rows + 0.8), facecolor="white")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, k in zip(axes, order):
        sal = saliency[k]
        maps = {} if sal is None else {"malignant": np.asarray(sal, dtype=np.float32)}
        draw_panel(ax, ViewPanel(images[k], maps, f"image {k + 1}: attention {attention[k]:.2f}"), max_side, alpha_max)
    for ax in axes[n:]:
        ax.axis("off")
    extra = f" ({len(images) - n} more not shown)" if len(images) > n else ""
    fig.legend(handles=[Patch(color=MAP_COLOURS["malignant"], label="malignant saliency")], loc="lower center",
               fontsize=9, frameon=False)
    lines = fit_suptitle(fig, title + extra)
    height = 3.1 * rows + 0.6 + 0.2 * lines
    fig.set_size_inches(fig.get_figwidth(), height)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - (0.5 + 0.2 * lines) / height, bottom=0.35 / height,
                        wspace=0.04, hspace=0.18)
    return _save(fig, path, dpi)


def resize_map_to(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (h, w) (e.g. a low-resolution saliency map)."""
    v = np.asarray(values, dtype=np.float32)
    if v.shape == tuple(shape):
        return v
    return cv2.resize(v, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
