"""Model specs: what each model family consumes and produces (see :mod:`breastscreen.specs.base`).

Families: ``multiview`` (NYU four-view cancer / BI-RADS models, MV-DCN), ``image``
(all-convolutional classifier, global saliency network), ``roi-patch`` (the all-convolutional
system's ROI patch classifier), ``patch`` (sliding-window patch classifiers), ``us``
(ultrasound gated-attention MIL), ``lesion`` (the lesion classifier's ``f_agg``). Every checkpoint written by this version
carries its spec in the header; :func:`spec_for_checkpoint` migrates older checkpoints from their
architecture and metadata, or refuses them with a message that says how to convert them.
"""

from __future__ import annotations

from typing import Any

from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES
from breastscreen.specs.base import (
    ModelSpec,
    PreparedImage,
    SpecError,
    register_spec,
    spec_families,
    spec_from_dict,
)
from breastscreen.specs.mammo import ExamRows, MultiViewSpec, PatchSpec, derive_seed, patch_geometry, prepare_mammogram
from breastscreen.specs.wholeimage import ImageSpec, RoiPatchSpec
from breastscreen.specs.us import USSpec, prepare_bag
from breastscreen.specs.lesion import LesionSpec

__all__ = [
    "ExamRows", "ImageSpec", "LesionSpec", "ModelSpec", "MultiViewSpec", "PatchSpec", "PreparedImage", "RoiPatchSpec", "SpecError", "USSpec",
    "derive_seed", "legacy_spec", "patch_geometry", "prepare_bag", "prepare_mammogram", "register_spec", "spec_families",
    "spec_for_checkpoint", "spec_from_dict",
]


def _scale(metadata: dict[str, Any]) -> float:
    value = metadata.get("scale")
    if value is None:
        value = (metadata.get("preprocessing") or {}).get("scale", 1.0)
    return float(value)


def _channels(in_channels: int, metadata: dict[str, Any]) -> tuple[str, ...]:
    stored = metadata.get("channels")
    if isinstance(stored, list) and len(stored) == in_channels:
        return tuple(str(c) for c in stored)
    return ("image",) if in_channels == 1 else ("image", *HEATMAP_CHANNELS)


def legacy_spec(model_name: str, config: Any, metadata: dict[str, Any], where: str = "checkpoint") -> ModelSpec:
    """The spec of a checkpoint written before specs existed, from its architecture and metadata."""
    from breastscreen.models.registry import get_entry

    task = get_entry(model_name).task
    in_channels = int(getattr(config, "in_channels", 1) or 1)
    try:
        if task in ("breast", "birads"):
            nyu = hasattr(config, "head")
            return MultiViewSpec(
                kind="nyu" if nyu else "mvdcn",
                task="birads" if task == "birads" else "cancer",
                window="window" if nyu else "mvdcn_window",
                scale=_scale(metadata),
                channels=_channels(in_channels, metadata),
            )
        if task == "image":
            return ImageSpec(kind="allconv", input="resize", scale=_scale(metadata),
                             image_size=tuple(getattr(config, "input_size", (1152, 896))),
                             channels=_channels(in_channels, metadata))
        if task == "saliency":
            return ImageSpec(kind="saliency", input="window", scale=_scale(metadata),
                             channels=_channels(in_channels, metadata))
        if task == "ultrasound":
            return USSpec(input_size=int(metadata.get("input_size") or getattr(config, "input_size", 256)),
                          prepare_size=int(metadata.get("cache_size") or 288), in_channels=in_channels,
                          augment_strength=float((metadata.get("recipe") or {}).get("augment_strength", 1.0)))
        if task == "patch":
            scale = _scale(metadata)
            patch, stride = patch_geometry(scale, metadata)
            return PatchSpec(scale=scale, patch_size=patch, stride=stride,
                             classes=tuple(metadata.get("classes") or PATCH_CLASSES))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: its metadata does not describe a usable {task} model ({exc}); "
                        "re-save it with `breastscreen models convert` giving the preprocessing options") from None
    raise SpecError(f"{where}: model {model_name!r} ({task}) has no prediction spec in this version")


def spec_for_checkpoint(header: dict[str, Any], model_name: str, config: Any, where: str = "checkpoint") -> ModelSpec:
    """The checkpoint's stored spec, or the migrated spec of an older checkpoint."""
    if header.get("spec") is not None:
        return spec_from_dict(header["spec"], f"{where}: spec")
    return legacy_spec(model_name, config, dict(header.get("metadata") or {}), where)
