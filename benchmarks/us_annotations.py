"""Ultrasound input checks: burned-in annotation removal and the field-of-view crop (issue 14).

Usage (the command behind benchmarks/results/us_annotations.json):

    nice -n 10 python benchmarks/us_annotations.py --out benchmarks/results/us_annotations.json \
        --busbra ../shared/data/bus-bra --grid docs/images/us_annotations_busbra.png

Protocol (fixed before the first run):

1. Synthetic annotation detection. Images i = 0 .. N-1 (N = 300) are rendered by the
   ultrasound phantom (``render_us_image_full``) from ``numpy.random.default_rng(140000 + i)``:
   device drawn first; no lesion when i % 3 == 0, a benign lesion when i % 3 == 1, a malignant
   one when i % 3 == 2; '+' calipers on the lesion when (i // 3) is even; side L for even i;
   clock 1 + i % 12; ``inner_labels=True`` (a text label, and in 60 % of images 'x' calipers
   with or without a dotted line, inside the field of view, grey level 170-255). Ground truth =
   the phantom's annotation mask. Two variants: ``crisp`` (as rendered) and ``blurred``
   (Gaussian blur sigma 0.6 px, rounded to 8 bits: the resampled look of real screen
   captures: across a BUS-BRA caliper arm the neighbours of the peak hold 0.14 and 0.5 of
   its contrast, mean 0.32; a 1-px line blurred with sigma 0.6 gives 0.25, sigma 0.7 0.36). The detector runs with the default :class:`AnnotationParams`.
   Metrics, pooled over images, separately for the marks inside the field of view (what the
   crop cannot remove) and for the whole image:
   * pixel level: precision = detected stroke pixels that are annotation pixels / detected
     pixels; recall = annotation pixels detected / annotation pixels; ``removed`` = annotation
     pixels inside the inpainted (dilated) area / annotation pixels;
   * mark level: ground-truth marks = 8-connected components of the annotation mask (a letter
     or word, a cross, a dot); a mark is hit when a detected pixel lies on it; recall over all
     marks and over glyphs (marks of more than 8 pixels: every mark but the dots of dotted
     lines); precision = detected components (8-connected) that touch an annotation pixel /
     detected components;
   * false alarms on lesion-free tissue: detected pixels inside the field of view more than
     2 px from any annotation, per image (mean) and the share of images with any.
2. BUS-BRA (when the folder exists): for every image with a lesion mask (``Masks/mask_*.png``,
   as the BUS-BRA adapter pairs them), the fraction of lesion pixels kept by the crop
   (inside the crop box and not cleared), for the legacy ``v1`` crop and the ``safe`` crop;
   minimum, mean and number of images below 100 %. Annotation removal on the same images:
   images with marks, mean share of pixels inpainted, share of lesion pixels inpainted.
2b. Crop stress on phantoms: every lesion image of section 1 (rendered without the inner
   labels) gets an anechoic region (|N(0, 2.5)| grey levels) made of the lesion and everything
   below it in the lesion's columns down to the FOV's edge (a large cyst with its shadow, the
   external-set failure); the share of that region each crop keeps.
3. Picture: 8 BUS-BRA images with visible marks (fixed ids below), before / after removal,
   written to ``--grid`` (PNG, < 500 KB).

Single-threaded (``cv2.setNumThreads(1)``); seconds per image are reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from breastscreen.preprocess.us_annotations import AnnotationParams, remove_annotations
from breastscreen.preprocess.ultrasound import field_of_view
from breastscreen.synthetic.ultrasound import _device, _draw_lesion, _fov_mask, render_us_image_full
from breastscreen.utils import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import environment  # noqa: E402

SEED_BASE = 140000
GRID_IDS = ("bus_0001-l", "bus_0090-r", "bus_0255-r", "bus_0339-r", "bus_0497-l", "bus_0653-l", "bus_0785-s",
            "bus_0982-l")


def synthetic_image(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i`` of the protocol: (uint8 pixels, annotation mask, field-of-view mask)."""
    rng = np.random.default_rng(SEED_BASE + i)
    dev = _device(rng)
    kind = i % 3
    lesion = None if kind == 0 else _draw_lesion(rng, "benign" if kind == 1 else "malignant")
    calipers = lesion is not None and (i // 3) % 2 == 0
    r = render_us_image_full(rng, dev, lesion, "L" if i % 2 == 0 else "R", 1 + i % 12, calipers, inner_labels=True)
    return r.pixels, r.annotation_mask, _fov_mask(dev)[0]


class Tally:
    """Pooled pixel- and mark-level counts of one variant and region."""

    def __init__(self) -> None:
        self.c = dict(det=0, det_tp=0, gt=0, gt_found=0, gt_removed=0, marks=0, marks_hit=0, glyphs=0, glyphs_hit=0,
                      comps=0, comps_tp=0, false_px=0, images=0, images_false=0)

    def add(self, det: np.ndarray, area: np.ndarray, gt: np.ndarray, region: np.ndarray) -> None:
        """Count one image restricted to ``region``."""
        d, a, g = det & region, area & region, gt & region
        c = self.c
        c["det"] += int(d.sum())
        c["det_tp"] += int((d & g).sum())
        c["gt"] += int(g.sum())
        c["gt_found"] += int((d & g).sum())
        c["gt_removed"] += int((a & g).sum())
        n, lab, st, _ = cv2.connectedComponentsWithStats(g.astype(np.uint8), connectivity=8)
        c["marks"] += n - 1
        hit = set(np.unique(lab[d & g])) - {0}
        c["marks_hit"] += len(hit)
        glyphs = {k for k in range(1, n) if st[k, cv2.CC_STAT_AREA] > 8}  # letters, words, crosses (not dots)
        c["glyphs"] += len(glyphs)
        c["glyphs_hit"] += len(glyphs & hit)
        n, lab = cv2.connectedComponents(d.astype(np.uint8), connectivity=8)
        c["comps"] += n - 1
        c["comps_tp"] += len(set(np.unique(lab[d & g])) - {0})
        near = cv2.dilate(g.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        false = int((d & ~near).sum())
        c["false_px"] += false
        c["images"] += 1
        c["images_false"] += int(false > 0)

    def summary(self) -> dict[str, float | int]:
        """Precision/recall figures of the pooled counts."""
        c = self.c

        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "pixel_precision": ratio(c["det_tp"], c["det"]), "pixel_recall": ratio(c["gt_found"], c["gt"]),
            "pixel_removed": ratio(c["gt_removed"], c["gt"]),
            "mark_precision": ratio(c["comps_tp"], c["comps"]), "mark_recall": ratio(c["marks_hit"], c["marks"]),
            "mark_recall_glyphs": ratio(c["glyphs_hit"], c["glyphs"]),
            "false_pixels_per_image": ratio(c["false_px"], c["images"]),
            "images_with_false_alarm": ratio(c["images_false"], c["images"]),
            "n_annotation_pixels": c["gt"], "n_marks": c["marks"], "n_glyphs": c["glyphs"],
            "n_detected_components": c["comps"],
            "n_images": c["images"],
        }


def run_synthetic(n: int, params: AnnotationParams) -> dict[str, object]:
    """Section 1 of the protocol."""
    tallies = {(v, r): Tally() for v in ("crisp", "blurred") for r in ("inside_fov", "whole_image")}
    t0, runs = time.perf_counter(), 0
    for i in range(n):
        pixels, gt, fov = synthetic_image(i)
        blurred = np.clip(np.rint(cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), 0.6)), 0, 255).astype(np.uint8)
        for variant, img in (("crisp", pixels), ("blurred", blurred)):
            res = remove_annotations(img, params=params)
            runs += 1
            tallies[(variant, "inside_fov")].add(res.marks, res.inpainted, gt, fov)
            tallies[(variant, "whole_image")].add(res.marks, res.inpainted, gt, np.ones_like(fov))
    out: dict[str, object] = {v: {r: tallies[(v, r)].summary() for r in ("inside_fov", "whole_image")}
                              for v in ("crisp", "blurred")}
    out["seconds_per_image"] = round((time.perf_counter() - t0) / max(runs, 1), 4)
    return out


