"""Exam predictions: manifest (or folder) + checkpoint(s) -> per-breast probabilities, pictures, report.

Pipeline (:func:`predict`): read or build the manifest -> load the checkpoints (files, bundled
names or ensemble manifests) -> preprocess at the models' scale -> make or read patch heatmaps
when the model takes them -> per exam, build each view's model input with ``--tta`` copies
(:mod:`breastscreen.inference.tta`) -> run every member, average its copies, then average the
members -> write ``predictions.csv``, ``predictions.jsonl``, ``errors.csv``, ``run.json``,
pictures and ``index.html``.

Model families plug in through a small adapter (:class:`Adapter`): ``multiview`` (NYU four-view
models and the MV-DCN), ``image`` (per-view whole-image models: all-convolutional classifier,
global saliency network) and ``us`` (ultrasound gated-attention MIL). An adapter turns one
preprocessed exam into an :class:`ExamPrediction`.

Missing views and several images per view (documented behaviour):

* multiview: missing views are left out of the model input and flagged absent (the NYU model
  then averages only complete CC/MLO branches, or the views present; the MV-DCN uses zero
  features for them). A view with several images: sample ``c`` uses image ``c mod n_view`` of
  every view, for ``c`` up to the largest image count, and the samples are averaged — every
  image is used at least once.
* image: each image is predicted alone; a breast's probability is the mean over all its images
  (CC and MLO, every image of a view); a breast without images gets no value (empty CSV cell).
* us: all images of a breast form one bag; images of unknown laterality (``U-US``) form their own
  bag reported as breast ``U`` in ``predictions.jsonl`` and, when any exam has one, in the
  extra CSV columns ``unknown_benign, unknown_malignant`` (after the usual columns).

A folder in the BUSI layout (``benign/``, ``malignant/``, ``normal/`` holding ``<class> (N).png``)
is read with the BUSI adapter (one ``U-US`` exam per image, masks attached, not predicted) and
the manifest used is saved as ``OUT/manifest.jsonl`` (labels included, for ``evaluate --labels``).

One failed exam (unreadable image, no breast found, missing heatmap) goes to ``errors.csv`` and
the rest of the batch completes. Numbers are deterministic on CPU for the same inputs,
checkpoints, seed and TTA count: every random draw comes from a seed derived from
``(seed, exam_id, view, image index)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from breastscreen import __version__
from breastscreen.data.types import MG_VIEWS, US_VIEWS, Exam, Modality, view_side
from breastscreen.errors import BreastscreenError, CheckpointError
from breastscreen.inference import tta as tta_mod
from breastscreen.inference.ensemble import MemberRef, average, expand_model_refs
from breastscreen.inference.heatmaps import (
    generate_heatmaps,
    heatmap_filename,
    load_preprocessed,
    patch_classes,
    read_heatmap_file,
)
from breastscreen.labels import BIRADS_CLASSES, BREAST_LABELS, HEATMAP_CHANNELS

BIRADS_COLUMNS: tuple[str, ...] = tuple(f"birads_{c}" for c in BIRADS_CLASSES)
# CSV columns of the unknown-laterality (``U-US``) bag, added only when some exam has one.
UNKNOWN_COLUMNS: tuple[str, ...] = ("unknown_benign", "unknown_malignant")
# Manifest written into the output folder when predict built it from a dataset folder (BUSI).
INPUT_MANIFEST = "manifest.jsonl"
# Files whose presence marks an earlier prediction run in the output folder.
RUN_OUTPUTS: tuple[str, ...] = ("predictions.csv", "predictions.jsonl", "run.json")
# Errors that belong to one exam's data (never to the run as a whole).
EXAM_ERRORS: tuple[type[BaseException], ...] = (BreastscreenError, ValueError, OSError, KeyError)


# --------------------------------------------------------------------------- members


@dataclass
class Member:
    """One loaded checkpoint of an ensemble."""

    ref: MemberRef
    model: nn.Module
    name: str
    sha256: str
    metadata: dict[str, Any]
    family: str  # multiview | image | us
    kind: str  # nyu | mvdcn | allconv | saliency | us
    task: str  # cancer | birads
    scale: float
    in_channels: int


def _classify(model: nn.Module, metadata: dict[str, Any]) -> tuple[str, str, str]:
    """(family, kind, task) of a model, from its class (metadata ``family``/``kind`` may override)."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if cls == "NYUMultiView":
        family, kind = "multiview", "nyu"
        task = "birads" if getattr(config, "task", "cancer") == "birads" else "cancer"
    elif cls == "MVDCN":
        family, kind, task = "multiview", "mvdcn", "birads"
    elif cls == "AllConvClassifier":
        family, kind, task = "image", "allconv", "cancer"
    elif cls == "GlobalSaliencyNet":
        family, kind, task = "image", "saliency", "cancer"
    elif cls == "UltrasoundMIL":
        family, kind, task = "us", "us", "cancer"
    else:
        family, kind, task = metadata.get("family", ""), metadata.get("kind", ""), metadata.get("task", "cancer")
        if family not in ("multiview", "image", "us"):
            raise CheckpointError(
                f"model class {cls} is not an exam-level model predict can run "
                "(expected a NYU multi-view, MV-DCN, all-convolutional, global saliency or ultrasound MIL model)"
            )
    return metadata.get("family", family), metadata.get("kind", kind), task


