"""Burned-in ultrasound annotations: detection and removal (inpainting).

Screen captures of breast ultrasound carry marks the operator or the scanner drew into the
pixels: '+' and 'x' calipers on the lesion, dotted measurement lines, measurement text, labels
("MAMA ESQUERDA", "RT 10H 3CM FN"), body markers and icons. Calipers sit on lesions and are
drawn more often on suspicious ones, so a model can learn "calipers => lesion" instead of the
tissue. :func:`remove_annotations` finds the marks and fills them from the surrounding tissue
before the image reaches the model (training and prediction alike, through
:class:`breastscreen.specs.USSpec`).

What separates a mark from tissue (every threshold is relative to the image itself, with an
absolute floor; parameters in :class:`AnnotationParams`):

* candidates: thin and bright. The white top-hat (image minus its grey opening with a disk a
  little wider than a stroke, ``max_stroke_px``) is at least half the contrast threshold
  ``thr = max(min_contrast, contrast_rel * (bright level - median))`` (bright level = 99.5th
  percentile of the non-zero pixels); the pixel reaches ``min_brightness`` times the bright
  level; an opening one pixel wider than a stroke removes at least ``thin_ratio`` of its
  top-hat (speckle grains and saturated plateaus survive such an opening, strokes do not);
* cues (per pixel): (a) a straight, even stroke of ``segment_px`` pixels through it, vertical,
  diagonal or horizontal: mean ``thr`` above the brighter of the two parallel segments beside
  it, minimum still half as far, range along it within ``flatness`` times that contrast (drawn
  strokes are even, speckle is not); (b) a strong top-hat: above the image's own
  ``contrast_quantile`` (marks are rarer than that);
* marks: cue pixels grow (``grow_px`` steps) through candidates at least ``grow_level`` of the
  seed's value, so the rest of a glyph joins; a component is a mark when it has
  ``min_area`` pixels, ``min_height`` to ``max_size_px`` rows, almost no pixel thicker than a
  stroke (``max_core_share``), at least ``min_cues`` different cues and at least one vertical
  or diagonal stroke (B-mode speckle and bright tissue lines run roughly horizontally); a
  component wider than ``max_size_px`` must be a word, with vertical strokes along it;
* letters without a straight stroke ('S', 'O') join an accepted glyph of their text line
  (``group_px``);
* calipers: four bright half-arms of a '+' or an 'x' (lengths ``caliper_arms``) whose means
  are ``caliper_contrast`` and ``caliper_outlier`` times the image's 99.9th percentile of the
  same response above three of the four sectors between the arms (the fourth may hold the
  caliper's number);
* dotted lines: at least four evenly spaced dots on the segment between two caliper-like marks;
* colour (RGB sources): pixels whose channels differ by ``min_chroma`` or more (yellow, green,
  cyan marks on a grey image) are candidates and cues on their own; the shape rules still
  apply, so a colour Doppler patch (a large blob) is not a mark.

The marks are dilated by ``dilate_px`` (the anti-aliased edge of a stroke) and inpainted with
:func:`cv2.inpaint` (Telea by default); every other pixel is returned unchanged. Measured
precision and recall (synthetic phantoms with known marks) and a BUS-BRA picture are in
docs/ultrasound.md ("Annotation removal"); single-pixel dots and glyphs in very bright speckle
are the usual misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

# Caliper-like marks considered for dotted lines (pairs grow quadratically; real images have a few).
MAX_CALIPERS = 24
# Rounds of joining letters to an accepted glyph of their text line (one letter per round each way).
MAX_GLYPHS_PER_LINE = 24


class AnnotationParams(BaseModel):
    """Parameters of the annotation detector and of the inpainting (defaults documented in the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_stroke_px: int = Field(3, ge=1, le=15)  # widest stroke (px) that counts as a mark
    segment_px: int = Field(7, ge=3, le=31)  # straight stroke length that seeds a mark
    min_contrast: float = Field(30.0, ge=0, le=255)  # floor of the stroke-over-background contrast (grey levels)
    contrast_rel: float = Field(0.2, ge=0, le=1)  # contrast threshold as a share of (bright level - median)
    flatness: float = Field(0.5, ge=0, le=10)  # allowed range along a seed stroke, as a multiple of its contrast
    min_brightness: float = Field(0.6, ge=0, le=1)  # a mark pixel vs the image's bright level
    thin_ratio: float = Field(0.5, ge=0, le=1)  # share of a pixel's contrast that a stroke-wide opening removes
    grow_px: int = Field(8, ge=0, le=50)  # geodesic growth of seeds into bright pixels (rest of a glyph)
    grow_level: float = Field(0.9, ge=0, le=1)  # a grown pixel is at least this share of its seed's value
    min_area: int = Field(6, ge=1, le=10_000)  # pixels of one mark component
    min_height: int = Field(4, ge=1, le=1000)  # rows spanned by one mark component
    max_size_px: int = Field(48, ge=4, le=4096)  # tallest mark component (a text line may be wider)
    max_core_share: float = Field(0.1, ge=0, le=1)  # share of a mark's pixels thicker than a stroke
    min_cues: int = Field(2, ge=1, le=5)  # cues a mark must show (stroke orientations, strong contrast)
    group_px: int = Field(4, ge=0, le=50)  # a glyph this close beside an accepted mark, on its line, joins it
    contrast_quantile: float = Field(0.995, ge=0.5, le=1)  # top-hat quantile of the image that counts as strong
    calipers: bool = True  # look for '+' and 'x' marks (four bright half-arms)
    caliper_arms: tuple[int, ...] = (3, 5)  # caliper arm lengths (px) tried; longer arms respond too
    caliper_outlier: float = Field(4.0, ge=1, le=20)  # caliper response vs the image's 99.9th percentile
    caliper_contrast: float = Field(35.0, ge=0, le=255)  # floor of the caliper response (grey levels)
    dotted_lines: bool = True  # look for dotted lines between caliper-like marks
    min_chroma: float = Field(60.0, ge=1, le=255)  # RGB sources: max - min channel of a coloured mark
    dilate_px: int = Field(2, ge=0, le=10)  # growth of the mask before inpainting (stroke halos)
    inpaint_radius: float = Field(3.0, gt=0, le=20)
    inpaint_method: Literal["telea", "ns"] = "telea"

    @field_validator("caliper_arms")
    @classmethod
    def _arms(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(v) > 8 or any(not 2 <= a <= 20 for a in v):
            raise ValueError("caliper_arms must list 1-8 arm lengths between 2 and 20 px")
        return v


@dataclass
class AnnotationResult:
    """Outcome of :func:`remove_annotations`: cleaned grey image, the marks found, the inpainted area."""

    pixels: np.ndarray  # uint8, same shape as the input
    marks: np.ndarray  # bool: pixels detected as annotation strokes
    inpainted: np.ndarray  # bool: the (dilated) area that was inpainted
    n_marks: int  # connected components accepted as marks


def _disk(d: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) with edge replication (no wrap-around)."""
    h, w = a.shape
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


def _stroke_seeds(g: np.ndarray, p: AnnotationParams, thr: float) -> list[np.ndarray]:
    """Per orientation (vertical, two diagonals, horizontal): pixels on a straight, thin, bright
    stroke at least ``segment_px`` long.

    Along the segment centred on the pixel the mean is ``thr`` above the brighter of the two
    parallel segments beside it, the minimum still half as far above, and the values vary less
    than ``flatness`` times that contrast (drawn strokes are even; speckle is not).
    """
    L = p.segment_px
    # Beside the stroke, close enough not to land on the next letter of a word.
    off = p.max_stroke_px // 2 + 1
    diag = max(1, int(round(off / np.sqrt(2.0))))
    eye = np.eye(L, dtype=np.uint8)
    kernels = {(0, off): np.ones((L, 1), np.uint8), (diag, diag): np.ascontiguousarray(eye[:, ::-1]),
               (diag, -diag): eye, (off, 0): np.ones((1, L), np.uint8)}
    out = []
    for (dy, dx), k in kernels.items():
        low = cv2.erode(g, k)
        high = cv2.dilate(g, k)
        mean = cv2.filter2D(g, -1, k.astype(np.float32) / float(k.sum()), borderType=cv2.BORDER_REPLICATE)
        side = np.maximum(_shift(mean, dy, dx), _shift(mean, -dy, -dx))
        contrast = mean - side
        out.append((contrast >= thr) & (low - side >= 0.5 * contrast) & (high - low <= p.flatness * contrast))
    return out


def _arm_kernels(a: int, diagonal: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Averaging kernels of the four half-arms of a '+' (or 'x' when ``diagonal``) of arm length
    ``a``, and of the four background sectors between the arms (2 px or more from any arm)."""
    size = 2 * a + 1
    yy, xx = np.mgrid[-a:a + 1, -a:a + 1]
    arms = []
    for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1)) if diagonal else ((0, 1), (0, -1), (1, 0), (-1, 0)):
        k = np.zeros((size, size), np.float32)
        for t in range(1, a + 1):
            k[a + dy * t, a + dx * t] = 1.0
        arms.append(k / k.sum())
    if diagonal:
        away = np.abs(np.abs(yy) - np.abs(xx)) >= 2
        sectors = [away & (yy < 0) & (np.abs(xx) < -yy), away & (yy > 0) & (np.abs(xx) < yy),
                   away & (xx < 0) & (np.abs(yy) < -xx), away & (xx > 0) & (np.abs(yy) < xx)]
    else:
        sectors = [(yy * sy >= 2) & (xx * sx >= 2) for sy in (-1, 1) for sx in (-1, 1)]
    return arms, [m.astype(np.float32) / m.sum() for m in sectors]