def _kept_by(img: np.ndarray, region: np.ndarray, mode: str) -> float:
    """Share of ``region`` that crop ``mode`` keeps (inside the box and not cleared)."""
    fov = field_of_view(img, mode)
    x0, y0, x1, y1 = fov.box
    keep = np.zeros(img.shape, bool)
    keep[y0:y1, x0:x1] = True
    return _lesion_kept(region, keep & fov.mask)


def run_crop_stress(n: int) -> dict[str, object]:
    """Section 2b: the failure the safe crop fixes, on phantoms. Each lesion image of the protocol
    gets an anechoic region (absolute Gaussian noise, sigma 2.5 grey levels) made of the lesion
    and everything below it in the lesion's columns down to the FOV's edge (a large cyst with its
    shadow); the share of that region each crop keeps."""
    kept: dict[str, list[float]] = {"v1": [], "safe": []}
    for i in range(n):
        if i % 3 == 0:
            continue
        rng = np.random.default_rng(SEED_BASE + i)
        dev = _device(rng)
        lesion = _draw_lesion(rng, "benign" if i % 3 == 1 else "malignant")
        r = render_us_image_full(rng, dev, lesion, "L" if i % 2 == 0 else "R", 1 + i % 12, False)
        fov = _fov_mask(dev)[0]
        if r.lesion_mask is None or not r.lesion_mask.any():
            continue
        ys, xs = np.nonzero(r.lesion_mask)
        below = np.zeros_like(fov)
        below[int(ys.mean()):, xs.min():xs.max() + 1] = True
        region = (r.lesion_mask | below) & fov
        img = r.pixels.copy()
        img[region] = np.clip(np.rint(np.abs(rng.normal(0.0, 2.5, int(region.sum())))), 0, 255).astype(np.uint8)
        for mode in kept:
            kept[mode].append(_kept_by(img, region, mode))
    out: dict[str, object] = {"n_images": len(kept["safe"])}
    for mode, vals in kept.items():
        v = np.array(vals)
        out[mode] = {"min_fraction_kept": round(float(v.min()), 4), "mean_fraction_kept": round(float(v.mean()), 4),
                     "images_below_100pct": int((v < 1.0).sum())}
    return out