def _in_channels(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "in_channels", 1) or 1)


def load_members(refs: Sequence[str], device: torch.device) -> list[Member]:
    """Load every checkpoint (ensemble manifests expanded) and check they can be averaged."""
    from breastscreen.models import load_checkpoint

    members = []
    for ref in expand_model_refs(refs):
        ckpt = load_checkpoint(ref.ref)
        model = ckpt.model.to(device).eval()
        metadata = dict(ckpt.metadata or {})
        family, kind, task = _classify(model, metadata)
        scale = float(metadata.get("scale") or (metadata.get("preprocessing") or {}).get("scale") or 1.0)
        members.append(Member(ref, model, ckpt.name, ckpt.sha256, metadata, family, kind, task, scale, _in_channels(model)))
    first = members[0]
    for m in members[1:]:
        for attr in ("family", "kind", "task", "scale", "in_channels"):
            if getattr(m, attr) != getattr(first, attr):
                raise CheckpointError(
                    f"ensemble members must agree on {attr}: {first.ref.ref} has {getattr(first, attr)!r}, "
                    f"{m.ref.ref} has {getattr(m, attr)!r}"
                )
    return members


# --------------------------------------------------------------------------- results


@dataclass
class ExamPrediction:
    """Everything predicted for one exam."""

    exam_id: str
    values: dict[str, float | None]  # CSV columns (BREAST_LABELS and/or BIRADS columns, entropy)
    details: dict[str, Any] = field(default_factory=dict)  # per-view / per-branch / per-member outputs
    panels: dict[str, Any] = field(default_factory=dict)  # view -> (ImageRef, {map name: array}) for pictures
    us_bags: dict[str, Any] = field(default_factory=dict)  # breast -> data for US pictures


@dataclass
class PredictOptions:
    """Options of :func:`predict` (see ``breastscreen predict --help``)."""

    tta: int = 1
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    heatmaps_dir: str | None = None
    patch_model: str | None = None
    patch_batch_size: int = 256
    pictures: bool = True
    max_pictures: int | None = None
    workers: int = 1


@dataclass
class PredictRun:
    """Outcome of :func:`predict`."""

    out_dir: Path
    predictions: list[ExamPrediction]
    errors: list[tuple[str, str]]
    skipped_files: list[tuple[str, str]]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every exam got a prediction."""
        return not self.errors


def entropy(p: Sequence[float]) -> float:
    """Shannon entropy (natural log) of a probability vector: 0 = certain, ln(K) = uniform."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return float(-(q * np.log(q)).sum())