def _calipers(g: np.ndarray, cand: np.ndarray, p: AnnotationParams, thr: float) -> np.ndarray:
    """Pixels of '+' and 'x' caliper marks: four bright half-arms around one centre.

    Each half-arm's mean is ``thr``, and ``caliper_outlier`` times the image's 99.9th
    percentile of the same response, above the mean of the samples between the arms, so a
    stroke that only runs one way (a tissue line, a letter) or the image's texture does not respond. The mark's pixels
    are the thin bright candidates on its arms (1 px either side) at least halfway from that
    background to the arm level; half the arms' length must be there.
    """
    out = np.zeros(g.shape, bool)
    h, w = g.shape
    for a in p.caliper_arms:
        for diagonal in (False, True):
            arms, sectors = _arm_kernels(a, diagonal)
            # The second-brightest sector: three of the four sectors between the arms must be dark
            # (the fourth may hold the caliper's number label).
            bg = np.sort([cv2.filter2D(g, -1, k, borderType=cv2.BORDER_REFLECT) for k in sectors], axis=0)[-2]
            arm = np.min([cv2.filter2D(g, -1, k, borderType=cv2.BORDER_REFLECT) for k in arms], axis=0)
            resp = arm - bg
            # Far above what the image's own texture produces (a few crosses barely move the quantile).
            limit = max(thr, p.caliper_outlier * float(np.quantile(resp[g > 0], 0.999)))
            peak = (resp >= limit) & (resp >= cv2.dilate(resp, np.ones((3, 3), np.uint8)))
            if not peak.any():
                continue
            shape = np.zeros((2 * a + 1, 2 * a + 1), np.uint8)
            for k in arms:
                shape |= (k > 0).astype(np.uint8)
            shape[a, a] = 1
            shape = cv2.dilate(shape, np.ones((3, 3), np.uint8)) if a >= 3 else shape
            for y, x in zip(*np.nonzero(peak)):
                y0, x0 = max(y - a, 0), max(x - a, 0)
                y1, x1 = min(y + a + 1, h), min(x + a + 1, w)
                sub = shape[y0 - (y - a):y1 - (y - a), x0 - (x - a):x1 - (x - a)].astype(bool)
                level = bg[y, x] + 0.5 * resp[y, x]
                pix = sub & (g[y0:y1, x0:x1] >= level) & cand[y0:y1, x0:x1]
                if pix.sum() >= 2 * a:  # half of the arms' length is thin and bright
                    out[y0:y1, x0:x1] |= pix
    return out


