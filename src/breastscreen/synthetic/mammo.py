"""Synthetic four-view screening mammograms (the built-in default data of breastscreen).

Each exam has the four standard views ``L-CC``, ``R-CC``, ``L-MLO``, ``R-MLO`` drawn on a
300 x 200 mm detector (3000 x 2000 pixels of 0.1 mm at ``scale`` 1.0; ``scale`` F gives pixels
of 0.1/F mm). Display convention (matches the NYU sample exam and the usual hanging): the
chest wall of a LEFT breast is at the LEFT image edge with the nipple pointing right; a
RIGHT breast is the mirror image (chest wall at the right edge). In CC views the lateral side
of the breast is at the top of the image; in MLO views the pectoral muscle is the bright
triangle in the upper chest-wall corner.

Phantom model, per breast (all geometry in millimetres, so every scale shows the same breast):
- outline from a smooth row profile (CC: half-ellipse against the chest wall; MLO: axillary
  tail at the top edge, nipple, inframammary fold), a nipple bump and a bright skin line;
- compressed-thickness fall-off near the skin, partly equalised as in processed images;
- fibroglandular tissue: 1/f^3 (power-law) noise mixed with ducts radiating from the nipple,
  thresholded so the dense fraction matches the BI-RADS density (A-D);
- lesions placed at the same depth behind the nipple and in the matching quadrant in the CC
  and MLO view of the breast: masses whose margin goes from circumscribed/oval through
  irregular to spiculated, and calcification clusters going from a few round punctate specks
  to many fine pleomorphic specks in a linear/segmental spread. One latent "suspicion" per
  lesion drives its appearance; it is drawn from Beta(2, 5) for benign and Beta(5, 2) for
  malignant lesions, so appearances overlap and the tasks are learnable but not trivial;
- 12-bit values (0-4095, brighter = denser, MONOCHROME2), a dark noisy background, a
  burned-in view label ("L CC") in the upper corner away from the chest wall and, sometimes,
  a bright skin marker on the nipple.

Exam-level BI-RADS is what a reader would say from the appearance (noisy suspicion): 1 for no
finding (a few false recalls get 0), 2/3 for benign-looking, 0 for indeterminate and 4/5 for
suspicious findings; the labels are the truth (benign/malignant per breast).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import MG_VIEWS, ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.labels import REF_SPACING_MM
from breastscreen.synthetic import _common as C

DEFAULT_SCALE = 0.25
FULL_SHAPE = (3000, 2000)  # rows, columns at 0.1 mm
DETECTOR_MM = (FULL_SHAPE[0] * REF_SPACING_MM, FULL_SHAPE[1] * REF_SPACING_MM)
DENSITY_FRACTION = {"A": (0.03, 0.12), "B": (0.15, 0.33), "C": (0.40, 0.60), "D": (0.65, 0.85)}
DENSITY_PROBS = {"A": 0.1, "B": 0.4, "C": 0.4, "D": 0.1}
BIRADS_SEVERITY = ("1", "2", "3", "0", "4", "5")  # least to most concerning
# Texture is synthesised on a grid no finer than this and interpolated up: the 1/f^3 spectrum
# carries almost no power above it, and full-resolution exams stay fast.
_TEXTURE_MM = 0.4
_STREAM_EXAM, _STREAM_RENDER = 0, 1


# ----------------------------------------------------------------------------------------------
# Phantom description (resolution independent)
# ----------------------------------------------------------------------------------------------


@dataclass
class Lesion:
    """One finding of a breast, described in millimetres and shared by its CC and MLO views."""

    label: str  # benign | malignant
    kind: str  # mass | calcification
    shape: str  # oval | irregular | spiculated | punctate | amorphous | pleomorphic
    suspicion: float  # 0..1, drives the appearance
    depth_fraction: float  # distance behind the nipple as a fraction of the nipple depth
    clock: float  # angle around the nipple axis (rad): 0 = superior, +pi/2 = lateral
    radial: float  # 0..1, distance from the breast's mid-line at that depth
    size_mm: float  # mass diameter or calcification-cluster extent
    birads: str
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self, side: str) -> dict[str, Any]:
        """JSON-friendly description for the manifest's exam meta."""
        return {
            "side": side,
            "label": self.label,
            "kind": self.kind,
            "shape": self.shape,
            "suspicion": round(self.suspicion, 3),
            "size_mm": round(self.size_mm, 1),
            "birads": self.birads,
            "depth_fraction": round(self.depth_fraction, 3),
            "clock_deg": round(math.degrees(self.clock) % 360.0, 1),
        }


