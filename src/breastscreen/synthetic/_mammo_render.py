"""Rendering one view of a mammography phantom: tissue texture, composition, noise and label.

:func:`render_view` turns an :class:`ExamPhantom` into 12-bit pixels at a given scale: breast
outline and skin, fibroglandular texture (power-law noise, ducts, fat lobules and septa),
pectoral muscle, lesion patches and masks, quantum noise, marker and burned-in view label.
See :mod:`breastscreen.synthetic.mammo` for the phantom model as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from breastscreen.data.types import MG_VIEWS
from breastscreen.errors import BreastscreenError
from breastscreen.labels import REF_SPACING_MM
from breastscreen.synthetic import _common as C
from breastscreen.synthetic._mammo_lesions import Lesion, _render_calcs, _render_mass
from breastscreen.synthetic._mammo_phantom import (
    DETECTOR_MM,
    FULL_SHAPE,
    ExamPhantom,
    _lesion_centre,
    _nipple,
    _pectoral_x,
    _profile,
)

DEFAULT_SCALE = 0.25
# Texture is synthesised on a grid no finer than this and interpolated up: the 1/f^3 spectrum
# carries almost no power above it, and full-resolution exams stay fast.
_TEXTURE_MM = 0.4


@dataclass
class RenderedView:
    """One rendered view: 12-bit pixels and one boolean mask per lesion."""

    view: str
    pixels: np.ndarray  # uint16, values 0..4095
    masks: list[tuple[np.ndarray, Lesion]]
    spacing_mm: float


# ----------------------------------------------------------------------------------------------
# Tissue texture
# ----------------------------------------------------------------------------------------------


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lobules(shape: tuple[int, int], tpx: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fat-lobule pattern: rounded lobules with random weights (unit std) and the septa between them.

    Lobules are the (domain-warped) Voronoi cells of jittered seed points about 7 mm apart; their
    curved borders are the fibrous septa (Cooper's ligaments) that outline fat lobules in real
    mammograms.
    """
    h, w = shape
    spacing = 7.0 / tpx
    n = max(4, int(h * w / spacing**2))
    seeds = np.full((h, w), 255, np.uint8)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP)
    # Warp the cell map so borders curve like real septa instead of straight polygon edges.
    warp = 0.35 * spacing
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = gx + warp * C.power_law_noise((h, w), 3.0, rng)
    map_y = gy + warp * C.power_law_noise((h, w), 3.0, rng)
    labels = cv2.remap(labels.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    dist = cv2.remap(dist, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    labels = labels.astype(np.int32)
    values = rng.standard_normal(int(labels.max()) + 1).astype(np.float32)
    blob = np.exp(-((dist / (0.6 * spacing)) ** 2))
    cells = values[labels] * (0.4 + 0.6 * blob)
    cells = cv2.GaussianBlur(cells, (0, 0), max(1.0 / tpx, 0.7))
    cells /= max(float(cells.std()), 1e-6)
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    to_edge = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3) * tpx
    septa = np.exp(-to_edge / 0.45).astype(np.float32)
    septa = cv2.GaussianBlur(septa, (0, 0), max(0.3 / tpx, 0.5))
    return cells, septa


# ----------------------------------------------------------------------------------------------
# Composing a view
# ----------------------------------------------------------------------------------------------


def render_view(exam: ExamPhantom, view: str, scale: float = DEFAULT_SCALE) -> RenderedView:
    """Render one view of an exam phantom at ``scale`` (pixel spacing 0.1/scale mm)."""
    if view not in MG_VIEWS:
        raise BreastscreenError(f"view must be one of {', '.join(MG_VIEWS)}, got {view!r}")
    side, angle = view.split("-")
    breast = exam.breasts[side]
    g = breast.cc if angle == "CC" else breast.mlo
    I = breast.intensity
    rng = C.sub_rng(breast.seed_words[0], breast.seed_words[1], 100 + 2 * breast.seed_words[2] + (angle == "MLO"))
    px = REF_SPACING_MM / scale
    h, w = (max(8, int(round(n * scale))) for n in FULL_SHAPE)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * px
    xs = (np.arange(w, dtype=np.float32) + 0.5) * px
    x_max = _profile(angle, g, ys.astype(np.float64))
    x_max *= 1.0 + 0.012 * C.smooth_curve(h, rng, correlation=25.0 / px)
    breast_mask = xs[None, :] < x_max[:, None].astype(np.float32)
    if not breast_mask.any():
        raise BreastscreenError(f"scale {scale} is too small to draw a breast")

    # Distance to the skin (mm); the chest wall and the image border do not count as skin.
    dist = cv2.distanceTransform(breast_mask.astype(np.uint8), cv2.DIST_L2, 5) * px
    thick = np.sqrt(1.0 - np.clip(1.0 - dist / 14.0, 0.0, 1.0) ** 2)

    # ---- fibroglandular tissue, synthesised on a coarse grid -----------------------------
    tpx = max(px, _TEXTURE_MM)
    th, tw = int(round(DETECTOR_MM[0] / tpx)), int(round(DETECTOR_MM[1] / tpx))
    iso = C.power_law_noise((th, tw), 3.0, rng)
    fine = C.power_law_noise((th, tw), 2.3, rng)
    ducts_src = C.power_law_noise((192, 720), 2.2, rng)
    ducts_src = cv2.GaussianBlur(ducts_src, (0, 0), sigmaX=0.6, sigmaY=5.0)
    ducts_src /= max(float(ducts_src.std()), 1e-6)
    tys = (np.arange(th, dtype=np.float32) + 0.5) * tpx
    txs = (np.arange(tw, dtype=np.float32) + 0.5) * tpx
    nx, ny = _nipple(angle, g)
    ddx, ddy = nx - txs[None, :], tys[:, None] - ny
    rr = np.hypot(ddx, ddy)
    phi = np.arctan2(ddy, ddx)
    map_x = ((phi + np.pi) / (2 * np.pi) * 720.0).astype(np.float32)
    map_y = np.broadcast_to((rr / 2.0).astype(np.float32), map_x.shape).copy()
    ducts = cv2.remap(ducts_src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    cells, septa = _lobules((th, tw), tpx, rng)
    tissue = 0.6 * iso + 0.25 * ducts + 0.55 * cells
    tmask = cv2.resize(breast_mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
    tdist = cv2.resize(dist, (tw, th), interpolation=cv2.INTER_LINEAR)
    # Where glandular tissue lives: the central cone behind the nipple, away from skin and chest wall.
    first = np.argmax(tmask, axis=0).astype(np.float32)
    last = (th - 1 - np.argmax(tmask[::-1], axis=0)).astype(np.float32)
    mid = 0.5 * (first + last)
    halfh = np.maximum(0.5 * (last - first), 1.0)
    vrel = (np.arange(th, dtype=np.float32)[:, None] - mid[None, :]) / halfh[None, :]
    urel = txs[None, :] / g["a"]
    env = (1.0 - np.clip(vrel, -1, 1) ** 2) * _smoothstep(0.0, 0.3, urel) * _smoothstep(1.5, 12.0, tdist)
    if angle == "MLO":
        env *= _smoothstep(0.0, 15.0, txs[None, :] - _pectoral_x(g, tys)[:, None])
    score = tissue + 2.0 * env
    if tmask.sum() > 10:
        thr = float(np.quantile(score[tmask], 1.0 - breast.density_fraction))
    else:
        thr = float(score.mean())
    dense = 1.0 / (1.0 + np.exp(-(score - thr) / 0.28))
    # Visible structure: textured glandular tissue, fibrous septa around fat lobules, ducts.
    ridge = np.clip(ducts, 0.0, None) * env
    visible = dense * (0.85 + 0.12 * np.clip(fine, -2.5, 2.5)) + (0.09 - 0.05 * dense) * septa + 0.08 * ridge
    visible = cv2.resize(visible.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    visible = np.clip(visible, 0.0, 1.3)

    # ---- compose --------------------------------------------------------------------------
    img = (0.55 + 0.45 * thick) * I["fat"] + thick * I["gain"] * visible
    img += I["skin"] * np.exp(-dist / 0.6) * breast_mask
    if angle == "MLO":
        px_edge = _pectoral_x(g, ys.astype(np.float64)).astype(np.float32)
        soft = np.clip((px_edge[:, None] - xs[None, :]) / 1.2 + 0.5, 0.0, 1.0)
        grad = 1.0 + 0.08 * (1.0 - ys[:, None] / max(g["ph"], 1.0)) - 0.06 * xs[None, :] / max(g["pw"], 1.0)
        fine_up = cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)
        pect = I["pect"] * grad * (1.0 + 0.035 * fine_up) + 0.25 * (img - I["fat"])
        img = img * (1.0 - soft) + pect * soft

    masks: list[tuple[np.ndarray, Lesion]] = []
    for les in breast.lesions:
        cx, cy = _lesion_centre(angle, g, les)
        if les.kind == "mass":
            rot_extra = 0.0 if angle == "CC" else float(les.params["rotation"] * 0.3 + 0.4)
            values, lmask, half = _render_mass(les, angle, px, rot_extra, I["gain"])
        else:
            values, lmask, half = _render_calcs(les, angle, px, I["calc"], I["gain"])
        col, row = int(round(cx / px - 0.5)), int(round(cy / px - 0.5))
        C.paste_add(img, values * 1.0, col - half, row - half)
        full = np.zeros((h, w), bool)
        C.paste_or(full, lmask, col - half, row - half)
        masks.append((full & breast_mask, les))

    sigma = 8.0 + 22.0 * scale
    img += rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    bg = I["bg"] + rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    img = np.where(breast_mask, img, np.maximum(bg, 0.0))

    # Burned-in label and markers are drawn after any flip so their text reads correctly.
    if side == "R":
        img = img[:, ::-1]
        breast_mask = breast_mask[:, ::-1]
        masks = [(m[:, ::-1], les) for m, les in masks]
    if breast.marker:
        mx, my = _nipple(angle, g)
        col = int(round(mx / px)) if side == "L" else w - 1 - int(round(mx / px))
        yy, xx = np.ogrid[:h, :w]
        rad = max(1.0, 1.8 / px)
        img = np.where((xx - col) ** 2 + (yy - my / px) ** 2 <= rad * rad, rng.uniform(3600, 4000), img)
    img = _burn_label(img, breast_mask, f"{side} {angle}", side, px)
    pixels = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
    return RenderedView(view=view, pixels=np.ascontiguousarray(pixels), masks=[(np.ascontiguousarray(m), les) for m, les in masks], spacing_mm=px)


def _burn_label(img: np.ndarray, breast_mask: np.ndarray, text: str, side: str, px: float) -> np.ndarray:
    """Draw the view label in a corner away from the chest wall, keeping clear of the breast."""
    h, w = img.shape
    height = max(5.0, 7.0 / px)
    tw, th = C.text_size(text, height)
    margin = max(2, int(round(8.0 / px)))
    clearance = max(2, int(round(5.0 / px)))
    x0 = w - margin - tw if side == "L" else margin
    for y0 in (margin, h - margin - th, (h - th) // 2):
        ya, yb = max(0, y0 - clearance), min(h, y0 + th + clearance)
        xa, xb = max(0, x0 - clearance), min(w, x0 + tw + clearance)
        if not breast_mask[ya:yb, xa:xb].any():
            break
    label = C.text_mask((h, w), text, (x0, y0), height)
    return np.where(label, 3900.0, img)