def _chroma(rgb: np.ndarray) -> np.ndarray:
    c = np.asarray(rgb, np.float32)[..., :3]
    if c.max(initial=0.0) > 255.0:  # 16-bit colour: compare on the 8-bit scale
        c = c * (255.0 / c.max())
    return c.max(axis=2) - c.min(axis=2)


def _dotted_lines(cand: np.ndarray, marks: np.ndarray, p: AnnotationParams) -> np.ndarray:
    """Dots of dotted lines joining two caliper-like marks (small, roughly square components).

    A segment between two such marks is a dotted line when at least four separate candidate dots
    lie on it, evenly spaced (gap standard deviation < 25 % of the mean gap) and spanning at
    least 60 % of the way.
    """
    n, _, stats, cents = cv2.connectedComponentsWithStats(marks.astype(np.uint8), connectivity=8)
    small = [k for k in range(1, n) if max(stats[k, 2], stats[k, 3]) <= 2 * p.segment_px
             and 0.5 <= stats[k, 2] / max(stats[k, 3], 1) <= 2.0][:MAX_CALIPERS]
    out = np.zeros_like(cand)
    h, w = cand.shape
    limit = 0.6 * max(h, w)
    for i, a in enumerate(small):
        for b in small[i + 1:]:
            (ax, ay), (bx, by) = cents[a], cents[b]
            length = float(np.hypot(bx - ax, by - ay))
            if length < 3 * p.segment_px or length > limit:
                continue
            # Work in the segment's bounding window only.
            x0, y0 = max(int(min(ax, bx)) - 2, 0), max(int(min(ay, by)) - 2, 0)
            x1, y1 = min(int(max(ax, bx)) + 3, w), min(int(max(ay, by)) + 3, h)
            line = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.line(line, (int(round(ax)) - x0, int(round(ay)) - y0), (int(round(bx)) - x0, int(round(by)) - y0), 1, 3)
            on = cand[y0:y1, x0:x1] & line.astype(bool) & ~marks[y0:y1, x0:x1]
            m, lab, st, cc = cv2.connectedComponentsWithStats(on.astype(np.uint8), connectivity=8)
            dots = [j for j in range(1, m) if max(st[j, 2], st[j, 3]) <= p.max_stroke_px + 1]
            if len(dots) < 4:
                continue
            t = np.sort([np.hypot(cc[j][0] + x0 - ax, cc[j][1] + y0 - ay) for j in dots])
            gaps = np.diff(t)
            # Evenly spaced dots spanning most of the way from one mark to the other.
            if gaps.mean() > 2.5 and gaps.std() < 0.25 * gaps.mean() and t[-1] - t[0] >= 0.6 * length:
                keep = np.isin(lab, dots)
                out[y0:y1, x0:x1] |= keep
    return out