@dataclass
class BreastPhantom:
    """Geometry, tissue and findings of one breast."""

    side: str
    density_fraction: float
    cc: dict[str, float]
    mlo: dict[str, float]
    intensity: dict[str, float]
    lesions: list[Lesion]
    marker: bool
    seed_words: tuple[int, ...]


@dataclass
class ExamPhantom:
    """Everything drawn for one exam before rendering."""

    exam_id: str
    index: int
    age: int
    study_date: str
    density: str
    birads: str
    breasts: dict[str, BreastPhantom]


@dataclass
class RenderedView:
    """One rendered view: 12-bit pixels and one boolean mask per lesion."""

    view: str
    pixels: np.ndarray  # uint16, values 0..4095
    masks: list[tuple[np.ndarray, Lesion]]
    spacing_mm: float


# ----------------------------------------------------------------------------------------------
# Drawing the phantom
# ----------------------------------------------------------------------------------------------


def _choose_density(rng: np.random.Generator) -> str:
    keys = list(DENSITY_PROBS)
    return str(rng.choice(keys, p=[DENSITY_PROBS[k] for k in keys]))


def _lesion(rng: np.random.Generator, label: str) -> Lesion:
    """Draw one lesion; its appearance follows a label-dependent suspicion."""
    s = float(rng.beta(5.0, 2.0) if label == "malignant" else rng.beta(2.0, 5.0))
    p_mass = 0.6 if label == "malignant" else 0.75
    kind = "mass" if rng.random() < p_mass else "calcification"
    params: dict[str, Any] = {}
    if kind == "mass":
        shape = "oval" if s < 0.4 else ("irregular" if s < 0.62 else "spiculated")
        size = float(np.clip(rng.normal(11.0 + 6.0 * s, 3.0), 6.0, 26.0))
        n_harm = 3 + int(7 * s)
        harm = []
        for k in range(2, 2 + n_harm):
            amp = (0.02 + 0.22 * s**1.5) * rng.uniform(0.3, 1.0) / (1.0 + 0.25 * (k - 2))
            harm.append((k, float(amp), float(rng.uniform(0, 2 * np.pi))))
        n_spic = int(round(max(0.0, s - 0.5) * 40 * rng.uniform(0.7, 1.3)))
        spicules = [
            (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(1.4, 2.2 + 1.5 * s)), float(rng.uniform(0.3, 0.8)))
            for _ in range(n_spic)
        ]
        params.update(
            harmonics=harm,
            spicules=spicules,
            # Benign masses tend to be wider than tall ("parallel"), suspicious ones rounder.
            elongation=float(rng.uniform(0.55, 0.8) if s < 0.4 else rng.uniform(0.7, 1.0)),
            rotation=float(rng.uniform(0, np.pi)),
            margin_mm=float(0.25 + 1.8 * s**2),
            amplitude=float(rng.uniform(0.5, 0.8)),
            core=float(rng.uniform(0.0, 0.35) * s),
        )
    else:
        shape = "punctate" if s < 0.35 else ("amorphous" if s < 0.6 else "pleomorphic")
        n = int(np.clip(round(4 + 22 * s + rng.normal(0, 3)), 3, 40))
        extent = float(np.clip(rng.normal(6.0 + 8.0 * s, 2.0), 3.0, 18.0))
        # Suspicious clusters spread along a duct (linear/segmental), benign ones are round.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        along = rng.uniform(-0.5, 0.5, n) * extent * (0.6 + 0.8 * s)
        spread = extent * (0.45 - 0.3 * s) * rng.normal(size=(n, 3)) / 2.0
        pos = along[:, None] * direction[None, :] + spread
        mean_size = 1.1 - 0.7 * s
        sizes = np.clip(rng.normal(mean_size, 0.15 + 0.2 * s, n), 0.2, 1.8)
        aspect = 1.0 + rng.gamma(1.0 + 2.0 * s, 0.3 + 0.7 * s, n)
        params.update(
            positions=pos.tolist(),
            sizes=sizes.tolist(),
            aspects=aspect.tolist(),
            angles=rng.uniform(0, 180, n).tolist(),
            brightness=rng.uniform(0.75, 1.0, n).tolist(),
            density_halo=float(rng.uniform(0.0, 0.3) * s),
        )
        size = extent
    return Lesion(
        label=label,
        kind=kind,
        shape=shape,
        suspicion=s,
        depth_fraction=float(rng.uniform(0.2, 0.8)),
        clock=float(rng.uniform(0, 2 * np.pi)),
        radial=float(rng.uniform(0.0, 0.7)),
        size_mm=size,
        birads=_finding_birads(s + float(rng.normal(0.0, 0.07))),
        params=params,
    )


