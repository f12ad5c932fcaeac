"""Dataset adapters of the digital/digitised mammography sets CBIS-DDSM and VinDr-Mammo.

Part of :mod:`breastscreen.data.adapters` (which re-exports every name here), split off to keep
modules small; the rules common to all adapters are described there.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from breastscreen.data._adapter_io import (
    Problems,
    clip_box,
    dataset_file,
    literal,
    problem,
    read_csv,
    require,
)
from breastscreen.data.types import ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import ImageReadError, ManifestError

# =========================================================================== CBIS-DDSM

CBIS_TABLES = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)


def _norm_cols(row: dict[str, str]) -> dict[str, str]:
    return {re.sub(r"[\s_]+", "_", k.strip().lower()): v for k, v in row.items()}


def _cbis_resolve(root: Path, rel: str, kind: str, cache: dict[str, list[Path]]) -> Path | None:
    """Find a CBIS-DDSM file named in the tables: as written, under CBIS-DDSM/, or by its top folder."""
    from breastscreen.safety import is_within

    rel = rel.strip().strip('"').replace("\\", "/")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or ".." in rel.split("/"):
        return None  # a table never names files outside the dataset folder
    for base in (root, root / "CBIS-DDSM"):
        p = base / rel
        if p.is_file() and is_within(p, root):
            return p
    top = rel.split("/", 1)[0]
    if top not in cache:
        hits: list[Path] = []
        for base in (root, root / "CBIS-DDSM"):
            d = base / top
            if d.is_dir() and is_within(d, root):
                hits = sorted(q for q in d.rglob("*.dcm") if q.is_file() and is_within(q, root))
                break
        cache[top] = hits
    hits = cache[top]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1 and kind in ("mask", "crop"):
        # TCIA downloads put the cropped image and the ROI mask in one folder: tell them apart
        # by SeriesDescription, else by size (the mask is full-size, the crop is small).
        from breastscreen.data.readers import read_dicom_header

        for q in hits:
            try:
                desc = str(read_dicom_header(q).get("SeriesDescription", "")).lower()
            except ImageReadError:
                continue
            if (kind == "mask" and "mask" in desc) or (kind == "crop" and "crop" in desc):
                return q
        sized = sorted(hits, key=lambda q: q.stat().st_size)
        return sized[-1] if kind == "mask" else sized[0]
    return None


def _cbis_lesion_ids(abnormalities: list[tuple[str | None, str]]) -> list[str | None]:
    """Lesion ids of one image's masks from their ``(abnormality id, kind)``.

    The abnormality id as such; the mass and calcification tables number abnormalities
    separately, so an id used by both kinds on one image becomes ``<kind>-<id>``, and any id
    still repeated gets ``-1``, ``-2`` ... in table order.
    """
    counts = Counter(aid for aid, _ in abnormalities if aid is not None)
    ids = [f"{kind}-{aid}" if aid is not None and counts[aid] > 1 else aid for aid, kind in abnormalities]
    repeated = Counter(i for i in ids if i is not None)
    seen: Counter[str] = Counter()
    out: list[str | None] = []
    for i in ids:
        if i is not None and repeated[i] > 1:
            seen[i] += 1
            out.append(f"{i}-{seen[i]}")
        else:
            out.append(i)
    return out


def adapt_cbis_ddsm(root: str | os.PathLike[str], problems: Problems | None = None) -> list[Exam]:
    """CBIS-DDSM case-description CSVs + DICOM folders → one exam per ``patient_id``.

    CBIS-DDSM has no study grouping, so all images of a patient form one exam (an image that
    appears in both the mass and the calcification tables is listed once, with all its
    abnormalities). Only breasts with an abnormality are in CBIS-DDSM: their labels are known
    (malignant = any MALIGNANT abnormality; benign = any BENIGN or BENIGN_WITHOUT_CALLBACK);
    the other breast has no images and unknown labels. ROI masks are attached as
    :class:`LesionMask` pointing at the mask DICOM (``load_image`` reads it), with kind
    ``mass``/``calcification`` and ``lesion_id`` = the abnormality id (see :func:`_cbis_lesion_ids`
    for ids repeated on one image). Density 1-4 → A-D (highest per exam); exam BI-RADS = highest
    assessment. Image meta lists the abnormalities; exam meta lists the splits (train/test).
    """
    root = Path(root).resolve()
    tables = [root / t for t in CBIS_TABLES if (root / t).is_file()]
    if not tables:
        raise ManifestError(f"{root}: none of the CBIS-DDSM case-description CSVs ({', '.join(CBIS_TABLES)})")
    cache: dict[str, list[Path]] = {}
    images: dict[tuple[str, str, str], dict[str, Any]] = {}
    for table in tables:
        split = "train" if "train" in table.name else "test"
        for lineno, raw in enumerate(read_csv(table), start=2):
            row = _norm_cols(raw)
            where = f"{table}:{lineno}"
            need = ["patient_id", "left_or_right_breast", "image_view", "abnormality_type", "pathology",
                    "image_file_path"]
            missing = [c for c in need if c not in row]
            if missing:
                raise ManifestError(f"{where}: missing columns {missing}")
            side = {"LEFT": "L", "RIGHT": "R"}.get(row["left_or_right_breast"].upper())
            view = row["image_view"].upper()
            if side is None or view not in ("CC", "MLO"):
                problem(problems, where, f"unknown side/view {row['left_or_right_breast']}/{row['image_view']}")
                continue
            pathology = row["pathology"].upper()
            if pathology not in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"):
                problem(problems, where, f"pathology must be MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK, "
                                          f"got {row['pathology'][:40]!r}")
                continue
            key = (row["patient_id"], side, view)
            entry = images.get(key)
            if entry is None:
                path = _cbis_resolve(root, row["image_file_path"], "image", cache)
                if path is None:
                    problem(problems, row["image_file_path"][:200],
                             f"image named in {where} not found inside the dataset folder")
                    continue
                entry = images[key] = {"path": path, "abn": [], "splits": set(), "density": None}
            entry["splits"].add(split)
            kind = "calcification" if row["abnormality_type"].lower().startswith("calc") else "mass"
            label = "malignant" if pathology == "MALIGNANT" else "benign"
            abn = {"id": row.get("abnormality_id"), "type": kind, "pathology": pathology,
                   "assessment": row.get("assessment"), "subtlety": row.get("subtlety")}
            for extra in ("mass_shape", "mass_margins", "calc_type", "calc_distribution"):
                if row.get(extra):
                    abn[extra] = row[extra]
            mask_rel = row.get("roi_mask_file_path")
            if mask_rel:
                mpath = _cbis_resolve(root, mask_rel, "mask", cache)
                if mpath is None:
                    problem(problems, mask_rel[:200], f"ROI mask named in {where} not found inside the dataset folder")
                else:
                    abn["mask"] = (str(mpath), label, kind)
            entry["abn"].append(abn)
            dens = row.get("breast_density") or row.get("breast density")
            if dens and dens.strip() in ("1", "2", "3", "4"):
                entry["density"] = "ABCD"[int(dens) - 1]

    exams: dict[str, Exam] = {}
    for (patient, side, view), entry in sorted(images.items(), key=lambda kv: kv[0]):
        exam = exams.setdefault(patient, Exam(exam_id=patient, patient_id=patient, modality=Modality.MG,
                                              meta={"dataset": "CBIS-DDSM", "splits": []}))
        image = ImageRef(path=str(entry["path"]))
        seen_masks = set()
        masked = []
        for abn in entry["abn"]:
            if "mask" in abn:
                mpath, label, kind = abn.pop("mask")
                if mpath not in seen_masks:
                    masked.append((mpath, label, kind, (abn.get("id") or "").strip() or None))
                    seen_masks.add(mpath)
        ids = _cbis_lesion_ids([(aid, kind) for _, _, kind, aid in masked])
        image.masks = [LesionMask(mpath, label, kind, lid) for (mpath, label, kind, _), lid in zip(masked, ids)]
        image.meta["abnormalities"] = [{k: v for k, v in a.items() if v not in (None, "")} for a in entry["abn"]]
        exam.views[f"{side}-{view}"].append(image)
        exam.meta["splits"] = sorted(set(exam.meta["splits"]) | entry["splits"])
        old = exam.labels.get(side, BreastLabel(0, 0))
        mal = int(old.malignant == 1 or any(a["pathology"] == "MALIGNANT" for a in entry["abn"]))
        ben = int(old.benign == 1 or any(a["pathology"] != "MALIGNANT" for a in entry["abn"]))
        exam.labels[side] = BreastLabel(ben, mal)
        if entry["density"] and (exam.density is None or entry["density"] > exam.density):
            exam.density = entry["density"]
        for a in entry["abn"]:
            if a.get("assessment") in ("0", "1", "2", "3", "4", "5"):
                if exam.birads is None or a["assessment"] > exam.birads:
                    exam.birads = a["assessment"]
    return [exams[k] for k in sorted(exams)]


# =========================================================================== VinDr-Mammo

# Breast BI-RADS → per-breast labels. VinDr-Mammo has no pathology: only what BI-RADS itself
# implies is set (1 negative: no finding; 2 benign finding: not malignant, but not a biopsied
# benign lesion either); 3-5 stay unknown and the BI-RADS is kept in the meta.
VINDR_LABELS: dict[str, tuple[int | None, int | None]] = {
    "1": (0, 0), "2": (None, 0), "3": (None, None), "4": (None, None), "5": (None, None),
}


def _vindr_birads(text: str) -> str | None:
    m = re.search(r"(\d[ABC]?)", text or "")
    return m.group(1).upper() if m else None


def vindr_kind(categories: list[str]) -> str:
    """Lesion kind of a VinDr finding: ``mass`` when ``Mass`` is among its categories, else
    ``calcification`` for ``Suspicious Calcification``, else ``other`` (asymmetries, architectural
    distortion, skin/nipple findings, lymph nodes)."""
    names = [c.strip().lower() for c in categories]
    if "mass" in names:
        return "mass"
    if any("calcification" in c for c in names):
        return "calcification"
    return "other"


def _size(text: str) -> int:
    """An image side from a table cell; a missing or odd one leaves the box unclipped on that side."""
    return int(text) if re.fullmatch(r"\d{1,7}", text or "") and int(text) > 0 else 1_000_000


def adapt_vindr(root: str | os.PathLike[str], problems: Problems | None = None) -> list[Exam]:
    """VinDr-Mammo → one exam per ``study_id`` (four views, images ``images/<study>/<image>.dicom``).

    Labels from breast BI-RADS (see :data:`VINDR_LABELS`; no pathology exists): 1 → benign 0,
    malignant 0; 2 → malignant 0, benign unknown; 3-5 → unknown. ``meta["breast_birads"]`` keeps
    the per-side BI-RADS, exam BI-RADS/density = the highest of the two breasts, ``meta["split"]``
    the dataset split. Findings (categories, finding BI-RADS, box) are kept in the image meta as
    ``findings``; each finding with a box is also an ROI of unknown outcome (VinDr has no
    pathology) with ``lesion_id`` = its 1-based position in ``findings`` and kind from
    :func:`vindr_kind`, its box clipped to the image size the table gives (a box with nothing
    left is kept in ``findings`` only).
    """
    root = Path(root).resolve()
    table = root / "breast-level_annotations.csv"
    rows = read_csv(table)
    require(rows, table, ["study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density"])
    findings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rois: dict[str, list[ROI]] = defaultdict(list)
    ftable = root / "finding_annotations.csv"
    if ftable.is_file():
        for lineno, r in enumerate(read_csv(ftable), start=2):
            cats = r.get("finding_categories", "")
            try:
                parsed = literal(cats, f"{ftable}:{lineno}", "finding_categories") if cats.startswith("[") else [cats]
                if not isinstance(parsed, (list, tuple)):
                    raise ManifestError(f"{ftable}:{lineno}: finding_categories must be a list, got {cats[:60]!r}")
                cat_list = [str(c) for c in parsed]
            except ManifestError as exc:
                problem(problems, f"{ftable}:{lineno}", str(exc).split(": ", 1)[-1])
                continue
            if cat_list == ["No Finding"]:
                continue
            f: dict[str, Any] = {"categories": cat_list}
            b = _vindr_birads(r.get("finding_birads", ""))
            if b:
                f["birads"] = b
            coords = [r.get(k, "") for k in ("xmin", "ymin", "xmax", "ymax")]
            roi_box = None
            if all(c and c.lower() != "nan" for c in coords):  # global findings have no box
                try:
                    f["box"] = [int(round(float(c))) for c in coords]
                except (ValueError, OverflowError):
                    problem(problems, f"{ftable}:{lineno}", f"box coordinates must be finite numbers, got {coords}")
                    continue
                h, w = (_size(r.get(k, "")) for k in ("height", "width"))
                roi_box = clip_box(*(float(c) for c in coords), w, h)
            findings[r["image_id"]].append(f)
            if roi_box is not None:
                lesion_id = str(len(findings[r["image_id"]]))
                rois[r["image_id"]].append(ROI(roi_box, None, vindr_kind(cat_list), lesion_id))

    exams: dict[str, Exam] = {}
    for lineno, r in enumerate(rows, start=2):
        where = f"{table}:{lineno}"
        side = r["laterality"].upper()
        view = r["view_position"].upper()
        if side not in ("L", "R") or view not in ("CC", "MLO"):
            problem(problems, where, f"unsupported laterality/view {r['laterality']}/{r['view_position']}")
            continue
        if not all(re.fullmatch(r"[A-Za-z0-9._\-]{1,128}", r[k]) and r[k] not in (".", "..")
                   for k in ("study_id", "image_id")):
            problem(problems, where, "study_id and image_id must be plain names (no folders), got "
                                      f"{r['study_id'][:40]!r}/{r['image_id'][:40]!r}")
            continue
        path = root / "images" / r["study_id"] / f"{r['image_id']}.dicom"
        if not path.exists():
            problem(problems, str(path), f"image named in {where} not found")
            continue
        if dataset_file(root, path, problems, where) is None:
            continue
        exam = exams.setdefault(r["study_id"], Exam(exam_id=r["study_id"], modality=Modality.MG,
                                                    meta={"dataset": "VinDr-Mammo", "breast_birads": {}}))
        if r.get("split"):
            exam.meta["split"] = r["split"]
        image = ImageRef(path=str(path), meta={"image_id": r["image_id"]})
        if r.get("series_id"):
            image.meta["series_id"] = r["series_id"]
        if findings.get(r["image_id"]):
            image.meta["findings"] = findings[r["image_id"]]
            image.rois = list(rois.get(r["image_id"], []))
        exam.views[f"{side}-{view}"].append(image)
        birads = _vindr_birads(r["breast_birads"])
        if birads in VINDR_LABELS:
            exam.meta["breast_birads"][side] = birads
            exam.labels[side] = BreastLabel(*VINDR_LABELS[birads])
            if exam.birads is None or birads > exam.birads:
                exam.birads = birads
        dm = re.search(r"([ABCD])\s*$", r["breast_density"].strip().upper())
        if dm and (exam.density is None or dm.group(1) > exam.density):
            exam.density = dm.group(1)
    return [exams[k] for k in sorted(exams)]
