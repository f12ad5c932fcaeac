"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020) as distributed and re-distributed.

Layouts accepted (a class folder is ``benign/``, ``malignant/`` or ``normal/``, any case):

* ``side-by-side``: images and masks together in each class folder, masks named after their
  image with ``_mask`` and an optional index: ``x.png``, ``x_mask.png``, ``x_mask_1.png``
  (the original ``benign (1).png`` naming is one case of it; in a folder that uses it, other
  names are stray files and reported);
* ``subfolders``: each class folder holds ``images/`` (or ``image/``, ``imgs/``) and ``masks/``
  (or ``mask/``, ``ground_truth/``, ``gt/``); a mask is ``x.png``, ``x_mask.png`` or
  ``x_mask_1.png`` for image ``x``.

Images may be PNG, JPEG or TIFF. :func:`describe_busi_folder` says which layout a folder has or
why it is not a BUSI folder, in one line. Exact duplicate images (same pixels,
:func:`breastscreen.data.duplicates.duplicate_images`) are reported with both ids and labels:
a later copy with the same label is left out, copies with different labels are an error and
all of them are left out; both go to ``problems``.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from breastscreen.data._adapter_io import Problems, dataset_file, problem
from breastscreen.data.types import BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import ManifestError

BUSI_CLASSES = ("benign", "malignant", "normal")
IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "ground_truth", "gt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)
_CLASSIC = re.compile(r"^(?P<cls>benign|malignant|normal) \((?P<n>\d+)\)$", re.IGNORECASE)


@dataclass
class BusiLayout:
    """What :func:`describe_busi_folder` found: ``kind`` (None when rejected) and a one-line ``message``."""

    kind: str | None
    message: str
    classes: dict[str, Path]


def _children(folder: Path) -> dict[str, Path]:
    try:
        return {p.name.lower(): p for p in folder.iterdir() if not p.name.startswith(".")}
    except OSError:
        return {}