def _lesion_kept(lesion: np.ndarray, crop_mask: np.ndarray) -> float:
    return float((lesion & crop_mask).sum() / max(int(lesion.sum()), 1))


def run_busbra(root: Path, params: AnnotationParams, limit: int | None) -> dict[str, object]:
    """Section 2: crop lesion coverage (v1 and safe) and annotation removal on BUS-BRA."""
    from breastscreen.preprocess.ultrasound import to_uint8

    rows = list(csv.DictReader(open(root / "bus_data.csv", encoding="utf-8")))
    if limit:
        rows = rows[:limit]
    kept: dict[str, list[float]] = {"v1": [], "safe": []}
    worst: dict[str, list[tuple[float, str]]] = {"v1": [], "safe": []}
    area: dict[str, list[float]] = {"v1": [], "safe": []}
    ann_images, ann_share, ann_lesion = 0, [], []
    t0 = time.perf_counter()
    for row in rows:
        mpath = root / "Masks" / f"mask_{row['ID'].split('_', 1)[-1]}.png"
        ipath = root / "Images" / f"{row['ID']}.png"
        if not (mpath.is_file() and ipath.is_file()):
            continue
        img = to_uint8(cv2.imread(str(ipath), cv2.IMREAD_GRAYSCALE))
        lesion = cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE) > 127
        if lesion.shape != img.shape or not lesion.any():
            continue
        for mode in ("v1", "safe"):
            # What crop_ultrasound keeps: the box, less the pixels it clears inside it.
            frac = _kept_by(img, lesion, mode)
            kept[mode].append(frac)
            worst[mode].append((frac, row["ID"]))
            x0, y0, x1, y1 = field_of_view(img, mode).box
            area[mode].append((x1 - x0) * (y1 - y0) / img.size)
        res = remove_annotations(img, params=params)
        ann_images += int(res.n_marks > 0)
        ann_share.append(float(res.inpainted.mean()))
        ann_lesion.append(float((res.inpainted & lesion).sum() / lesion.sum()))
    n = len(kept["safe"])
    crop = {}
    for mode, vals in kept.items():
        v = np.array(vals)
        crop[mode] = {"min_lesion_fraction_kept": round(float(v.min()), 4) if n else None,
                      "mean_lesion_fraction_kept": round(float(v.mean()), 5) if n else None,
                      "images_below_100pct": int((v < 1.0).sum()),
                      "mean_share_of_image_in_box": round(float(np.mean(area[mode])), 4) if n else None,
                      "worst_images": [(round(f, 4), i) for f, i in sorted(worst[mode])[:3]]}
    return {
        "n_images_with_mask": n,
        "crop": crop,
        "annotations": {"images_with_marks": ann_images,
                        "mean_share_of_pixels_inpainted": round(float(np.mean(ann_share)), 5) if n else None,
                        "mean_share_of_lesion_pixels_inpainted": round(float(np.mean(ann_lesion)), 5) if n else None},
        "seconds_per_image": round((time.perf_counter() - t0) / max(n, 1), 4),
    }