def _finding_birads(read_suspicion: float) -> str:
    if read_suspicion < 0.22:
        return "2"
    if read_suspicion < 0.38:
        return "3"
    if read_suspicion < 0.52:
        return "0"
    if read_suspicion < 0.8:
        return "4"
    return "5"


def _breast(
    rng: np.random.Generator, side: str, density: str, woman: dict[str, float], labels: list[str], seed_words: tuple[int, ...]
) -> BreastPhantom:
    lo, hi = DENSITY_FRACTION[density]
    depth = woman["depth"] * rng.uniform(0.95, 1.05)
    half = woman["half"] * rng.uniform(0.95, 1.05)
    b_up = half * rng.uniform(0.9, 1.1)
    b_dn = half * rng.uniform(0.9, 1.1)
    yc = DETECTOR_MM[0] / 2 + rng.uniform(-12, 12)
    yc = float(np.clip(yc, b_up + 25.0, DETECTOR_MM[0] - b_dn - 15.0))
    cc = dict(a=depth, b_up=b_up, b_dn=b_dn, yc=yc, p=rng.uniform(1.8, 2.6))
    a_mlo = depth * rng.uniform(1.02, 1.15)
    x_top = min(rng.uniform(35, 62), 0.65 * a_mlo)
    y_n = rng.uniform(135, 172)
    y_f = min(DETECTOR_MM[0] - 8.0, y_n + rng.uniform(75, 110))
    mlo = dict(
        a=a_mlo,
        x_top=x_top,
        y_n=y_n,
        y_f=y_f,
        p1=rng.uniform(1.15, 1.5),
        p2=rng.uniform(1.8, 2.5),
        pw=x_top * rng.uniform(0.7, 0.95),
        ph=y_n * rng.uniform(0.5, 0.85),
        pc=rng.uniform(0.0, 0.25),
    )
    intensity = dict(
        fat=rng.uniform(600, 800),
        gain=rng.uniform(1500, 1900),
        skin=rng.uniform(250, 450),
        pect=rng.uniform(2300, 2850),
        calc=rng.uniform(1700, 2400),
        bg=rng.uniform(4, 12),
    )
    lesions = [_lesion(rng, lab) for lab in labels]
    _spread_lesions(rng, lesions, cc, mlo)
    return BreastPhantom(
        side=side,
        density_fraction=float(rng.uniform(lo, hi)),
        cc=cc,
        mlo=mlo,
        intensity=intensity,
        lesions=lesions,
        marker=bool(rng.random() < 0.4),
        seed_words=seed_words,
    )