def _images_in(folder: Path) -> list[Path]:
    return [p for p in _children(folder).values() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _first_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    kids = _children(folder)
    return next((kids[n] for n in names if n in kids and kids[n].is_dir()), None)


def describe_busi_folder(root: str | os.PathLike[str]) -> BusiLayout:
    """Which BUSI layout ``root`` has, or why it is not one (one line each way)."""
    root = Path(root)
    if not root.is_dir():
        return BusiLayout(None, f"{root}: not a BUSI folder: no such folder (BUSI layout: benign/, malignant/, "
                                "normal/)", {})
    kids = _children(root)
    classes = {c: kids[c] for c in BUSI_CLASSES if c in kids and kids[c].is_dir()}
    if not classes:
        return BusiLayout(None, f"{root}: not a BUSI folder: no benign/, malignant/ or normal/ folder (BUSI layout)", {})
    kinds, empty = set(), []
    for cls, folder in classes.items():
        images_dir = _first_dir(folder, IMAGE_DIRS)
        if images_dir is not None and _images_in(images_dir):
            kinds.add("subfolders")
        elif any(not _MASK.match(p.stem) for p in _images_in(folder)):
            kinds.add("side-by-side")
        else:
            empty.append(f"{cls}/")
    if not kinds:
        return BusiLayout(None, f"{root}: not a BUSI folder: {', '.join(empty)} hold no image (looked for *.png/*.jpg "
                                f"beside their masks and in an images/ subfolder)", classes)
    if len(kinds) > 1:
        return BusiLayout(None, f"{root}: not a BUSI folder: class folders mix layouts (images beside masks in some, "
                                "in images/ subfolders in others)", classes)
    kind = kinds.pop()
    where = ("images and masks side by side in each class folder" if kind == "side-by-side"
             else "images/ and masks/ subfolders in each class folder")
    skipped = f"; {', '.join(empty)} without images" if empty else ""
    return BusiLayout(kind, f"{root}: BUSI layout '{kind}': {where} ({', '.join(f'{c}/' for c in classes)}){skipped}",
                      classes)


def _exam_id(cls: str, stem: str, used: set[str]) -> str:
    m = _CLASSIC.match(stem)
    if m and m.group("cls").lower() == cls:
        base = f"busi-{cls}-{int(m.group('n'))}"  # the ids of the original distribution
    else:
        base = f"busi-{cls}-{re.sub(r'[^A-Za-z0-9._-]+', '_', stem).strip('_') or 'image'}"
    exam_id, k = base, 2
    while exam_id in used:  # x.png and x.jpg, or names that clean to the same id
        exam_id, k = f"{base}-{k}", k + 1
    used.add(exam_id)
    return exam_id


def _class_files(root: Path, cls: str, folder: Path, kind: str,
                 problems: Problems | None) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """Images by stem and their masks ``(index, path)`` by image stem, for one class folder."""
    images: dict[str, Path] = {}
    masks: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    if kind == "side-by-side":
        img_dir, mask_dir = folder, folder
    else:
        img_dir, mask_dir = _first_dir(folder, IMAGE_DIRS), _first_dir(folder, MASK_DIRS)
        assert img_dir is not None
    for f in sorted(img_dir.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue
        if dataset_file(root, f, problems, f"{cls}/") is None:
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            problem(problems, str(f), f"not an image file ({f.suffix or 'no suffix'}) in {cls}/")
            continue
        m = _MASK.match(f.stem)
        if m and kind == "side-by-side":
            masks[m.group("stem")].append((int(m.group("k") or 0), f))
        else:
            images[f.stem] = f
    classic = {s for s in images if (m := _CLASSIC.match(s)) and m.group("cls").lower() == cls}
    if classic:
        # The original distribution: any other name in the folder is a stray file, not an image.
        for stem in sorted(set(images) - classic):
            problem(problems, str(images.pop(stem)), f"not a BUSI file name for folder {cls}/ (expected '{cls} (N).png')")
    if kind == "subfolders" and mask_dir is not None:
        for f in sorted(mask_dir.iterdir()):
            if f.name.startswith(".") or f.is_dir() or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if dataset_file(root, f, problems, f"{cls}/{mask_dir.name}/") is None:
                continue
            m = _MASK.match(f.stem)
            stem, k = (m.group("stem"), int(m.group("k") or 0)) if m else (f.stem, 0)
            masks[stem].append((k, f))
    return images, masks


def adapt_busi(root: str | os.PathLike[str], problems: Problems | None = None,
               check_duplicates: bool = True) -> list[Exam]:
    """BUSI folder (any layout of :func:`describe_busi_folder`) → one ultrasound exam per image.

    Side unknown → view ``U-US``; label ``labels["U"]`` from the class folder (normal = 0/0).
    Masks of benign/malignant images are attached with that label; masks of normal images
    (empty) are not. Exam ids ``busi-<class>-<N>`` for the original ``<class> (N).png`` names,
    else ``busi-<class>-<file stem>``; ``meta["layout"]`` names the layout. With
    ``check_duplicates`` exact duplicate images are reported and left out (module docstring).
    Raises :class:`ManifestError` with the one-line reason when ``root`` is not a BUSI folder.
    """
    root = Path(root).resolve()
    layout = describe_busi_folder(root)
    if layout.kind is None:
        raise ManifestError(layout.message)
    exams: list[Exam] = []
    used: set[str] = set()
    for cls, folder in layout.classes.items():
        images, masks = _class_files(root, cls, folder, layout.kind, problems)
        for stem in sorted(images, key=lambda s: (_classic_number(s), s)):
            image = ImageRef(path=str(images[stem]), meta={"class": cls})
            if cls != "normal":
                image.masks = [LesionMask(str(p), cls, "lesion") for _, p in sorted(masks.get(stem, []))]
            exams.append(Exam(exam_id=_exam_id(cls, stem, used), modality=Modality.US, views={"U-US": [image]},
                              labels={"U": BreastLabel(int(cls == "benign"), int(cls == "malignant"))},
                              meta={"dataset": "BUSI", "layout": layout.kind}))
        for stem in sorted(set(masks) - set(images)):
            for _, p in masks[stem]:
                problem(problems, str(p), "mask without its image")
    if check_duplicates:
        from breastscreen.data.duplicates import drop_duplicate_exams

        exams = drop_duplicate_exams(exams, problems)
    return exams


def _classic_number(stem: str) -> int:
    m = _CLASSIC.match(stem)
    return int(m.group("n")) if m else 1 << 30