def _to_np(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_np(v) for k, v in x.items()}
    return x


def _run_model(model: nn.Module, device: torch.device, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
        out = model(*args, **kwargs)
    return _to_np({k: v for k, v in out.items() if k != "features"})


# --------------------------------------------------------------------------- context


class Context:
    """What adapters need besides the exam: members, options, device and the heatmap source."""

    def __init__(self, members: list[Member], options: PredictOptions, device: torch.device,
                 heatmaps_dir: Path | None) -> None:
        self.members = members
        self.options = options
        self.device = device
        self.heatmaps_dir = heatmaps_dir
        self.scale = members[0].scale

    def heatmaps(self, exam_id: str, view: str, index: int, shape: tuple[int, int]) -> np.ndarray:
        """Heatmaps [2, H, W] of one preprocessed image (error naming the file when absent/mismatched)."""
        if self.heatmaps_dir is None:
            raise BreastscreenError("this model needs heatmaps: pass --heatmaps DIR or --patch-model CKPT")
        path = self.heatmaps_dir / heatmap_filename(exam_id, view, index)
        if not path.is_file():
            raise BreastscreenError(f"{path}: heatmap file missing for {exam_id} {view} image {index}")
        maps, _ = read_heatmap_file(path)
        if maps.shape[1:] != tuple(shape):
            raise BreastscreenError(
                f"{path}: heatmap shape {maps.shape[1:]} does not match the preprocessed image {tuple(shape)}; "
                "were the heatmaps made at another scale?"
            )
        return maps


def _load_view(image: Any, need_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
    record = image.preprocessing or {}
    pixels, mask = load_preprocessed(image, need_mask=need_mask and bool(record.get("breast_mask_path")))
    return pixels, mask


# --------------------------------------------------------------------------- adapters


class Adapter:
    """Turns one preprocessed exam into an :class:`ExamPrediction` for one model family."""

    modality: Modality = Modality.MG

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def columns(self) -> list[str]:
        """CSV value columns of this family."""
        return list(BREAST_LABELS)

    def predict_exam(self, exam: Exam) -> ExamPrediction:
        """Predict one exam (raises an exam-level error on bad data)."""
        raise NotImplementedError


class MultiViewAdapter(Adapter):
    """NYU four-view models (cancer or BI-RADS) and the MV-DCN (BI-RADS)."""

    @property
    def columns(self) -> list[str]:
        """BREAST_LABELS for cancer models; BI-RADS columns and entropy for BI-RADS models."""
        if self.ctx.members[0].task == "birads":
            return list(BREAST_LABELS) + list(BIRADS_COLUMNS) + ["entropy"]
        return list(BREAST_LABELS)

    def predict_exam(self, exam: Exam) -> ExamPrediction:
        ctx, m0 = self.ctx, self.ctx.members[0]
        family = "mvdcn" if m0.kind == "mvdcn" else "nyu"
        needs_heatmaps = m0.in_channels > 1
        present = [v for v in MG_VIEWS if exam.views.get(v)]
        if not present:
            raise BreastscreenError("exam has no mammography image")
        n_combo = max(len(exam.views[v]) for v in present)
        inputs: dict[str, np.ndarray] = {}
        panels: dict[str, Any] = {}
        for view in present:
            per_image = []
            for k, image in enumerate(exam.views[view]):
                record = image.preprocessing or {}
                stored = "mvdcn_window" if family == "mvdcn" else "window"
                pixels, mask = _load_view(image, need_mask=stored not in record)
                maps = ctx.heatmaps(exam.exam_id, view, k, pixels.shape) if needs_heatmaps else None
                window = tta_mod.base_window(family, view, record, mask, ctx.scale)
                seed = tta_mod.derive_seed(ctx.options.seed, exam.exam_id, view, k)
                x = tta_mod.view_inputs(family, view, pixels, maps, window, ctx.options.tta, seed, ctx.scale)
                if x.shape[1] != m0.in_channels:
                    raise BreastscreenError(f"{view}: built {x.shape[1]} input channels, the model takes {m0.in_channels}")
                per_image.append(x)
                if k == 0:
                    panels[view] = (image, None if maps is None else dict(zip(HEATMAP_CHANNELS, maps)))
            inputs[view] = np.concatenate([per_image[c % len(per_image)] for c in range(n_combo)])
        rows = next(iter(inputs.values())).shape[0]
        member_out = []
        for member in ctx.members:
            chunks = []
            for s in range(0, rows, max(1, ctx.options.batch_size)):
                views = {v: torch.from_numpy(x[s : s + ctx.options.batch_size]).to(ctx.device) for v, x in inputs.items()}
                chunks.append(_run_model(member.model, ctx.device, views))
            probs = np.concatenate([c["probs"] for c in chunks]).mean(axis=0)
            branch = {a: np.concatenate([c["branch_probs"][a] for c in chunks]).mean(axis=0)
                      for a in (chunks[0].get("branch_probs") or {})}
            member_out.append({"probs": probs, "branch_probs": branch})
        probs = average([m["probs"] for m in member_out])
        values: dict[str, float | None] = {c: None for c in self.columns}
        details: dict[str, Any] = {
            "views_used": present,
            "missing_views": [v for v in MG_VIEWS if v not in present],
            "images_per_view": {v: len(exam.views[v]) for v in present},
            "samples_per_member": rows,
        }
        if m0.task == "birads":
            values.update({c: float(p) for c, p in zip(BIRADS_COLUMNS, probs)})
            values["entropy"] = entropy(probs)
        else:
            values.update({c: float(p) for c, p in zip(BREAST_LABELS, probs)})
        if member_out[0]["branch_probs"]:
            names = list(BIRADS_COLUMNS) if m0.task == "birads" else list(BREAST_LABELS)
            details["branch_probs"] = {
                a: dict(zip(names, (float(v) for v in average([m["branch_probs"][a] for m in member_out]))))
                for a in member_out[0]["branch_probs"]
            }
        details["members"] = [
            {"sha256": mem.sha256, "probs": [float(v) for v in out["probs"]]} for mem, out in zip(ctx.members, member_out)
        ]
        return ExamPrediction(exam.exam_id, values, details, panels)


class ImageAdapter(Adapter):
    """Per-view whole-image models: all-convolutional classifier and global saliency network."""

    def predict_exam(self, exam: Exam) -> ExamPrediction:
        ctx, m0 = self.ctx, self.ctx.members[0]
        needs_heatmaps = m0.in_channels > 1
        present = [v for v in MG_VIEWS if exam.views.get(v)]
        if not present:
            raise BreastscreenError("exam has no mammography image")
        per_view: dict[str, list[dict[str, float]]] = {}
        side_probs: dict[str, list[np.ndarray]] = {"L": [], "R": []}
        panels: dict[str, Any] = {}
        for view in present:
            per_view[view] = []
            for k, image in enumerate(exam.views[view]):
                record = image.preprocessing or {}
                pixels, mask = _load_view(image, need_mask="window" not in record)
                maps = ctx.heatmaps(exam.exam_id, view, k, pixels.shape) if needs_heatmaps else None
                window = tta_mod.base_window("flips", view, record, mask, ctx.scale)
                seed = tta_mod.derive_seed(ctx.options.seed, exam.exam_id, view, k)
                x = torch.from_numpy(tta_mod.view_inputs("flips", view, pixels, maps, window, ctx.options.tta, seed, ctx.scale))
                outs, saliency = [], []
                for member in ctx.members:
                    parts = [_run_model(member.model, ctx.device, x[s : s + ctx.options.batch_size].to(ctx.device))
                             for s in range(0, x.shape[0], max(1, ctx.options.batch_size))]
                    p = np.concatenate([q["probs"] for q in parts]).mean(axis=0)
                    # probs: all-conv [not cancer, cancer]; saliency net [benign, malignant]
                    outs.append(np.array([np.nan, p[1]]) if m0.kind == "allconv" else p[:2])
                    if "saliency" in parts[0]:
                        saliency.append(parts[0]["saliency"][0])  # copy 0 = un-augmented geometry
                p = average(outs)
                side_probs[view_side(view)].append(p)
                per_view[view].append({"benign": None if np.isnan(p[0]) else float(p[0]), "malignant": float(p[1])})
                if k == 0:
                    overlay = None
                    if saliency:
                        sal = average(saliency).astype(np.float32)
                        overlay = dict(zip(HEATMAP_CHANNELS, _window_map_to_image(sal, window, pixels.shape)))
                    elif maps is not None:
                        overlay = dict(zip(HEATMAP_CHANNELS, maps))
                    panels[view] = (image, overlay)
        values: dict[str, float | None] = {c: None for c in BREAST_LABELS}
        for side, name in (("L", "left"), ("R", "right")):
            if side_probs[side]:
                p = np.mean(np.stack(side_probs[side]), axis=0)
                values[f"{name}_benign"] = None if np.isnan(p[0]) else float(p[0])
                values[f"{name}_malignant"] = float(p[1])
        details = {"per_view": per_view, "views_used": present, "missing_views": [v for v in MG_VIEWS if v not in present]}
        return ExamPrediction(exam.exam_id, values, details, panels)


def _window_map_to_image(maps: np.ndarray, window: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Place low-resolution maps [C, h, w] of a model window back onto the preprocessed image grid."""
    import cv2

    x0, y0, x1, y1 = (int(v) for v in window)
    up = np.stack([cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) for m in maps])
    out = np.zeros((maps.shape[0], *shape), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0:sy1, sx0:sx1] = up[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


class USAdapter(Adapter):
    """Ultrasound gated-attention MIL: one bag per breast (all its images)."""

    modality = Modality.US

    def predict_exam(self, exam: Exam) -> ExamPrediction:
        from breastscreen.preprocess.ultrasound import USAugmentConfig, USTransform

        ctx, m0 = self.ctx, self.ctx.members[0]
        size = int(getattr(m0.model.config, "input_size", 256))
        cfg = USAugmentConfig(size=(size, size))
        values: dict[str, float | None] = {c: None for c in BREAST_LABELS}
        details: dict[str, Any] = {"breasts": {}}
        bags: dict[str, Any] = {}
        for view in US_VIEWS:
            images = exam.views.get(view) or []
            if not images:
                continue
            side = view_side(view) or "U"
            pixels = [load_preprocessed(img, need_mask=False)[0] for img in images]
            copies = []
            for t in range(ctx.options.tta):
                rng = np.random.default_rng(tta_mod.derive_seed(ctx.options.seed, exam.exam_id, view, t))
                transform = USTransform(train=t > 0, config=cfg)
                copies.append(np.stack([transform(p, rng)[0] for p in pixels])[:, None])
            x = torch.from_numpy(np.stack(copies).astype(np.float32))  # [T, K, 1, s, s]
            if m0.in_channels != 1:
                x = x.expand(-1, -1, m0.in_channels, -1, -1)
            probs, att, sal = [], [], []
            for member in ctx.members:
                out = [_run_model(member.model, ctx.device, x[s : s + ctx.options.batch_size].to(ctx.device))
                       for s in range(0, x.shape[0], max(1, ctx.options.batch_size))]
                probs.append(np.concatenate([o["probs"] for o in out]).mean(axis=0))
                att.append(np.concatenate([o["attention"] for o in out]).mean(axis=0))
                sal.append(out[0]["saliency"][0])  # copy 0 = un-augmented
            p, a, s = average(probs), average(att), average(sal)
            if side in ("L", "R"):
                name = "left" if side == "L" else "right"
                values[f"{name}_benign"], values[f"{name}_malignant"] = float(p[0]), float(p[1])
            details["breasts"][side] = {
                "benign": float(p[0]), "malignant": float(p[1]),
                "attention_malignant": [float(v) for v in a[:, 1]],
                "attention_benign": [float(v) for v in a[:, 0]],
                "images": [img.preprocessing.get("source_path", img.path) if img.preprocessing else img.path for img in images],
            }
            bags[side] = {"pixels": pixels, "attention": a[:, 1], "saliency": s[:, 1], "probs": p}
        if not bags:
            raise BreastscreenError("exam has no ultrasound image")
        return ExamPrediction(exam.exam_id, values, details, {}, bags)


ADAPTERS: dict[str, type[Adapter]] = {"multiview": MultiViewAdapter, "image": ImageAdapter, "us": USAdapter}


# --------------------------------------------------------------------------- inputs


def _attribute(problems: Sequence[tuple[str, str]], exam_ids: Iterable[str]) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Assign unusable files to exams by file-name prefix ``<exam_id>_``; return (per exam, unassigned)."""
    ids = sorted(exam_ids, key=len, reverse=True)
    per_exam: dict[str, list[str]] = {}
    rest = []
    for path, reason in problems:
        stem = Path(path).name
        owner = next((e for e in ids if stem.startswith(e + "_")), None)
        if owner is None:
            rest.append((path, reason))
        else:
            per_exam.setdefault(owner, []).append(f"{Path(path).name}: {reason}")
    return per_exam, rest


def is_busi_folder(folder: Path) -> bool:
    """True when ``folder`` has the BUSI layout: a ``benign/``, ``malignant/`` or ``normal/``
    subfolder holding at least one ``<class> (N).png`` (BUSI names have no ``<exam_id>_`` prefix,
    so the generic folder builder cannot place them)."""
    import re

    found = False
    for cls in ("benign", "malignant", "normal"):
        sub = folder / cls
        if sub.is_dir():
            pat = re.compile(rf"^{cls} \(\d+\)\.png$", re.IGNORECASE)
            if any(pat.match(f.name) for f in sub.iterdir()):
                found = True
    return found


def load_inputs(source: str | os.PathLike[str]) -> tuple[list[Exam], list[tuple[str, str]], list[tuple[str, str]]]:
    """Exams from a manifest file or a folder; returns (exams, exam errors, unassigned file problems).

    For a folder the manifest is built on the fly; a file that cannot be used makes its exam
    (recognised by the ``<exam_id>_`` file-name prefix) fail, so an exam is never predicted from
    fewer views than it has because one of them is corrupt.
    """
    from breastscreen.data.manifest import read_manifest

    p = Path(source)
    if p.is_dir() and is_busi_folder(p):
        from breastscreen.data.adapters import adapt_busi

        problems: list[tuple[str, str]] = []
        return adapt_busi(p, problems), [], problems
    if p.is_dir():
        from breastscreen.data.build import build_manifest

        result = build_manifest(p)
        per_exam, rest = _attribute(result.problems, (e.exam_id for e in result.exams))
        errors = [(eid, "; ".join(reasons)) for eid, reasons in sorted(per_exam.items())]
        exams = [e for e in result.exams if e.exam_id not in per_exam]
        return exams, errors, rest
    if p.is_file():
        return read_manifest(p), [], []
    raise BreastscreenError(f"{p}: no such manifest file or folder")


def _preprocess(exams: list[Exam], out_dir: Path, scale: float, modality: Modality,
                workers: int) -> tuple[list[Exam], list[tuple[str, str]]]:
    """Preprocess the exams that need it at ``scale`` (already preprocessed ones must match it)."""
    from breastscreen.preprocess.pipeline import preprocess_manifest

    ready, todo, errors = [], [], []
    for exam in exams:
        records = [img.preprocessing for _, img in exam.iter_images()]
        if records and all(records):
            scales = {float(r.get("scale", 1.0)) for r in records} if modality is Modality.MG else {scale}
            if scales != {scale}:
                errors.append((exam.exam_id, f"images are preprocessed at scale {sorted(scales)}, the model needs "
                                             f"{scale}; give the raw manifest instead"))
            else:
                ready.append(exam)
        else:
            todo.append(exam)
    done: dict[str, Exam] = {}
    if todo:
        out, issues = preprocess_manifest(todo, out_dir, scale, resume=(out_dir / "manifest.jsonl").exists(),
                                          workers=workers)
        done = {e.exam_id: e for e in out}
        reasons: dict[str, list[str]] = {}
        for row in issues:
            if row.get("status") == "failed":
                reasons.setdefault(row["exam_id"], []).append(
                    f"{Path(row['path']).name}: {row['reason']}" if row.get("path") else row["reason"])
        for exam in todo:
            if exam.exam_id not in done:
                errors.append((exam.exam_id, "; ".join(reasons.get(exam.exam_id, ["preprocessing failed"]))))
    by_id = {e.exam_id: e for e in ready} | done
    return [by_id[e.exam_id] for e in exams if e.exam_id in by_id], errors


# --------------------------------------------------------------------------- main entry


def predict(
    source: str | os.PathLike[str],
    models: Sequence[str],
    out_dir: str | os.PathLike[str],
    options: PredictOptions | None = None,
    progress: Callable[[str, str], None] | None = None,
    *,
    overwrite: bool = False,
) -> PredictRun:
    """Predict every exam of ``source`` (manifest or folder) with ``models`` into ``out_dir``.

    ``progress(stage, exam_id)`` is called as work advances. User-input problems that concern
    the whole run (no model, unreadable checkpoint, unknown model family, an ``out_dir`` that
    already holds predictions while ``overwrite`` is False) raise :class:`BreastscreenError`;
    problems of one exam go to ``errors.csv``.
    """
    from breastscreen.utils import resolve_device

    opts = options or PredictOptions()
    if opts.tta < 1:
        raise BreastscreenError(f"--tta must be >= 1, got {opts.tta}")
    if opts.batch_size < 1:
        raise BreastscreenError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.heatmaps_dir and opts.patch_model:
        raise BreastscreenError("give either --heatmaps DIR or --patch-model CKPT, not both")
    start = time.perf_counter()
    out = Path(out_dir)
    earlier = [name for name in RUN_OUTPUTS if (out / name).is_file()]
    if earlier and not overwrite:
        raise BreastscreenError(
            f"{out} already holds predictions of an earlier run ({earlier[0]}); "
            "pass --overwrite to replace them or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    try:
        device = resolve_device(opts.device)
    except ValueError as exc:
        raise BreastscreenError(str(exc)) from None
    members = load_members(list(models), device)
    m0 = members[0]
    adapter_cls = ADAPTERS[m0.family]

    exams, errors, skipped = load_inputs(source)
    if Path(source).is_dir() and is_busi_folder(Path(source)):
        from breastscreen.data.manifest import write_manifest

        target = out / INPUT_MANIFEST
        if target.exists() and not overwrite:
            raise BreastscreenError(f"{target} already exists; pass --overwrite to replace it or choose another --out")
        write_manifest(exams, target)
    modality = adapter_cls.modality
    wrong = [e for e in exams if e.modality is not modality]
    errors += [(e.exam_id, f"modality {e.modality.value} cannot be read by a {m0.family} model ({m0.name})") for e in wrong]
    exams = [e for e in exams if e.modality is modality]
    if progress:
        progress("preprocess", "")
    exams, pre_errors = _preprocess(exams, out / "preprocessed", m0.scale, modality, opts.workers)
    errors += pre_errors

    heatmaps_dir = Path(opts.heatmaps_dir) if opts.heatmaps_dir else None
    patch_ref = opts.patch_model or (m0.metadata.get("patch_model") if m0.in_channels > 1 and not heatmaps_dir else None)
    patch_info: dict[str, Any] | None = None
    if patch_ref and m0.family != "us":
        from breastscreen.models import load_checkpoint

        ckpt = load_checkpoint(patch_ref)
        classes = patch_classes(ckpt, str(patch_ref))
        if progress:
            progress("heatmaps", "")
        heatmaps_dir = out / "heatmaps"
        hm = generate_heatmaps(
            exams, ckpt.model.to(device), heatmaps_dir, checkpoint_sha256=ckpt.sha256, checkpoint_name=ckpt.name,
            model_metadata=ckpt.metadata, class_names=classes, batch_size=opts.patch_batch_size, device=device,
            resume=True,
        )
        failed = {}
        for exam_id, view, path, reason in hm.errors:
            failed.setdefault(exam_id, []).append(f"heatmaps {view}: {reason}")
        errors += [(eid, "; ".join(r)) for eid, r in failed.items()]
        exams = [e for e in exams if e.exam_id not in failed]
        patch_info = {"checkpoint": str(patch_ref), "sha256": ckpt.sha256, "dir": str(heatmaps_dir)}
    if m0.in_channels > 1 and heatmaps_dir is None:
        raise BreastscreenError(
            f"model {m0.name} takes image + heatmaps ({m0.in_channels} channels): pass --heatmaps DIR or --patch-model CKPT"
        )

    ctx = Context(members, opts, device, heatmaps_dir)
    adapter = adapter_cls(ctx)
    predictions: list[ExamPrediction] = []
    for exam in exams:
        try:
            predictions.append(adapter.predict_exam(exam))
        except EXAM_ERRORS as exc:
            errors.append((exam.exam_id, str(exc) or type(exc).__name__))
        if progress:
            progress("predict", exam.exam_id)

    provenance = {
        "package_version": __version__,
        "models": [{"ref": m.ref.ref, "name": m.name, "sha256": m.sha256, "from": m.ref.source, **m.ref.info}
                   for m in members],
        "family": m0.family, "kind": m0.kind, "task": m0.task, "scale": m0.scale,
        "tta": opts.tta, "seed": opts.seed, "device": str(device),
        "heatmaps": patch_info or ({"dir": str(heatmaps_dir)} if heatmaps_dir else None),
        "source": str(Path(source).resolve()),
    }
    errors.sort()
    _write_outputs(out, adapter.columns, predictions, errors, skipped, provenance)
    if opts.pictures:
        if progress:
            progress("pictures", "")
        from breastscreen.inference.report import write_pictures_and_page

        write_pictures_and_page(out, predictions, errors, adapter.columns, provenance, opts.max_pictures)
    return PredictRun(out, predictions, errors, skipped, time.perf_counter() - start)


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def _write_outputs(out: Path, columns: list[str], predictions: list[ExamPrediction], errors: list[tuple[str, str]],
                   skipped: list[tuple[str, str]], provenance: dict[str, Any]) -> None:
    from breastscreen.utils import atomic_path

    unknown = any((p.details.get("breasts") or {}).get("U") for p in predictions)
    with atomic_path(out / "predictions.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["exam_id", *columns, *(UNKNOWN_COLUMNS if unknown else ())])
            for p in predictions:
                row = [p.exam_id, *(_fmt(p.values.get(c)) for c in columns)]
                if unknown:
                    bag = (p.details.get("breasts") or {}).get("U") or {}
                    row += [_fmt(bag.get("benign")), _fmt(bag.get("malignant"))]
                w.writerow(row)
    with atomic_path(out / "predictions.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in predictions:
                line = {"exam_id": p.exam_id, "probabilities": p.values, **p.details, "provenance": provenance}
                fh.write(json.dumps(line, default=float) + "\n")
    with atomic_path(out / "errors.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["exam_id", "reason"])
            w.writerows(errors)
    if not skipped:
        # An overwritten run must not keep the previous run's list.
        (out / "skipped_files.csv").unlink(missing_ok=True)
    else:
        with atomic_path(out / "skipped_files.csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "reason"])
                w.writerows(skipped)
    with atomic_path(out / "run.json") as tmp:
        tmp.write_text(json.dumps({**provenance, "n_predicted": len(predictions), "n_failed": len(errors)}, indent=2),
                       encoding="utf-8")
