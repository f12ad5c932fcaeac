"""Lesions of the mammography phantom: drawing a lesion's description and rendering its patch.

A :class:`Lesion` is described in millimetres and shared by the CC and MLO view of its breast;
:func:`_render_mass` and :func:`_render_calcs` turn it into a density patch and a boolean mask
for one view. Where a lesion sits in a view is breast geometry (see ``_mammo_phantom``).
See :mod:`breastscreen.synthetic.mammo` for the phantom model as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from breastscreen.synthetic import _common as C


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


# ----------------------------------------------------------------------------------------------
# Drawing a lesion's description
# ----------------------------------------------------------------------------------------------


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


def _reach(les: Lesion) -> float:
    """How far (in diameters) a lesion's visible signs extend: spicules reach beyond the core."""
    spic = les.params.get("spicules") or []
    return max([1.0] + [s[1] for s in spic])


# ----------------------------------------------------------------------------------------------
# Rendering a lesion into one view
# ----------------------------------------------------------------------------------------------


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
