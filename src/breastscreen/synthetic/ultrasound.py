"""Synthetic breast-ultrasound exams: bags of B-mode images per breast with known lesion images.

Each exam is one patient visit; one or both breasts are imaged, each with a variable number of
8-bit images (``min_images``..``max_images``, default 1-6, at most 20). A breast carries at most
one finding, which appears in only some of its images (every image when the breast has one
image); ``ImageRef.meta["has_lesion"]`` says which, so multiple-instance models can be checked
for attending to the right image.

Image model:
- field of view: a linear-probe rectangle or a curved-probe sector (fan) on a black canvas;
- tissue layers along depth (skin, subcutaneous fat with Cooper's ligaments, fibroglandular
  tissue, retromammary fat, pectoral muscle), wavy boundaries, smooth echogenicity variation;
- fully developed speckle: the magnitude of a smoothed complex Gaussian field (Rayleigh
  statistics), multiplied into the echogenicity; depth attenuation partly corrected by a
  time-gain ramp; power-law (log-like) compression to 8 bits;
- lesions: anechoic cysts (thin bright wall, posterior enhancement; benign), oval
  circumscribed hypoechoic solid masses (mostly benign) and irregular, taller-than-wide,
  very hypoechoic masses with an echogenic halo and posterior acoustic shadowing (mostly
  malignant). As in the mammography phantom, one latent suspicion per lesion (Beta(2, 5)
  benign, Beta(5, 2) malignant) drives the appearance, so the classes overlap;
- burned-in device text, a depth scale with '+' ticks outside the field of view, and, in about
  half of the lesion images, two '+' calipers on the lesion's long axis with a measurement
  line of text, as on real scans.

A lesion image has the lesion's mask and bounding-box ROI, with ``lesion_id`` ``<side>1``
(``L1``/``R1``): the breast's one lesion, the same id in each image that shows it.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import BreastLabel, Exam, ImageRef, LesionMask, Modality, ROI
from breastscreen.errors import BreastscreenError
from breastscreen.synthetic import _common as C

MAX_IMAGES = 20
US_BIRADS_SEVERITY = ("1", "2", "3", "4", "4A", "4B", "4C", "5")
_US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


@dataclass
class UsLesion:
    """The single finding of a breast, shared by every image that shows it."""

    label: str  # benign | malignant
    kind: str  # cyst | mass
    shape: str  # cyst | oval | irregular
    suspicion: float
    size_mm: float
    birads: str
    params: dict[str, Any]


def _draw_lesion(rng: np.random.Generator, label: str) -> UsLesion:
    s = float(rng.beta(5.0, 2.0) if label == "malignant" else rng.beta(2.0, 5.0))
    if label == "benign" and rng.random() < 0.4:
        kind, shape = "cyst", "cyst"
        s = min(s, 0.3) * 0.5
    else:
        kind = "mass"
        shape = "oval" if s < 0.5 else "irregular"
    size = float(np.clip(rng.normal(9.0 + 8.0 * s, 3.0), 4.0, 25.0))
    harmonics = []
    n_harm = 3 + int(8 * s)
    for k in range(2, 2 + n_harm):
        amp = (0.01 + 0.2 * s**1.5) * rng.uniform(0.3, 1.0) / (1.0 + 0.2 * (k - 2))
        harmonics.append((k, float(amp), float(rng.uniform(0, 2 * np.pi))))
    if kind == "cyst":
        echo, aspect, posterior = rng.uniform(0.0, 0.05), rng.uniform(0.6, 0.95), rng.uniform(0.5, 0.9)
    else:
        echo = float(np.clip(0.45 - 0.35 * s + rng.normal(0, 0.05), 0.06, 0.6))
        # Benign solid masses are wider than tall (aspect < 1); suspicious ones taller than wide.
        aspect = float(np.clip(0.55 + 0.8 * s + rng.normal(0, 0.1), 0.45, 1.5))
        posterior = float(np.clip(0.25 - 1.8 * max(0.0, s - 0.35) + rng.normal(0, 0.1), -0.8, 0.3))
    read = s + float(rng.normal(0.0, 0.08))
    if kind == "cyst":
        birads = "2"
    elif read < 0.3:
        birads = "3"
    elif read < 0.45:
        birads = "4A"
    elif read < 0.6:
        birads = "4B"
    elif read < 0.8:
        birads = "4C"
    else:
        birads = "5"
    return UsLesion(
        label=label,
        kind=kind,
        shape=shape,
        suspicion=s,
        size_mm=size,
        birads=birads,
        params=dict(
            harmonics=harmonics,
            echo=float(echo),
            aspect=float(aspect),
            posterior=float(posterior),
            halo=float(max(0.0, s - 0.55) * 1.5),
            heterogeneity=float(0.1 + 0.5 * s),
            margin_mm=float(0.15 + 1.0 * s**2),
        ),
    )


def _device(rng: np.random.Generator) -> dict[str, Any]:
    sector = bool(rng.random() < 0.3)
    h = int(rng.integers(330, 470))
    w = int(rng.integers(400, 540))
    depth_mm = float(rng.uniform(30.0, 45.0))
    return dict(
        sector=sector,
        shape=(h, w),
        depth_mm=depth_mm,
        top=int(rng.integers(28, 44)),
        side_margin=int(rng.integers(40, 70)),
        bottom=int(rng.integers(12, 30)),
        half_angle=float(rng.uniform(0.45, 0.62)),
        apex_ratio=float(rng.uniform(0.8, 1.4)),
        probe=str(rng.choice(["C5-2", "C9-4"] if sector else ["L12-5", "L14-6", "ML6-15"])),
        gain=float(rng.uniform(0.9, 1.15)),
        attenuation=float(rng.uniform(0.02, 0.05)),
    )


def _fov_mask(dev: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """Field-of-view mask, its box, and per-pixel (depth, lateral) coordinates in FOV pixels."""
    h, w = dev["shape"]
    top, sm, bottom = dev["top"], dev["side_margin"], dev["bottom"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if not dev["sector"]:
        mask = (yy >= top) & (yy < h - bottom) & (xx >= sm) & (xx < w - sm)
        depth = yy - top
        lateral = xx - sm
    else:
        depth_px = h - bottom - top
        half_w = 0.5 * w - sm
        r0 = depth_px * dev["apex_ratio"]
        ang = min(dev["half_angle"], math.asin(min(1.0, half_w / (r0 + depth_px))))
        apex_y = top - r0
        cx = 0.5 * w
        r = np.hypot(xx - cx, yy - apex_y)
        theta = np.arctan2(xx - cx, yy - apex_y)
        mask = (r >= r0) & (r <= r0 + depth_px) & (np.abs(theta) <= ang)
        depth = r - r0
        lateral = (theta + ang) * (r0 + 0.5 * depth_px)
    box = C.mask_box(mask)
    if box is None:
        raise BreastscreenError(f"ultrasound field of view is empty for image size {h}x{w}")
    return mask, box, depth, lateral


def _speckle(shape: tuple[int, int], rng: np.random.Generator, lateral: float, axial: float) -> np.ndarray:
    re = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=lateral, sigmaY=axial)
    im = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=lateral, sigmaY=axial)
    mag = np.hypot(re, im)
    return mag / max(float(mag.mean()), 1e-6)


@dataclass
class UsRender:
    """One rendered image with its ground truth: pixels, lesion mask and burned-in annotation mask."""

    pixels: np.ndarray
    lesion_mask: np.ndarray | None
    annotation_mask: np.ndarray
    meta: dict[str, Any]


def render_us_image(
    rng: np.random.Generator, dev: dict[str, Any], lesion: UsLesion | None, side: str, clock: int, calipers: bool
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Render one B-mode image; returns (uint8 pixels, lesion mask or None, meta)."""
    r = render_us_image_full(rng, dev, lesion, side, clock, calipers)
    return r.pixels, r.lesion_mask, r.meta