def _grow(g: np.ndarray, seeds: np.ndarray, allowed: np.ndarray, steps: int, level_share: float) -> np.ndarray:
    """Geodesic growth of ``seeds`` within ``allowed`` through pixels at least ``level_share`` of
    the value of the seed they grow from (``steps`` 8-neighbour steps)."""
    level = np.where(seeds, g, 0.0).astype(np.float32)
    grown = seeds.copy()
    for _ in range(steps):
        reach = cv2.dilate(level, np.ones((3, 3), np.uint8))
        nxt = grown | (allowed & (reach > 0) & (g >= level_share * reach))
        if np.array_equal(nxt, grown):
            break
        level = np.where(nxt & ~grown, reach, level)
        grown = nxt
    return grown


def _same_line_glyphs(cand: np.ndarray, accepted: np.ndarray, p: AnnotationParams) -> np.ndarray:
    """Glyphs of the same text line as an accepted mark that showed no cue of their own ('S', 'O').

    A thin candidate component (mark-sized, not thick) joins when its box is within
    ``group_px`` columns of an accepted component's box, overlaps it vertically by half the
    smaller height and is between half and twice as tall; repeated so a word joins letter by letter.
    """
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    joined = cv2.morphologyEx((cand & ~accepted).astype(np.uint8), cv2.MORPH_CLOSE, cross)
    n, labels, st, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    dist = cv2.distanceTransform(joined, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    thick = np.bincount(labels[dist > 0.5 * (p.max_stroke_px + 1)], minlength=n)
    x, y, bw, bh, area = (st[:, i].astype(np.int64) for i in range(5))
    glyph = ((area >= p.min_area) & (bh >= p.min_height) & (bh <= p.max_size_px) & (bw <= p.max_size_px)
             & (thick <= p.max_core_share * area))
    glyph[0] = False
    m, _, ast, _ = cv2.connectedComponentsWithStats(accepted.astype(np.uint8), connectivity=8)
    boxes = [tuple(int(v) for v in ast[k, :4]) for k in range(1, m)]
    taken = np.zeros(n, bool)
    for _ in range(MAX_GLYPHS_PER_LINE):
        added = []
        for k in np.flatnonzero(glyph & ~taken):
            for bx, by, bbw, bbh in boxes:
                gap = max(bx - (x[k] + bw[k]), x[k] - (bx + bbw))
                overlap = min(by + bbh, y[k] + bh[k]) - max(by, y[k])
                if gap <= p.group_px and overlap >= 0.5 * min(bbh, bh[k]) and 0.5 <= bh[k] / bbh <= 2.0:
                    added.append(k)
                    break
        if not added:
            break
        taken[added] = True
        boxes += [tuple(int(v) for v in st[k, :4]) for k in added]
    return taken[labels] & cand


def detect_annotations(
    grey: np.ndarray, rgb: np.ndarray | None = None, params: AnnotationParams | None = None
) -> tuple[np.ndarray, int]:
    """Boolean mask of burned-in annotation strokes in an 8-bit grey image, and the number of marks.

    ``rgb`` (same height and width) adds the colour cue for colour sources.
    """
    p = params or AnnotationParams()
    g8 = np.asarray(grey)
    if g8.ndim != 2:
        raise ValueError(f"annotation detection needs a 2-D grey image, got shape {g8.shape}")
    g = g8.astype(np.float32)
    h, w = g.shape
    empty = np.zeros((h, w), bool)
    nonzero = g[g > 0]
    if nonzero.size < 16:
        return empty, 0
    bright = float(np.percentile(nonzero, 99.5))
    thr = max(p.min_contrast, p.contrast_rel * (bright - float(np.median(nonzero))))
    top_hat = g - cv2.morphologyEx(g, cv2.MORPH_OPEN, _disk(2 * p.max_stroke_px + 1))
    # An opening just wider than a stroke removes strokes but keeps speckle grains and the
    # plateaus of saturated speckle: what it removes is thin.
    side = p.max_stroke_px + 1
    thin_hat = g - cv2.morphologyEx(g, cv2.MORPH_OPEN, np.ones((side, side), np.uint8))
    shape_ok = (g >= p.min_brightness * bright) & (thin_hat >= p.thin_ratio * top_hat)
    cand = (top_hat >= 0.5 * thr) & shape_ok
    # Cue 1: contrast far above what this image's tissue reaches (its own top-hat quantile).
    strong_thr = max(thr, float(np.quantile(top_hat[g > 0], p.contrast_quantile)))
    strong = (top_hat >= strong_thr) & shape_ok
    # Cue 2: straight, even strokes (marks drawn with one grey level), even at lower contrast.
    oriented = [m & cand for m in _stroke_seeds(g, p, thr)]
    # B-mode speckle is elongated laterally, so a horizontal stroke alone never seeds a mark; it
    # only counts as a second orientation (the bar of a '+', of a letter).
    seeds = oriented[0] | oriented[1] | oriented[2] | strong
    oriented.append(strong)
    coloured = empty
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[:2] != (h, w):
            raise ValueError(f"rgb must be (H, W, 3) matching the grey image {g.shape}, got {rgb.shape}")
        coloured = _chroma(rgb) >= p.min_chroma
        cand |= coloured
        seeds |= coloured
        oriented += [coloured, coloured]  # a coloured mark needs no second cue
    calipers = _calipers(g, cand, p, p.caliper_contrast) if p.calipers else empty
    if not (seeds.any() or calipers.any()):
        return empty, 0
    # Bounded geodesic growth: the rest of a glyph (curves, horizontal bars, arm ends) joins its
    # seeds, but only through pixels nearly as bright as the seed they grow from, so a seed
    # cannot flood the bright speckle around it.
    grown = _grow(g, seeds, cand, p.grow_px, p.grow_level)
    # A 3x3 closing re-joins strokes that anti-aliasing broke, so one glyph is one component.
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    joined = cv2.morphologyEx(grown.astype(np.uint8), cv2.MORPH_CLOSE, cross)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    # Thick core: pixels farther than half a stroke from the edge; strokes have (almost) none.
    dist = cv2.distanceTransform(grown.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    core = dist > 0.5 * (p.max_stroke_px + 1)
    area = np.bincount(labels[grown], minlength=n)
    thick = np.bincount(labels[core], minlength=n)
    # Evidence per component: stroke orientations found, plus the strong-contrast cue; at least
    # one stroke must be vertical or diagonal (bright tissue lines run roughly horizontally).
    n_cues = sum((np.bincount(labels[m], minlength=n) > 0).astype(int) for m in oriented)
    vertical = np.bincount(labels[oriented[0]], minlength=n)
    steep = np.bincount(labels[oriented[0] | oriented[1] | oriented[2] | coloured], minlength=n) > 0
    shaped = np.zeros(n, bool)
    for k in range(1, n):
        bw, bh = int(stats[k, cv2.CC_STAT_WIDTH]), int(stats[k, cv2.CC_STAT_HEIGHT])
        # A component wider than a mark must be a word: vertical strokes all along it (a bright
        # tissue line has none).
        wide_ok = bw <= p.max_size_px or vertical[k] * 8 >= bw
        shaped[k] = (area[k] >= p.min_area and p.min_height <= bh <= p.max_size_px and wide_ok
                     and thick[k] <= p.max_core_share * area[k] and n_cues[k] >= 1)
    ok = shaped & steep & (n_cues >= p.min_cues)
    accepted = (ok[labels] & grown) | calipers
    if not accepted.any():
        return empty, 0
    if p.group_px > 0:
        accepted |= _same_line_glyphs(cand, accepted, p)
    # Complete the glyphs: thick joints of bold text are as bright as the strokes but not thin.
    bright_hat = (top_hat >= 0.5 * thr) & (g >= p.min_brightness * bright)
    accepted = _grow(g, accepted, bright_hat | accepted, 2, p.grow_level)
    if p.dotted_lines:
        accepted |= _dotted_lines(cand, accepted, p)
    # Marks counted as glyph-sized groups (a letter, a cross, a dot), as the closing above joins them.
    n_marks = cv2.connectedComponents(cv2.morphologyEx(accepted.astype(np.uint8), cv2.MORPH_CLOSE, cross),
                                      connectivity=8)[0] - 1
    return accepted, int(n_marks)


def inpaint_marks(grey: np.ndarray, marks: np.ndarray, params: AnnotationParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint the dilated ``marks`` of an 8-bit image; returns (pixels, inpainted area).

    Pixels outside the inpainted area are returned unchanged (exactly).
    """
    p = params or AnnotationParams()
    g8 = np.asarray(grey, np.uint8)
    area = np.asarray(marks, bool)
    if p.dilate_px > 0 and area.any():
        area = cv2.dilate(area.astype(np.uint8), _disk(2 * p.dilate_px + 1)).astype(bool)
    if not area.any():
        return g8.copy(), area
    flag = cv2.INPAINT_TELEA if p.inpaint_method == "telea" else cv2.INPAINT_NS
    filled = cv2.inpaint(np.ascontiguousarray(g8), area.astype(np.uint8), float(p.inpaint_radius), flag)
    # cv2.inpaint only writes masked pixels, but keep the guarantee explicit.
    return np.where(area, filled, g8).astype(np.uint8), area


def remove_annotations(
    grey: np.ndarray, rgb: np.ndarray | None = None, params: AnnotationParams | None = None
) -> AnnotationResult:
    """Detect burned-in annotations in an 8-bit grey image (``rgb``: its colour source) and inpaint them."""
    marks, n = detect_annotations(grey, rgb, params)
    pixels, area = inpaint_marks(grey, marks, params)
    return AnnotationResult(pixels, marks, area, n)
