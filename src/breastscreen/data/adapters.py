"""Adapters that turn public breast-imaging datasets, as distributed, into exams.

Each ``adapt_<dataset>(root, ..., problems=None) -> list[Exam]`` reads the dataset's own
tables and folder layout. Files a table names but the folder lacks, rows with unusable values
and files that are not regular files inside ``root`` (paths with ``..``, absolute paths,
symbolic links leaving the folder) are appended to ``problems`` as ``(path or line, reason)``
when a list is given, otherwise they raise :class:`~breastscreen.errors.ManifestError`; a bad
row never stops the others. Literal cells (``BBOX``, category lists) are parsed with size and
depth limits. The choices each adapter makes (exam grouping,
label rules, side conventions) are documented in its docstring and in ``docs/data.md``.

Ultrasound images whose breast side is unknown go to the view ``U-US``; the label of such a
bag is the label side ``U``: ``exam.labels["U"]``; use
:func:`breastscreen.data.bags.breast_bags` to get (view, images, label) per breast.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

# BUSI lives in _adapt_busi, CBIS-DDSM and VinDr-Mammo in _adapt_mg (module size); their names
# are re-exported here.
from breastscreen.data._adapt_busi import adapt_busi, describe_busi_folder  # noqa: F401
from breastscreen.data._adapt_mg import (  # noqa: F401
    CBIS_TABLES,
    VINDR_LABELS,
    adapt_cbis_ddsm,
    adapt_vindr,
    vindr_kind,
)
from breastscreen.data._adapter_io import (
    MAX_TABLE_BYTES,
    Problems,
    clip_box,
    dataset_file,
    literal,
    problem,
    read_csv,
    require,
)
from breastscreen.data.readers import raster_header
from breastscreen.data.types import ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import ImageReadError, ManifestError

# =========================================================================== mini-MIAS

MIAS_SIZE = 1024
MIAS_SPACING_MM = 0.2
# Background tissue → BI-RADS density. MIAS has three classes, BI-RADS four: this is an
# approximation (dense-glandular covers both heterogeneously and extremely dense breasts).
MIAS_DENSITY = {"F": "A", "G": "B", "D": "C"}
# Abnormality class → lesion kind. CIRC/SPIC/MISC are masses (circumscribed, spiculated,
# ill-defined); ARCH and ASYM are findings of their own with no closer mass/calcification kind, so
# they keep their names (the 5-class patch recipes skip them as neither mass nor calcification).
MIAS_KIND = {
    "CALC": "calcification", "CIRC": "mass", "SPIC": "mass", "MISC": "mass",
    "ARCH": "architectural distortion", "ASYM": "asymmetry",
}
_MIAS_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+(CALC|CIRC|SPIC|MISC|ARCH|ASYM|NORM)\b(.*)$")


def parse_mias_info(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of mini-MIAS ``Info.txt``: ref, tissue, class, severity, x, y, radius (None when absent)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: mini-MIAS Info.txt not found")
    from breastscreen.safety import check_regular_file

    if check_regular_file(path, ManifestError).st_size > MAX_TABLE_BYTES:
        raise ManifestError(f"{path}: Info.txt above the size limit of {MAX_TABLE_BYTES:,} bytes")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        m = _MIAS_ROW.match(line.strip())
        if not m:
            continue
        ref, tissue, cls, rest = m.groups()
        tokens = rest.split()
        severity = tokens[0] if tokens and tokens[0] in ("B", "M") else None
        if cls != "NORM" and severity is None:
            raise ManifestError(f"{path}:{lineno}: abnormality {cls} without severity B/M")
        nums = tokens[1:4]
        x = y = r = None
        if len(nums) == 3 and all(re.fullmatch(r"\d{1,6}(\.\d{1,6})?", t) for t in nums):
            x, y, r = (float(t) for t in nums)
        rows.append({"ref": ref, "tissue": tissue, "class": cls, "severity": severity, "x": x, "y": y, "radius": r})
    if not rows:
        raise ManifestError(f"{path}: no mdbNNN rows found")
    return rows


def adapt_mini_mias(
    root: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str] | None = None,
    side_convention: str = "markers",
    problems: Problems | None = None,
) -> list[Exam]:
    """mini-MIAS → one exam per woman (image pair), MLO views only.

    Sides: ``side_convention="markers"`` (default) follows the lead film markers burned into the
    images: odd-numbered images carry an ``L`` marker and even-numbered an ``R`` marker (all
    marker text is mirrored, i.e. the digitised images are left-right flipped, so a left breast
    shows its chest wall at the right image edge). ``"info"`` follows the note in Info.txt
    (even = left, odd = right), which contradicts the markers.

    Labels per breast: benign/malignant = 1 when the image has a B/M finding, else 0 (all
    known). Lesions: one circle ROI per located finding (centre column x, row 1024 − y because
    Info.txt's origin is the bottom-left corner; its box clipped to the image), ``lesion_id`` =
    the finding's position among the image's Info.txt rows (``"1"``, ``"2"``), kind from
    :data:`MIAS_KIND`; findings without coordinates get no ROI and are listed in the image meta.
    With ``masks_dir``, filled-circle masks are written there as PNG and attached with the same
    lesion id. Pixel spacing 0.2 mm; tissue F/G/D → density A/B/C (approximate).
    """
    if side_convention not in ("markers", "info"):
        raise ValueError(f"side_convention must be 'markers' or 'info', got {side_convention!r}")
    root = Path(root).resolve()
    rows = parse_mias_info(root / "Info.txt")
    img_dir = root / "images"
    by_ref: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_ref[row["ref"]].append(row)
    if masks_dir is not None:
        masks_dir = Path(masks_dir).resolve()
        masks_dir.mkdir(parents=True, exist_ok=True)

    exams: dict[str, Exam] = {}
    for ref in sorted(by_ref):
        n = int(ref[3:])
        odd = n % 2 == 1
        side = ("L" if odd else "R") if side_convention == "markers" else ("R" if odd else "L")
        pair = (n + 1) // 2
        exam_id = f"mias{pair:03d}"
        path = img_dir / f"{ref}.png"
        if not path.exists():
            pgm = img_dir / f"{ref}.pgm"
            path = pgm if pgm.exists() else path
        if not path.exists():
            problem(problems, str(path), "image listed in Info.txt not found")
            continue
        if dataset_file(root, path, problems, "Info.txt") is None:
            continue
        findings = [r for r in by_ref[ref] if r["class"] != "NORM"]
        image = ImageRef(path=str(path), pixel_spacing=(MIAS_SPACING_MM, MIAS_SPACING_MM),
                         meta={"mias_ref": ref, "tissue": by_ref[ref][0]["tissue"]})
        unlocated = []
        for k, f in enumerate(findings, start=1):
            label = "benign" if f["severity"] == "B" else "malignant"
            kind = MIAS_KIND[f["class"]]
            if f["x"] is None:
                unlocated.append({"class": f["class"], "severity": f["severity"]})
                continue
            cx, cy, r = f["x"], MIAS_SIZE - f["y"], f["radius"]
            try:
                roi = ROI.from_circle(cx, cy, r, label, kind, str(k), shape=(MIAS_SIZE, MIAS_SIZE))
            except ValueError:
                problem(problems, str(path), f"finding {k} lies outside the image")
                continue
            image.rois.append(roi)
            if masks_dir is not None:
                mpath = masks_dir / f"{ref}_mask_{label}_{k}.png"
                _write_circle_mask(mpath, cx, cy, r, MIAS_SIZE, MIAS_SIZE)
                image.masks.append(LesionMask(str(mpath), label, kind, str(k)))
        if unlocated:
            image.meta["findings_without_location"] = unlocated
        exam = exams.setdefault(exam_id, Exam(exam_id=exam_id, modality=Modality.MG, patient_id=exam_id,
                                              meta={"dataset": "mini-MIAS", "refs": []}))
        exam.meta["refs"].append(ref)
        exam.views[f"{side}-MLO"].append(image)
        exam.labels[side] = BreastLabel(
            int(any(f["severity"] == "B" for f in findings)), int(any(f["severity"] == "M" for f in findings))
        )
        density = MIAS_DENSITY[by_ref[ref][0]["tissue"]]
        if exam.density is None or density > exam.density:
            exam.density = density
    return [exams[k] for k in sorted(exams)]


def _write_circle_mask(path: Path, cx: float, cy: float, r: float, w: int, h: int) -> None:
    from PIL import Image

    from breastscreen.utils import atomic_path

    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(mask).save(tmp, format="PNG")


# =========================================================================== BUS-BRA


def adapt_bus_bra(root: str | os.PathLike[str], problems: Problems | None = None) -> list[Exam]:
    """BUS-BRA → one ultrasound exam (bag) per patient ``Case``.

    The ``Side`` column (left/right/single) and the ``-l``/``-r``/``-s`` suffixes name the panel
    of a dual-view screen capture, not the breast: every two-image case has exactly one
    ``l`` and one ``r`` image of the same lesion (same histology, about half the width of the
    ``s`` captures, matching boxes). So all images of a case go to ``U-US`` with
    ``meta["panel"]``; the bag label (biopsy-proven, one lesion per patient) is
    ``labels["U"]``; exam BI-RADS = the highest image BI-RADS. Per image: BI-RADS, device,
    histology, pathology, panel and ``fold`` (``kFold`` of ``5-fold-cv.csv``: the authors'
    patient-disjoint folds; also ``meta["fold"]`` per exam), the lesion mask with the image's
    pathology and the ``BBOX`` as an ROI (clipped to the real image size), both with lesion id
    ``"1"`` (one lesion per image).
    """
    root = Path(root).resolve()
    table = root / "bus_data.csv"
    rows = read_csv(table)
    require(rows, table, ["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Side", "BBOX"])
    folds: dict[str, int] = {}
    fold_file = root / "5-fold-cv.csv"
    if fold_file.exists():
        for i, r in enumerate(read_csv(fold_file), start=2):
            if r.get("ID") and r.get("kFold"):
                if not re.fullmatch(r"\d{1,3}", r["kFold"]):
                    problem(problems, f"{fold_file}:{i}", f"kFold must be a fold number, got {r['kFold'][:40]!r}")
                    continue
                folds[r["ID"]] = int(r["kFold"])
    by_case: dict[int, list[dict[str, str]]] = defaultdict(list)
    for i, r in enumerate(rows, start=2):
        r["_line"] = f"{table}:{i}"
        if r.get("_extra"):
            problem(problems, r["_line"], f"more fields than columns ({r['_extra'][:40]!r}); row skipped")
            continue
        if r["Pathology"] not in ("benign", "malignant"):
            problem(problems, r["_line"], f"Pathology must be benign or malignant, got {r['Pathology'][:40]!r}")
            continue
        if not re.fullmatch(r"\d{1,9}", r["Case"]):
            problem(problems, r["_line"], f"Case must be a number, got {r['Case'][:40]!r}")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", r["ID"]):
            problem(problems, r["_line"], f"ID must be a plain image name, got {r['ID'][:40]!r}")
            continue
        by_case[int(r["Case"])].append(r)

    exams = []
    for case in sorted(by_case):
        exam = Exam(exam_id=f"busbra{case:04d}", modality=Modality.US, patient_id=str(case),
                    meta={"dataset": "BUS-BRA", "case": case})
        paths = set()
        birads = []
        for r in sorted(by_case[case], key=lambda r: r["ID"]):
            path = root / "Images" / f"{r['ID']}.png"
            if not path.exists():
                problem(problems, str(path), f"image listed in {r['_line']} not found")
                continue
            if dataset_file(root, path, problems, r["_line"]) is None:
                continue
            try:
                h, w, _ = raster_header(path)
            except ImageReadError as exc:
                problem(problems, str(path), str(exc))
                continue
            try:
                bbox = literal(r["BBOX"], r["_line"], "BBOX")
                x, y, bw, bh = (float(v) for v in bbox)
                if not all(np.isfinite([x, y, bw, bh])):
                    raise ValueError("not finite")
            except (ManifestError, TypeError, ValueError):
                problem(problems, r["_line"], f"BBOX must look like [x,y,w,h], got {r['BBOX'][:60]!r}")
                continue
            label = r["Pathology"]
            image = ImageRef(path=str(path), meta={
                "id": r["ID"], "birads": r["BIRADS"], "device": r["Device"], "histology": r["Histology"],
                "pathology": label, "panel": r["Side"],
            })
            if r["ID"] in folds:
                image.meta["fold"] = folds[r["ID"]]
            mask = root / "Masks" / f"mask_{r['ID'].split('_', 1)[-1]}.png"
            # One lesion per image: its mask and its BBOX share lesion id "1".
            if mask.exists() and dataset_file(root, mask, problems, r["_line"]) is not None:
                image.masks.append(LesionMask(str(mask), label, "lesion", "1"))
            elif not mask.exists():
                problem(problems, str(mask), f"lesion mask of {r['ID']} not found")
            box = clip_box(x, y, x + bw, y + bh, w, h)
            if box:
                image.rois.append(ROI(box, label, "lesion", "1"))
            exam.views.setdefault("U-US", []).append(image)
            paths.add(label)
            birads.append(r["BIRADS"])
        if not exam.views.get("U-US"):
            continue
        if len(paths) > 1:
            problem(problems, str(table), f"case {case} mixes benign and malignant images; case skipped")
            continue
        label = next(iter(paths))
        exam.labels["U"] = BreastLabel(int(label == "benign"), int(label == "malignant"))
        fold_values = {i.meta.get("fold") for i in exam.views["U-US"]} - {None}
        if len(fold_values) == 1:
            exam.meta["fold"] = fold_values.pop()
        valid = [b for b in birads if b in ("2", "3", "4", "5")]
        if valid:
            exam.birads = max(valid)
        exams.append(exam)
    return exams


ADAPTERS: dict[str, Callable[..., list[Exam]]] = {
    "mini-mias": adapt_mini_mias,
    "bus-bra": adapt_bus_bra,
    "busi": adapt_busi,
    "cbis-ddsm": adapt_cbis_ddsm,
    "vindr": adapt_vindr,
}
