"""Lesion-level prediction (Wu et al. 2020): each outlined lesion -> malignant / benign.

:class:`LesionPredictor` is the in-memory way to classify lesions: for a lesion it draws the
spec's windows over its region, runs ``f_loc`` on them (:class:`LesionFeatures`), stacks the
``f_agg`` input maps (:meth:`LesionSpec.agg_inputs`) with the image's global saliency maps,
and averages the per-window malignant/benign scores (normalised to sum to one). Without an
``f_agg`` model it predicts from ``f_loc`` alone ("local only", for comparison), with the same
windows. ``breastscreen train lesion`` validates through :func:`score_lesion` too, so the
validation AUC and ``predict-lesions`` agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastscreen.data.types import Exam
from breastscreen.errors import BreastscreenError
from breastscreen.inference.lesion_features import LesionFeatures, image_identity, standardised_image
from breastscreen.specs.lesion import LesionSpec, lesion_score, lesion_windows
from breastscreen.specs.mammo import derive_seed

LESION_COLUMNS: tuple[str, ...] = ("exam_id", "patient_id", "view", "image", "lesion_id", "outcome", "kind",
                                   "malignant", "benign")


@dataclass
class LesionFailure:
    """A lesion that could not be scored, and why (one line naming the file and the lesion)."""

    record: Any
    reason: str


@dataclass
class LesionResult:
    """One lesion's prediction and what produced it (for pictures)."""

    record: Any
    malignant: float
    benign: float
    boxes: np.ndarray
    window_scores: np.ndarray
    region: np.ndarray | None = None
    saliency: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The ``lesions.csv`` row."""
        r = self.record
        return {"exam_id": r.exam_id, "patient_id": r.patient_id or "", "view": r.view, "image": r.image_index,
                "lesion_id": r.lesion_id, "outcome": r.outcome or "", "kind": r.kind or "",
                "malignant": self.malignant, "benign": self.benign}


def agg_window_probs(agg: torch.nn.Module, spec: LesionSpec, boxes: np.ndarray, shape: tuple[int, int],
                     saliency: np.ndarray | None, embeddings: np.ndarray, device: torch.device,
                     batch_size: int = 100) -> np.ndarray:
    """f_agg class probabilities [n, 4] of windows ``boxes``."""
    out = []
    for start in range(0, len(boxes), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.from_numpy(spec.agg_inputs(boxes[sl], shape, saliency, embeddings[sl])).to(device)
        with torch.inference_mode():
            out.append(agg(x)["probs"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(spec.classes)), np.float32)


def score_lesion(features: LesionFeatures, spec: LesionSpec, agg: torch.nn.Module | None, std_image: np.ndarray,
                 region: np.ndarray, key: str, saliency: np.ndarray | None, device: torch.device, image_id: str = ""
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(malignant, benign, windows [n, 4], per-window class probabilities [n, 4]) of one lesion.

    ``key`` (the lesion's key) seeds the windows; ``image_id`` (:func:`image_identity`) keeps the
    feature cache of one image file apart from another image with the same exam id and view.
    """
    boxes = spec.windows_for(region, key)
    probs, emb = features.lesion_features(std_image, boxes, f"{image_id}#{key}#{spec.window_seed}#{spec.windows}")
    if agg is not None:
        probs = agg_window_probs(agg, spec, boxes, std_image.shape, saliency, emb, device)
    m, b = lesion_score(probs)
    return m, b, boxes, probs


class LesionPredictor:
    """Classify lesions with f_loc (+ context + f_agg); see the module docstring."""

    def __init__(self, features: LesionFeatures, spec: LesionSpec, agg: torch.nn.Module | None,
                 agg_sha256: str = "") -> None:
        self.features, self.spec, self.agg, self.agg_sha256 = features, spec, agg, agg_sha256
        self.device = features.device

    @classmethod
    def load(cls, patch_model: str, context_model: str | None = None, model: str | None = None, *,
             device: str = "cpu", windows: int | None = None, seed: int | None = None,
             cache_dir: str | Path | None = None, batch_size: int = 64) -> "LesionPredictor":
        """Load the networks. Without ``model`` (f_agg) the prediction is local only."""
        from breastscreen.models.checkpoint import load_checkpoint

        agg, agg_sha = None, ""
        if model:
            ck = load_checkpoint(model)
            spec = ck.spec
            if spec.family != "lesion":
                raise BreastscreenError(f"{model}: a {spec.family} model is not a lesion model (f_agg; train lesion)")
            agg, agg_sha = ck.model.to(device).eval(), ck.sha256
            if spec.needs_context and not context_model:
                raise BreastscreenError(f"{model} uses the global saliency maps: give --context-model")
        features = LesionFeatures(patch_model, context_model if (agg is None or spec.needs_context) else None,
                                  device=device, batch_size=batch_size, cache_dir=cache_dir)
        if agg is None:
            spec = LesionSpec(scale=features.scale, patch_size=features.patch_size, maps=("embedding",),
                              embedding_dim=features.embedding_dim, patch_model_sha256=features.local.sha256)
        else:
            for name, want, have in (("local module", spec.patch_model_sha256, features.local.sha256),
                                     ("context model", spec.context_model_sha256,
                                      features.context.sha256 if features.context else None)):
                if want and have and want != have:
                    raise BreastscreenError(f"{model} was trained on the features of another {name} "
                                            f"(sha256 {want[:12]}…, given {have[:12]}…); give the same checkpoints")
        update: dict[str, Any] = {}
        if windows is not None:
            update["windows"] = int(windows)
        if seed is not None:
            update["window_seed"] = int(seed)
        if update:
            spec = spec.model_copy(update=update)
            LesionSpec.model_validate(spec.model_dump())
        return cls(features, spec, agg, agg_sha)

    @property
    def local_only(self) -> bool:
        """True when no f_agg is used."""
        return self.agg is None

    def predict_image(self, exam: Exam, view: str, index: int) -> list[LesionResult | LesionFailure]:
        """Every lesion of one image: a result, or the error that lesion raised (others go on)."""
        from breastscreen.data.lesions import image_lesions, lesion_region
        from breastscreen.training.datasets import check_preprocessed

        image = exam.views[view][index]
        records = image_lesions(exam, view, index, image)
        if not records:
            return []
        check_preprocessed([exam], image.path)
        scale = float((image.preprocessing or {}).get("scale", 0))
        if not np.isclose(scale, self.spec.scale):
            raise BreastscreenError(f"{image.path}: preprocessed at scale {scale}, the lesion models need {self.spec.scale}")
        std = standardised_image(image)
        saliency = None
        if self.features.context is not None and (self.agg is None or self.spec.needs_context):
            saliency = self.features.saliency(image, view)
        image_id = image_identity(image)
        out: list[LesionResult | LesionFailure] = []
        for rec in records:
            try:
                region = lesion_region(rec, std.shape)
                m, b, boxes, probs = score_lesion(self.features, self.spec, self.agg, std, region, rec.key,
                                                  saliency if self.agg is not None else None, self.device, image_id)
            except BreastscreenError as exc:
                out.append(LesionFailure(rec, str(exc)))
                continue
            from breastscreen.specs.lesion import window_scores

            out.append(LesionResult(rec, m, b, boxes, window_scores(probs), region, saliency))
        return out


def training_windows(region: np.ndarray, n: int, spec: LesionSpec, seed: int, key: str) -> np.ndarray:
    """Training windows of a lesion: drawn like the prediction windows, from a training seed."""
    return lesion_windows(region, n, spec.pixel_size_range, derive_seed(seed, "train", key))
