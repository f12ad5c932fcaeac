"""Mammography phantom description: breast shape, findings and the exam, before any pixels.

Everything here is resolution independent (millimetres): :func:`draw_exam` draws an exam's
density, age, date and per-breast geometry and lesions; the geometry helpers give the skin
line, pectoral muscle, nipple and where a lesion sits in the CC or MLO view.
See :mod:`breastscreen.synthetic.mammo` for the phantom model as a whole.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from breastscreen.labels import REF_SPACING_MM
from breastscreen.synthetic import _common as C
from breastscreen.synthetic._mammo_lesions import Lesion, _lesion, _reach

FULL_SHAPE = (3000, 2000)  # rows, columns at 0.1 mm
DETECTOR_MM = (FULL_SHAPE[0] * REF_SPACING_MM, FULL_SHAPE[1] * REF_SPACING_MM)
DENSITY_FRACTION = {"A": (0.03, 0.12), "B": (0.15, 0.33), "C": (0.40, 0.60), "D": (0.65, 0.85)}
DENSITY_PROBS = {"A": 0.1, "B": 0.4, "C": 0.4, "D": 0.1}
BIRADS_SEVERITY = ("1", "2", "3", "0", "4", "5")  # least to most concerning
_STREAM_EXAM, _STREAM_RENDER = 0, 1


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


# ----------------------------------------------------------------------------------------------
# Drawing the phantom
# ----------------------------------------------------------------------------------------------


def _choose_density(rng: np.random.Generator) -> str:
    keys = list(DENSITY_PROBS)
    return str(rng.choice(keys, p=[DENSITY_PROBS[k] for k in keys]))


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