def render_us_image_full(
    rng: np.random.Generator, dev: dict[str, Any], lesion: UsLesion | None, side: str, clock: int, calipers: bool,
    inner_labels: bool = False,
) -> UsRender:
    """Render one B-mode image with its annotation mask (every burned-in mark, inside or outside the FOV).

    ``inner_labels`` adds the marks real screen captures carry inside the image area (a
    :func:`_inner_label_marks` label, 'x' calipers, a dotted line), drawn from ``rng`` after
    every other draw, so the rest of the image is the same as without them.
    """
    h, w = dev["shape"]
    fov, box, depth, lateral = _fov_mask(dev)
    depth_px = float(h - dev["bottom"] - dev["top"])
    mm_per_px = dev["depth_mm"] / depth_px
    z = depth * mm_per_px  # depth in mm

    # Layer boundaries (mm) along the lateral axis, wavy.
    def boundary(mean: float, amp: float, corr: float) -> np.ndarray:
        curve = mean + C.smooth_curve(w, rng, corr, amp)
        return curve.astype(np.float32)

    cols = np.clip(np.round(lateral).astype(np.int32), 0, w - 1)
    skin = boundary(rng.uniform(1.5, 2.5), 0.2, 60)[cols]
    sub = boundary(rng.uniform(5.0, 10.0), 1.5, 50)[cols]
    gland = boundary(rng.uniform(18.0, 27.0), 2.5, 60)[cols]
    retro = boundary(rng.uniform(25.0, 33.0), 1.5, 80)[cols]
    echo = np.full((h, w), 0.9, np.float32)  # pectoral default below
    echo = np.where(z < retro, 0.35, echo)  # retromammary fat
    tex = C.power_law_noise((h, w), 2.5, rng)
    smooth = C.power_law_noise((h, w), 3.0, rng)
    glandular_tex = 0.75 + 0.35 * tex
    echo = np.where(z < gland, np.clip(glandular_tex, 0.35, 1.3), echo)
    echo = np.where(z < sub, 0.32, echo)  # subcutaneous fat
    echo = np.where(z < skin, 1.3, echo)
    echo = cv2.GaussianBlur(echo.astype(np.float32), (0, 0), 1.2)
    # Pectoral striations and Cooper's ligaments (bright thin oblique lines).
    stripes = 0.5 + 0.5 * np.sin(z * 2.2 + 0.15 * lateral + 0.5 * smooth)
    echo = np.where(z > retro + 1.0, echo * (0.7 + 0.5 * stripes), echo)
    lig = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        x0, dx, ph = rng.uniform(0, w), rng.uniform(40, 140) * rng.choice([-1.0, 1.0]), rng.uniform(0, 6.3)
        t = np.linspace(0.0, 1.0, 16)
        pts = np.stack([x0 + dx * t + 6.0 * np.sin(3.0 * t + ph), dev["top"] + (2.0 + 18.0 * t) / mm_per_px], axis=1)
        cv2.polylines(lig, [np.round(pts).astype(np.int32)], False, 1.0, 1, cv2.LINE_8)
    lig = cv2.GaussianBlur(lig, (0, 0), 0.8)
    echo += 0.8 * lig * ((z > skin) & (z < gland))
    echo *= 1.0 + 0.15 * np.roll(smooth, (h // 2, w // 3), axis=(0, 1))

    meta: dict[str, Any] = {"has_lesion": lesion is not None, "fov": "sector" if dev["sector"] else "linear"}
    lesion_mask = None
    cal_points: list[tuple[float, float]] = []
    if lesion is not None:
        p = lesion.params
        size_px = lesion.size_mm * rng.uniform(0.85, 1.15) / mm_per_px
        a_lat = 0.5 * size_px / math.sqrt(p["aspect"])  # half width
        a_ax = 0.5 * size_px * math.sqrt(p["aspect"])  # half height
        x0, y0, x1, y1 = box
        cz = float(np.clip(rng.uniform(9.0, 22.0) / mm_per_px, a_ax + 8, depth_px - a_ax - 20))
        fov_cols = np.flatnonzero(fov[min(h - 1, int(dev["top"] + cz))])
        cx = float(rng.uniform(fov_cols[0] + a_lat + 10, max(fov_cols[0] + a_lat + 11, fov_cols[-1] - a_lat - 10)))
        cy = dev["top"] + cz
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        tilt = rng.uniform(-0.25, 0.25)
        u = (xx - cx) * math.cos(tilt) + (yy - cy) * math.sin(tilt)
        v = -(xx - cx) * math.sin(tilt) + (yy - cy) * math.cos(tilt)
        rho = np.hypot(u / a_lat, v / a_ax)
        theta = np.arctan2(v / a_ax, u / a_lat)
        rr = C.radius_profile(theta + rng.uniform(0, 2 * np.pi), p["harmonics"])
        inside_soft = np.clip((rr - rho) / max(p["margin_mm"] / mm_per_px / max(a_lat, 1.0), 0.02) + 0.5, 0, 1)
        lesion_mask = rho < rr
        interior = p["echo"] * (1.0 + p["heterogeneity"] * np.roll(tex, (h // 3, w // 2), axis=(0, 1)))
        interior = np.clip(interior, 0.0, 2.0)
        echo = echo * (1.0 - inside_soft) + interior * inside_soft
        if lesion.kind == "cyst":
            wall = np.exp(-(((rho - rr) / 0.08) ** 2))
            echo += 0.6 * wall
        if p["halo"] > 0:
            halo = np.exp(-(((rho - rr * 1.15) / 0.12) ** 2)) * (rho > rr)
            echo += p["halo"] * halo
        # Posterior acoustic feature: enhancement (>0) or shadowing (<0) in the columns below.
        below = np.clip((yy - cy) / max(a_ax, 1.0), 0.0, None)
        column = np.exp(-((xx - cx) / (0.8 * a_lat)) ** 4)
        post = p["posterior"] * column * (below > 0) * np.exp(-below / 6.0) * (1.0 - inside_soft)
        echo = echo * np.clip(1.0 + post, 0.05, None)
        lesion_mask &= fov
        meta.update(lesion_kind=lesion.kind, lesion_centre=[round(cx, 1), round(cy, 1)])
        if calipers:
            ang = tilt
            for sgn in (-1, 1):
                cal_points.append((cx + sgn * (a_lat + 3) * math.cos(ang), cy + sgn * (a_lat + 3) * math.sin(ang)))
    meta["calipers_inside"] = bool(cal_points)

    speck = _speckle((h, w), rng, lateral=rng.uniform(1.4, 2.2), axial=rng.uniform(0.7, 1.0))
    atten = np.exp(-dev["attenuation"] * z) * (1.0 + 0.6 * dev["attenuation"] * z)  # TGC ramp
    inten = echo * speck * atten * dev["gain"]
    img = 255.0 * np.clip(inten / 2.2, 0.0, 1.0) ** 0.6
    img += rng.normal(0.0, 2.0, size=img.shape)
    img = np.where(fov, img, 0.0)

    # Burned-in annotations, all in the periphery outside the field of view...
    ann = np.zeros((h, w), bool)
    th = 11.0
    ann |= C.text_mask((h, w), f"{'LEFT' if side == 'L' else 'RIGHT'} BREAST {clock}:00", (6, 4), th)
    ann |= C.text_mask((h, w), dev["probe"], (w - C.text_size(dev["probe"], th)[0] - 6, 4), th)
    scale_x = w - dev["side_margin"] // 2
    for k in range(int(dev["depth_mm"] // 10) + 1):
        y = dev["top"] + k * 10.0 / mm_per_px
        if y < h - 4:
            ann |= C.plus_mask((h, w), (scale_x, y), 3)
    if cal_points:
        text = f"D1 {lesion.size_mm / 10.0:.2f} cm" if lesion is not None else ""
        ann |= C.text_mask((h, w), text, (6, h - int(th) - 6), th)
    ann &= ~fov
    # ...and the calipers on the lesion itself.
    for pt in cal_points:
        ann |= C.plus_mask((h, w), pt, 4)
    img = np.where(ann, 235.0, img)
    if inner_labels:
        inner, value = _inner_label_marks(rng, fov, cal_points)
        inner &= ~ann
        img = np.where(inner, value, img)
        ann |= inner
        meta["inner_labels"] = True
    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    meta["fov_box"] = list(box)
    meta["pixel_spacing_mm"] = round(mm_per_px, 5)
    return UsRender(pixels, lesion_mask, ann, meta)


_INNER_TEXT = ("MAMA ESQUERDA", "MAMA DIREITA", "QSE", "UQINF", "RIGHT 10H 3CM FN", "LT BREAST", "63 ANOS", "5H")


def _inner_label_marks(
    rng: np.random.Generator, fov: np.ndarray, cal_points: list[tuple[float, float]]
) -> tuple[np.ndarray, float]:
    """Marks inside the field of view as on real captures: a text label, and 'x' calipers joined
    by a dotted line (on the lesion when '+' calipers mark it, else at random); (mask, grey value)."""
    h, w = fov.shape
    box = C.mask_box(fov)
    assert box is not None
    x0, y0, x1, y1 = box
    marks = np.zeros((h, w), bool)
    text = str(rng.choice(_INNER_TEXT))
    th = float(rng.uniform(8.0, 13.0))
    tw, tht = C.text_size(text, th)
    tx = int(rng.integers(x0 + 4, max(x0 + 5, x1 - tw - 4)))
    ty = int(rng.integers(y0 + (y1 - y0) // 3, max(y0 + (y1 - y0) // 3 + 1, y1 - tht - 4)))
    marks |= C.text_mask((h, w), text, (tx, ty), th)
    if rng.random() < 0.6:
        if cal_points:
            (ax, ay), (bx, by) = cal_points
            ax, ay, bx, by = ax + 0.0, ay - 0.6 * abs(bx - ax), bx, by + 0.6 * abs(bx - ax)
        else:
            ax, ay = rng.uniform(x0 + 20, x1 - 20), rng.uniform(y0 + 20, y1 - 20)
            ang, length = rng.uniform(0, np.pi), rng.uniform(25, 80)
            bx, by = ax + length * np.cos(ang), ay + length * np.sin(ang)
        canvas = np.zeros((h, w), np.uint8)
        for px, py in ((ax, ay), (bx, by)):
            cx, cy, a = int(round(px)), int(round(py)), 3
            cv2.line(canvas, (cx - a, cy - a), (cx + a, cy + a), 1, 1, cv2.LINE_8)
            cv2.line(canvas, (cx - a, cy + a), (cx + a, cy - a), 1, 1, cv2.LINE_8)
        n = int(np.hypot(bx - ax, by - ay) // 6)
        if rng.random() < 0.5 and n >= 3:
            for t in np.linspace(0.0, 1.0, n + 1)[1:-1]:
                dx, dy = int(round(ax + t * (bx - ax))), int(round(ay + t * (by - ay)))
                canvas[max(dy - 1, 0):dy + 1, max(dx - 1, 0):dx + 1] = 1
        marks |= canvas > 0
    return marks & fov, float(rng.uniform(170.0, 255.0))


def _write_us_dicom(path: Path, pixels: np.ndarray, exam_id: str, side: str, k: int, seed: int, date: str, age: int, spacing: float) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["breastscreen-synthetic-us", str(seed), exam_id, *map(str, parts)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid("sop", side, k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = _US_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series", side)
    ds.Modality = "US"
    ds.PatientID = f"P{exam_id}"
    ds.PatientName = f"SYNTHETIC^{exam_id}"
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientSex = "F"
    ds.StudyDate = date.replace("-", "")
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = "100000"
    ds.AccessionNumber = exam_id[:16]
    ds.SeriesNumber = 1 if side == "L" else 2
    ds.InstanceNumber = k + 1
    ds.Manufacturer = "breastscreen synthetic phantom"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side
    ds.Laterality = side
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    sp = f"{spacing:.10g}"
    ds.PixelSpacing = [sp, sp]
    ds.PixelData = pixels.tobytes()
    with C.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def generate_us_cohort(
    out_dir: str | os.PathLike[str],
    n_patients: int,
    seed: int = 0,
    min_images: int = 1,
    max_images: int = 6,
    prevalence: float = 0.3,
    benign_prevalence: float = 0.35,
    both_breasts: float = 0.5,
    fmt: str = "png",
    id_prefix: str | None = None,
    overwrite: bool = False,
    progress: C.ProgressFn | None = None,
    annotation_masks: bool = False,
    inner_labels: bool = False,
) -> list[Exam]:
    """Write a synthetic breast-ultrasound cohort and its ``manifest.jsonl``; return the exams.

    Args:
        out_dir: folder to write into (created; must be empty unless ``overwrite``).
        n_patients: number of exams (one patient visit each).
        seed: cohort seed; same seed and arguments give identical files; exam ``i`` does not
            depend on ``n_patients``.
        min_images, max_images: images per imaged breast, drawn uniformly (1 <= min <= max <= 20).
        prevalence: fraction of imaged breasts with a malignant lesion.
        benign_prevalence: fraction of imaged breasts with a benign lesion (cyst or solid mass);
            ``prevalence + benign_prevalence`` must not exceed 1.
        both_breasts: probability that both breasts are imaged (else one, chosen at random).
        fmt: ``"png"`` (8-bit, pHYs = pixel spacing) or ``"dicom"`` (Modality US, laterality).
        id_prefix: exam-id prefix (no underscore); default ``us<seed>-``.
        overwrite: allow a non-empty ``out_dir`` (files of a previous cohort there are replaced).
        progress: optional callback ``progress(done, total)`` after each exam.
        annotation_masks: also write each image's burned-in annotation mask as
            ``<stem>_annotations.png`` (its file name, in the image's folder, in
            ``meta["annotation_mask"]``), the ground truth
            of annotation detection.
        inner_labels: also burn a text label, 'x' calipers and dotted lines inside the field of
            view (see :func:`render_us_image_full`); off by default, so cohorts stay as before.
    """
    n_patients = C.check_count("n_patients", n_patients)
    seed = C.check_seed(seed)
    min_images = C.check_count("min_images", min_images)
    max_images = C.check_count("max_images", max_images)
    if not min_images <= max_images <= MAX_IMAGES:
        raise BreastscreenError(
            f"images per breast must satisfy 1 <= min_images <= max_images <= {MAX_IMAGES}, "
            f"got min_images={min_images}, max_images={max_images}"
        )
    prevalence = C.check_fraction("prevalence", prevalence)
    benign_prevalence = C.check_fraction("benign_prevalence", benign_prevalence)
    if prevalence + benign_prevalence > 1.0 + 1e-9:
        raise BreastscreenError(
            f"prevalence + benign_prevalence must be <= 1 (one finding per breast), got {prevalence} + {benign_prevalence}"
        )
    both_breasts = C.check_fraction("both_breasts", both_breasts)
    C.check_format(fmt)
    C.check_id_prefix(id_prefix)
    out = C.prepare_out_dir(out_dir, overwrite)
    prefix = f"us{seed}-" if id_prefix is None else id_prefix
    exams = []
    for i in range(n_patients):
        exams.append(
            _make_exam(out, seed, i, prefix, min_images, max_images, prevalence, benign_prevalence, both_breasts, fmt,
                       annotation_masks, inner_labels)
        )
        if progress is not None:
            progress(i + 1, n_patients)
    write_manifest(exams, out / "manifest.jsonl")
    return exams


def _make_exam(
    out: Path,
    seed: int,
    i: int,
    prefix: str,
    min_images: int,
    max_images: int,
    prevalence: float,
    benign_prevalence: float,
    both_breasts: float,
    fmt: str,
    annotation_masks: bool = False,
    inner_labels: bool = False,
) -> Exam:
    rng = C.sub_rng(seed, i, 0)
    exam_id = f"{prefix}{i + 1:04d}"
    age = int(np.clip(round(rng.normal(50, 12)), 20, 90))
    date = (_dt.date(2016, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 5 * 365)))).isoformat()
    dev = _device(rng)
    sides = ["L", "R"] if rng.random() < both_breasts else [str(rng.choice(["L", "R"]))]
    views: dict[str, list[ImageRef]] = {}
    labels: dict[str, BreastLabel] = {}
    findings = []
    breast_birads: dict[str, str] = {}
    for side in sides:
        b_index = 2 * i + (0 if side == "L" else 1)
        lesion: UsLesion | None = None
        if C.weyl_fraction(seed, b_index, 2) < prevalence:
            lesion = _draw_lesion(rng, "malignant")
        elif C.weyl_fraction(seed, b_index, 3) < benign_prevalence / max(1e-9, 1.0 - prevalence):
            lesion = _draw_lesion(rng, "benign")
        n = int(rng.integers(min_images, max_images + 1))
        shows = np.zeros(n, bool)
        if lesion is not None:
            k = 1 if n == 1 else int(rng.integers(1, n))  # at least one image without it when n > 1
            shows[rng.choice(n, size=k, replace=False)] = True
        clock = int(rng.integers(1, 13))
        refs = []
        for k in range(n):
            img_rng = C.sub_rng(seed, i, 1000 + 100 * (side == "R") + k)
            les_k = lesion if shows[k] else None
            calipers = bool(les_k is not None and img_rng.random() < 0.5)
            rendered = render_us_image_full(img_rng, dev, les_k, side, clock, calipers, inner_labels)
            pixels, lmask, meta = rendered.pixels, rendered.lesion_mask, rendered.meta
            spacing = meta["pixel_spacing_mm"]
            view = f"{side}-US"
            stem = f"{exam_id}_{view}_{k}"
            if fmt == "png":
                path = out / f"{stem}.png"
                C.write_png(path, pixels, spacing)
            else:
                path = out / f"{stem}.dcm"
                _write_us_dicom(path, pixels, exam_id, side, k, seed, date, age, spacing)
            if annotation_masks:
                apath = out / f"{stem}_annotations.png"
                C.write_mask(apath, rendered.annotation_mask, spacing)
                meta["annotation_mask"] = apath.name  # next to the image
            masks, rois = [], []
            if les_k is not None and lmask is not None and lmask.any():
                mpath = out / f"{stem}_mask_{les_k.label}_0.png"
                C.write_mask(mpath, lmask, spacing)
                # One lesion per breast, shown in several images: the id names it across them.
                masks.append(LesionMask(str(mpath.resolve()), les_k.label, les_k.kind, f"{side}1"))
                box = C.mask_box(lmask)
                if box is not None:
                    rois.append(ROI(box, les_k.label, les_k.kind, f"{side}1"))
            meta["laterality"] = side
            refs.append(ImageRef(str(path.resolve()), pixel_spacing=(spacing, spacing), masks=masks, rois=rois, meta=meta))
        views[f"{side}-US"] = refs
        labels[side] = BreastLabel(
            benign=int(lesion is not None and lesion.label == "benign"),
            malignant=int(lesion is not None and lesion.label == "malignant"),
        )
        breast_birads[side] = lesion.birads if lesion is not None else "1"
        if lesion is not None:
            findings.append(
                {
                    "side": side,
                    "label": lesion.label,
                    "kind": lesion.kind,
                    "shape": lesion.shape,
                    "suspicion": round(lesion.suspicion, 3),
                    "size_mm": round(lesion.size_mm, 1),
                    "birads": lesion.birads,
                    "images_with_lesion": int(shows.sum()),
                }
            )
    birads = max(breast_birads.values(), key=US_BIRADS_SEVERITY.index)
    return Exam(
        exam_id=exam_id,
        modality=Modality.US,
        views=views,
        patient_id=f"P{exam_id}",
        study_date=date,
        age=float(age),
        birads=birads,
        labels=labels,
        meta={
            "synthetic": True,
            "generator": "breastscreen.synthetic.ultrasound",
            "seed": seed,
            "index": i,
            "breast_birads": breast_birads,
            "findings": findings,
        },
    )