def write_grid(root: Path, params: AnnotationParams, path: Path) -> list[str]:
    """Section 3: before (top) / after (bottom) picture of the fixed BUS-BRA ids."""
    tiles_before, tiles_after, used = [], [], []
    for image_id in GRID_IDS:
        ipath = root / "Images" / f"{image_id}.png"
        if not ipath.is_file():
            continue
        img = cv2.imread(str(ipath), cv2.IMREAD_GRAYSCALE)
        res = remove_annotations(img, params=params)
        size = (200, 218)
        tiles_before.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        tiles_after.append(cv2.resize(res.pixels, size, interpolation=cv2.INTER_AREA))
        used.append(image_id)
    if not used:
        return used
    pad = np.full((218, 4), 255, np.uint8)

    def strip(tiles: list[np.ndarray]) -> np.ndarray:
        return np.hstack([x for t in tiles for x in (t, pad)][:-1])

    grid = np.vstack([strip(tiles_before[:4]), np.full((4, strip(tiles_before[:4]).shape[1]), 255, np.uint8),
                      strip(tiles_after[:4]), np.full((12, strip(tiles_before[:4]).shape[1]), 255, np.uint8),
                      strip(tiles_before[4:]), np.full((4, strip(tiles_before[:4]).shape[1]), 255, np.uint8),
                      strip(tiles_after[4:])]) if len(used) == 8 else np.vstack([strip(tiles_before), strip(tiles_after)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f"could not write {path}")
    return used


def main(argv: list[str] | None = None) -> int:
    """Run the protocol and write the results JSON (and the picture)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--n", type=int, default=300, help="synthetic images")
    ap.add_argument("--busbra", default="../shared/data/bus-bra", help="BUS-BRA folder (skipped when absent)")
    ap.add_argument("--busbra-limit", type=int, default=0, help="first N rows only (0 = all; for quick checks)")
    ap.add_argument("--grid", default="", help="before/after picture of 8 BUS-BRA images (PNG)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    params = AnnotationParams()
    t0 = time.time()
    result: dict[str, object] = {
        "command": "python benchmarks/us_annotations.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "params": params.model_dump(),
        "synthetic": run_synthetic(args.n, params),
        "crop_stress_synthetic": run_crop_stress(args.n),
    }
    root = Path(args.busbra)
    if (root / "bus_data.csv").is_file():
        result["busbra"] = run_busbra(root, params, args.busbra_limit or None)
        if args.grid:
            result["grid"] = {"path": args.grid, "ids": write_grid(root, params, Path(args.grid))}
    else:
        result["busbra"] = f"skipped: {root} not found"
    result["seconds"] = round(time.time() - t0, 1)
    result["environment"] = environment(t0)  # load average: other jobs slow the timings down
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