def _spread_lesions(rng: np.random.Generator, lesions: list[Lesion], cc: dict[str, float], mlo: dict[str, float]) -> None:
    """Re-draw positions so two lesions of a breast do not overlap in either view."""
    for i, les in enumerate(lesions):
        for _ in range(60):
            clash = False
            for angle, g in (("CC", cc), ("MLO", mlo)):
                x, y = _lesion_centre(angle, g, les)
                for o in lesions[:i]:
                    ox, oy = _lesion_centre(angle, g, o)
                    reach = 0.5 * (les.size_mm * _reach(les) + o.size_mm * _reach(o)) + 6.0
                    clash |= math.hypot(x - ox, y - oy) < reach
            if not clash:
                break
            les.depth_fraction = float(rng.uniform(0.2, 0.8))
            les.clock = float(rng.uniform(0, 2 * np.pi))
            les.radial = float(rng.uniform(0.0, 0.8))


def _reach(les: Lesion) -> float:
    """How far (in diameters) a lesion's visible signs extend: spicules reach beyond the core."""
    spic = les.params.get("spicules") or []
    return max([1.0] + [s[1] for s in spic])


def draw_exam(seed: int, index: int, prevalence: float = 0.25, benign_prevalence: float = 0.3, id_prefix: str | None = None) -> ExamPhantom:
    """Draw exam ``index`` of the cohort seeded ``seed`` (no pixels yet; see :func:`render_view`)."""
    seed = C.check_seed(seed)
    rng = C.sub_rng(seed, index, _STREAM_EXAM)
    prefix = f"syn{seed}-" if id_prefix is None else id_prefix
    exam_id = f"{prefix}{index + 1:04d}"
    density = _choose_density(rng)
    age = int(np.clip(round(rng.normal(57, 9)), 40, 85))
    date = _dt.date(2014, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 6 * 365)))
    woman = dict(depth=rng.uniform(60, 125), half=rng.uniform(65, 105))
    findings: dict[str, list[str]] = {"L": [], "R": []}
    if C.weyl_fraction(seed, index, 0) < prevalence:
        side = "L" if rng.random() < 0.5 else "R"
        findings[side].append("malignant")
        if rng.random() < 0.04:
            findings["R" if side == "L" else "L"].append("malignant")
    if C.weyl_fraction(seed, index, 1) < benign_prevalence:
        side = "L" if rng.random() < 0.5 else "R"
        findings[side].append("benign")
        if rng.random() < 0.2:
            findings[side if rng.random() < 0.5 else ("R" if side == "L" else "L")].append("benign")
    breasts = {
        side: _breast(rng, side, density, woman, findings[side], (seed, index, 0 if side == "L" else 1))
        for side in ("L", "R")
    }
    severities = [les.birads for b in breasts.values() for les in b.lesions]
    if not severities:
        false_recall = 0.02 + 0.03 * "ABCD".index(density)
        severities = ["0" if rng.random() < false_recall else "1"]
    birads = max(severities, key=BIRADS_SEVERITY.index)
    return ExamPhantom(exam_id, index, age, date.isoformat(), density, birads, breasts)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _profile(angle: str, g: dict[str, float], y: np.ndarray) -> np.ndarray:
    """Skin-line position x_max(y) in mm (chest wall at x = 0) for rows at heights y (mm)."""
    if angle == "CC":
        t = np.where(y < g["yc"], (y - g["yc"]) / g["b_up"], (y - g["yc"]) / g["b_dn"])
        base = 1.0 - np.abs(t) ** g["p"]
        x = g["a"] * np.clip(base, 0.0, 1.0) ** (1.0 / g["p"])
        yn = g["yc"]
    else:
        tu = np.clip(y / g["y_n"], 0.0, 1.0)
        upper = g["x_top"] + (g["a"] - g["x_top"]) * np.clip(1.0 - (1.0 - tu) ** g["p1"], 0, 1) ** (1.0 / g["p1"])
        tl = np.clip((y - g["y_n"]) / (g["y_f"] - g["y_n"]), 0.0, 1.0)
        lower = g["a"] * np.clip(1.0 - tl ** g["p2"], 0.0, 1.0) ** (1.0 / g["p2"])
        x = np.where(y < g["y_n"], upper, lower)
        x = np.where((y < 0) | (y > g["y_f"]), 0.0, x)
        yn = g["y_n"]
    # Nipple bump.
    return x + 3.0 * np.exp(-(((y - yn) / 4.0) ** 2)) * (x > 0)


