"""What the lesion classifier's networks see, computed once: window features and saliency maps.

:class:`LesionFeatures` runs the local module ``f_loc`` on windows (class probabilities and the
32-d embedding) and the global context network on whole images (two saliency maps). Training
of ``f_agg`` (``breastscreen train lesion``) and ``breastscreen predict-lesions`` both go through
it, so the two cannot disagree. With a cache folder, each image's saliency maps and each
lesion's window features are written as one ``.npz`` file (written to a temporary name and
renamed, so an interrupted run leaves no half file and a rerun skips what is done). The cache
folder's name holds the two checkpoints' sha256 and the window settings, so features of other
checkpoints are never reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastscreen.data.types import ImageRef
from breastscreen.errors import BreastscreenError


@dataclass
class LoadedModel:
    """A checkpoint loaded for feature extraction."""

    model: torch.nn.Module
    spec: Any
    sha256: str
    path: str


def load_feature_model(ref: str, family: str, device: torch.device, what: str) -> LoadedModel:
    """Load ``ref`` and check that its spec family is ``family`` (``patch`` or ``image``)."""
    from breastscreen.models.checkpoint import load_checkpoint

    ck = load_checkpoint(ref)
    spec = ck.spec
    if spec.family != family:
        raise BreastscreenError(f"{ref}: a {spec.family} model cannot be the {what} (expected a {family} model)")
    if family == "image" and getattr(spec, "kind", None) != "saliency":
        raise BreastscreenError(f"{ref}: the context model must be a global saliency network (train context), "
                                f"got a {spec.kind} model")
    return LoadedModel(ck.model.to(device).eval(), spec, ck.sha256, str(ref))


def standardised_image(image: ImageRef) -> np.ndarray:
    """A preprocessed image standardised over the whole image (what the patch classifier saw in training)."""
    from breastscreen.preprocess.mammo import standardize
    from breastscreen.specs.sources import preprocessed_pixels

    return standardize(preprocessed_pixels(image))


def image_identity(image: ImageRef) -> str:
    """What identifies an image file's content in cache keys: resolved path, frame, size, mtime."""
    p = Path(image.path)
    try:
        st = p.stat()
        stamp = f"{st.st_size}#{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return f"{p.resolve()}#{image.frame}#{stamp}"


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


class LesionFeatures:
    """f_loc window features and context saliency maps, optionally cached on disk (see the module docstring)."""

    def __init__(self, patch_model: str, context_model: str | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64, cache_dir: str | Path | None = None, windows_key: dict[str, Any] | None = None
                 ) -> None:
        self.device = torch.device(device)
        self.local = load_feature_model(patch_model, "patch", self.device, "local module (f_loc)")
        if getattr(self.local.model.config, "embedding_dim", 0) <= 0:
            raise BreastscreenError(f"{patch_model}: the local module needs an embedding layer "
                                    "(model=densenet161-patch-embed or densenet-tiny-embed)")
        self.context = (load_feature_model(context_model, "image", self.device, "context model")
                        if context_model else None)
        self.batch_size = int(batch_size)
        self.cache: Path | None = None
        if cache_dir is not None:
            ident = {"f_loc": self.local.sha256, "context": self.context.sha256 if self.context else None,
                     **(windows_key or {})}
            digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
            self.cache = Path(cache_dir) / f"features-{digest}"
            self.cache.mkdir(parents=True, exist_ok=True)
            (self.cache / "identity.json").write_text(json.dumps(ident, indent=2, sort_keys=True))

    @property
    def embedding_dim(self) -> int:
        """Size of f_loc's embedding."""
        return int(self.local.model.config.embedding_dim)

    @property
    def patch_size(self) -> int:
        """f_loc's input side in pixels."""
        return int(self.local.spec.patch_size)

    @property
    def scale(self) -> float:
        """Image scale f_loc was trained at."""
        return float(self.local.spec.scale)

    def grid_size(self) -> tuple[int, int] | None:
        """The context model's saliency grid (None without a context model)."""
        if self.context is None:
            return None
        h, w = self.context.spec.image_size
        x = torch.zeros(1, self.context.spec.in_channels, h, w, device="meta")
        probe = __import__("copy").deepcopy(self.context.model).to("meta")
        with torch.no_grad():
            sal = probe(x)["saliency"]
        return int(sal.shape[-2]), int(sal.shape[-1])

    def _cached(self, sub: str, key: str) -> Path | None:
        if self.cache is None:
            return None
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.cache / sub / f"{name}.npz"

    def saliency(self, image: ImageRef, view: str) -> np.ndarray:
        """The context network's saliency maps [2, h, w] (benign, malignant) of one preprocessed image."""
        if self.context is None:
            raise BreastscreenError("no context model was given")
        path = self._cached("saliency", image_identity(image))
        if path is not None and path.is_file():
            return np.load(path)["saliency"]
        spec = self.context.spec
        prepared = spec.prepare(image, view)
        x = torch.from_numpy(spec.image_inputs(prepared, view, None, n=1)).to(self.device)
        with torch.inference_mode():
            sal = self.context.model(x)["saliency"][0].float().cpu().numpy()
        if path is not None:
            _atomic_npz(path, saliency=sal)
        return sal

    def window_features(self, std_image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f_loc class probabilities [n, 4] and embeddings [n, D] of windows ``boxes`` of a standardised image."""
        from breastscreen.specs.lesion import window_patches

        probs, embs = [], []
        for start in range(0, len(boxes), self.batch_size):
            x = torch.from_numpy(window_patches(std_image, boxes[start:start + self.batch_size], self.patch_size))
            with torch.inference_mode():
                out = self.local.model(x.to(self.device))
            probs.append(out["probs"].float().cpu().numpy())
            embs.append(out["embedding"].float().cpu().numpy())
        if not probs:
            return np.zeros((0, 4), np.float32), np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(probs), np.concatenate(embs)

    def lesion_features(self, std_image: np.ndarray, boxes: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`window_features`, cached under ``key`` (the image's identity, the lesion and its window draw)."""
        path = self._cached("windows", key)
        if path is not None and path.is_file():
            data = np.load(path)
            if data["boxes"].shape == boxes.shape and np.allclose(data["boxes"], boxes):
                return data["probs"], data["embedding"]
        probs, emb = self.window_features(std_image, boxes)
        if path is not None:
            _atomic_npz(path, boxes=boxes, probs=probs, embedding=emb)
        return probs, emb