def _pectoral_x(g: dict[str, float], y: np.ndarray) -> np.ndarray:
    """Pectoral-muscle edge x(y) in mm for an MLO view (0 below the muscle)."""
    t = np.clip(y / g["ph"], 0.0, 1.0)
    return g["pw"] * (1.0 - t) * (1.0 + g["pc"] * np.sin(np.pi * t))


def _nipple(angle: str, g: dict[str, float]) -> tuple[float, float]:
    return (g["a"], g["yc"] if angle == "CC" else g["y_n"])


def _column_extent(angle: str, g: dict[str, float], x: float, margin: float) -> tuple[float, float] | None:
    """Rows (mm) at column ``x`` that are at least ``margin`` inside the breast and off the muscle."""
    ys = np.arange(0.0, DETECTOR_MM[0], 0.5)
    ok = _profile(angle, g, ys) > x + margin
    if angle == "MLO":
        ok &= x > _pectoral_x(g, ys) + margin
        ok &= ys > margin
    ok &= (ys > margin) & (ys < DETECTOR_MM[0] - margin)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    # Erode vertically by the margin as well.
    lo, hi = ys[idx[0]] + margin, ys[idx[-1]] - margin
    if hi <= lo:
        return None
    return float(lo), float(hi)


def _lesion_centre(angle: str, g: dict[str, float], les: Lesion) -> tuple[float, float]:
    """Lesion centre (x, y) in mm in canonical orientation; same depth and quadrant in both views."""
    margin = 0.5 * les.size_mm * min(_reach(les), 1.6) + 4.0
    frac = les.depth_fraction
    for _ in range(12):
        x = g["a"] * (1.0 - frac)
        ext = _column_extent(angle, g, x, margin)
        if ext is not None:
            lo, hi = ext
            centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
            # CC: lateral (clock = +90 deg) at the top; MLO: superior (clock = 0) at the top.
            offset = -math.sin(les.clock) if angle == "CC" else -math.cos(les.clock)
            return x, centre + les.radial * offset * half
        frac = 0.5 * frac + 0.25  # move toward the middle of the breast until it fits
        margin *= 0.9
    nx, ny = _nipple(angle, g)
    return 0.5 * nx, ny


# ----------------------------------------------------------------------------------------------
# Rendering
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


def _ss_factor(px: float) -> int:
    return int(min(4, max(1, math.ceil(px / 0.25))))


def _render_mass(
    les: Lesion, angle: str, px: float, rot_extra: float, gain: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Density patch and mask of a mass centred on the patch; returns (values, mask, half-size px)."""
    p = les.params
    radius = 0.5 * les.size_mm
    spic_len = max([s[1] for s in p["spicules"]], default=1.0)
    half = int(math.ceil((radius * max(1.3, spic_len) + 3.0 * p["margin_mm"] + 2.0) / px)) + 1
    coords = (np.arange(-half, half + 1, dtype=np.float32)) * px
    dy, dx = np.meshgrid(coords, coords, indexing="ij")
    rot = p["rotation"] + rot_extra
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / p["elongation"]
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r_out = radius * C.radius_profile(theta, p["harmonics"])
    w = max(p["margin_mm"], 0.5 * px)
    prof = np.clip((r_out - rho) / w + 0.5, 0.0, 1.0)
    dome = np.sqrt(np.clip(1.0 - (rho / np.maximum(r_out, 1e-3)) ** 2, 0.0, 1.0))
    values = gain * p["amplitude"] * prof * (0.45 + 0.55 * dome + p["core"] * dome**2)
    mask = rho < r_out
    if p["spicules"]:
        size = 2 * half + 1
        factor = _ss_factor(px)

        def draw(canvas: np.ndarray, f: int) -> None:
            c = (half + 0.5) * f
            for ang, length, width in p["spicules"]:
                a = ang + rot
                r0, r1 = 0.6 * radius, length * radius
                for seg in range(3):  # taper: three segments getting thinner
                    ra = r0 + (r1 - r0) * seg / 3
                    rb = r0 + (r1 - r0) * (seg + 1) / 3
                    wmm = width * (1.0 - 0.3 * seg)
                    thick = max(1, int(round(wmm / px * f)))
                    pa = (int(round(c + ra / px * f * math.cos(a))), int(round(c + ra / px * f * math.sin(a))))
                    pb = (int(round(c + rb / px * f * math.cos(a))), int(round(c + rb / px * f * math.sin(a))))
                    # Lines thicker than the spicule (at coarse pixels) carry proportionally less density.
                    level = min(1.0, wmm / (thick * px / f))
                    cv2.line(canvas, pa, pb, level, thick, cv2.LINE_8)

        lines = C.render_supersampled((size, size), factor, draw)
        sigma = max(0.3 / px, 0.5)
        lines = cv2.GaussianBlur(lines, (0, 0), sigma)
        values = np.maximum(values, gain * 0.45 * p["amplitude"] * np.clip(lines * 1.6, 0, 1))
    return values.astype(np.float32), mask, half


def _calc_points(les: Lesion, angle: str) -> np.ndarray:
    """Calcification centres (n, 2) in mm relative to the cluster centre, projected for a view."""
    pos = np.asarray(les.params["positions"], dtype=np.float64)
    # 3-D offsets: (toward nipple, lateral, superior). CC shows lateral up; MLO shows superior up.
    if angle == "CC":
        return np.stack([pos[:, 0], -pos[:, 1]], axis=1)
    return np.stack([pos[:, 0], -pos[:, 2]], axis=1)


def _render_calcs(les: Lesion, angle: str, px: float, amp: float, gain: float) -> tuple[np.ndarray, np.ndarray, int]:
    p = les.params
    pts = _calc_points(les, angle)
    extent = float(np.abs(pts).max()) + 3.0
    half = int(math.ceil(extent / px)) + 2
    size = 2 * half + 1
    factor = _ss_factor(px)
    sizes, aspects, angles, bright = p["sizes"], p["aspects"], p["angles"], p["brightness"]

    def draw(canvas: np.ndarray, f: int) -> None:
        c = (half + 0.5) * f
        shift = 4
        for (x, y), s, asp, ang, b in zip(pts, sizes, aspects, angles, bright):
            major = 0.5 * s * math.sqrt(asp) / px * f
            minor = 0.5 * s / math.sqrt(asp) / px * f
            centre = (int(round((c + x / px * f) * 2**shift)), int(round((c + y / px * f) * 2**shift)))
            axes = (max(1, int(round(major * 2**shift))), max(1, int(round(minor * 2**shift))))
            cv2.ellipse(canvas, centre, axes, float(ang), 0, 360, float(b), -1, cv2.LINE_8, shift)

    spots = C.render_supersampled((size, size), factor, draw)
    spots = cv2.GaussianBlur(spots, (0, 0), max(0.08 / px, 0.35))
    values = amp * spots
    # Region mask: convex hull of the specks, grown by 1.5 mm (how calcification ROIs are outlined).
    centres = np.round(pts / px + half).astype(np.int32)
    mask8 = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask8, cv2.convexHull(centres), 1)
    grow = max(1, int(round(1.5 / px)))
    mask8 = cv2.dilate(mask8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    if p["density_halo"] > 0:
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32) * px
        r = 0.5 * les.size_mm + 2.0
        values = values + gain * p["density_halo"] * np.exp(-(xx**2 + yy**2) / (2 * r * r))
    return values.astype(np.float32), mask8.astype(bool), half


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


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

_VIEW_CODES = {
    "CC": ("R-10242", "SRT", "cranio-caudal"),
    "MLO": ("R-10226", "SRT", "medio-lateral oblique"),
}
# Row direction \ column direction, for the display convention above (lateral up in CC).
_PATIENT_ORIENTATION = {"L-CC": "A\\R", "R-CC": "P\\L", "L-MLO": "A\\FR", "R-MLO": "P\\FL"}
_MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["breastscreen-synthetic", *[str(p) for p in parts]])


def write_mammo_dicom(path: Path, exam: ExamPhantom, rendered: RenderedView, seed: int) -> None:
    """Write one view as a Digital Mammography X-Ray (For Presentation) DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    side, angle = rendered.view.split("-")
    study_uid = _uid(seed, exam.exam_id, "study")
    series_uid = _uid(seed, exam.exam_id, "series", rendered.view)
    sop_uid = _uid(seed, exam.exam_id, "sop", rendered.view)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date = exam.study_date.replace("-", "")
    ds.SOPClassUID = _MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(seed, exam.exam_id, "frame", side)
    ds.Modality = "MG"
    ds.PatientID = f"P{exam.exam_id}"
    ds.PatientName = f"SYNTHETIC^{exam.exam_id}"
    ds.PatientAge = f"{exam.age:03d}Y"
    ds.PatientSex = "F"
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.StudyTime = "090000"
    ds.AccessionNumber = exam.exam_id[:16]
    ds.StudyID = str(exam.index + 1)
    ds.SeriesNumber = MG_VIEWS.index(rendered.view) + 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "breastscreen synthetic phantom"
    ds.StudyDescription = "Synthetic screening mammogram (not a patient)"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side
    ds.Laterality = side
    ds.ViewPosition = angle
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _VIEW_CODES[angle]
    ds.ViewCodeSequence = Sequence([code])
    ds.PatientOrientation = _PATIENT_ORIENTATION[rendered.view]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rendered.pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    sp = f"{rendered.spacing_mm:.10g}"
    ds.PixelSpacing = [sp, sp]
    ds.ImagerPixelSpacing = [sp, sp]
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = rendered.pixels.astype("<u2").tobytes()
    with C.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _exam_record(exam: ExamPhantom, views: dict[str, list[ImageRef]], seed: int, scale: float) -> Exam:
    labels = {}
    findings = []
    breast_birads = {}
    for side, b in exam.breasts.items():
        labs = {les.label for les in b.lesions}
        labels[side] = BreastLabel(benign=int("benign" in labs), malignant=int("malignant" in labs))
        findings.extend(les.summary(side) for les in b.lesions)
        sev = [les.birads for les in b.lesions] or ["1"]
        breast_birads[side] = max(sev, key=BIRADS_SEVERITY.index)
    return Exam(
        exam_id=exam.exam_id,
        modality=Modality.MG,
        views=views,
        patient_id=f"P{exam.exam_id}",
        study_date=exam.study_date,
        age=float(exam.age),
        density=exam.density,
        birads=exam.birads,
        labels=labels,
        meta={
            "synthetic": True,
            "generator": "breastscreen.synthetic.mammo",
            "seed": seed,
            "index": exam.index,
            "scale": scale,
            "breast_birads": breast_birads,
            "findings": findings,
        },
    )


def generate_mammo_cohort(
    out_dir: str | os.PathLike[str],
    n_exams: int,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    fmt: str = "png",
    prevalence: float = 0.25,
    benign_prevalence: float = 0.3,
    id_prefix: str | None = None,
    overwrite: bool = False,
    progress: C.ProgressFn | None = None,
) -> list[Exam]:
    """Write a synthetic screening-mammography cohort and its ``manifest.jsonl``; return the exams.

    Args:
        out_dir: folder to write into (created; must be empty unless ``overwrite``).
        n_exams: number of four-view exams.
        seed: cohort seed; the same seed and arguments give identical files. Exam ``i`` does
            not depend on ``n_exams``.
        scale: resolution factor, pixels of 0.1/scale mm (1.0 = 3000 x 2000 full resolution).
        fmt: ``"png"`` (16-bit PNG holding 12-bit values, pHYs = pixel spacing) or ``"dicom"``.
        prevalence: fraction of exams with a malignant finding (in one breast, rarely both).
        benign_prevalence: fraction of exams with a benign finding (independent of the above).
        id_prefix: exam-id prefix (no underscore); default ``syn<seed>-`` so cohorts with
            different seeds never share exam ids.
        overwrite: allow a non-empty ``out_dir`` (files of a previous cohort there are replaced).
        progress: optional callback ``progress(done, total)`` after each exam.
    """
    n_exams = C.check_count("n_exams", n_exams)
    seed = C.check_seed(seed)
    scale = _check_scale(scale)
    C.check_format(fmt)
    prevalence = C.check_fraction("prevalence", prevalence)
    benign_prevalence = C.check_fraction("benign_prevalence", benign_prevalence)
    C.check_id_prefix(id_prefix)
    out = C.prepare_out_dir(out_dir, overwrite)
    exams: list[Exam] = []
    for i in range(n_exams):
        phantom = draw_exam(seed, i, prevalence, benign_prevalence, id_prefix)
        views: dict[str, list[ImageRef]] = {}
        for view in MG_VIEWS:
            r = render_view(phantom, view, scale)
            stem = f"{phantom.exam_id}_{view}"
            if fmt == "png":
                img_path = out / f"{stem}.png"
                C.write_png(img_path, r.pixels, r.spacing_mm)
            else:
                img_path = out / f"{stem}.dcm"
                write_mammo_dicom(img_path, phantom, r, seed)
            mask_refs, rois = [], []
            counters = {"benign": 0, "malignant": 0}
            for m, les in r.masks:
                box = C.mask_box(m)
                if box is None:
                    continue
                k = counters[les.label]
                counters[les.label] += 1
                mpath = out / f"{stem}_mask_{les.label}_{k}.png"
                C.write_mask(mpath, m, r.spacing_mm)
                mask_refs.append(LesionMask(str(mpath.resolve()), les.label, les.kind))
                rois.append(ROI(box, les.label, les.kind))
            side, angle = view.split("-")
            views[view] = [
                ImageRef(
                    path=str(img_path.resolve()),
                    pixel_spacing=(r.spacing_mm, r.spacing_mm),
                    masks=mask_refs,
                    rois=rois,
                    meta={
                        "laterality": side,
                        "view_position": angle,
                        "chest_wall": "left" if side == "L" else "right",
                        "bits_stored": 12,
                    },
                )
            ]
        exams.append(_exam_record(phantom, views, seed, scale))
        if progress is not None:
            progress(i + 1, n_exams)
    write_manifest(exams, out / "manifest.jsonl")
    return exams


def _check_scale(scale: float) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise BreastscreenError(f"scale must be a number in [0.02, 1.0], got {scale!r}") from None
    if not 0.02 <= s <= 1.0:
        raise BreastscreenError(f"scale must be in [0.02, 1.0] (1.0 = 0.1 mm pixels), got {scale!r}")
    return s
