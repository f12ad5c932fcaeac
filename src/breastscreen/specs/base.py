"""The model contract: one typed, versioned spec per model family, stored in every checkpoint.

A spec owns what a model sees and what it returns: preprocessing parameters, the input builder
(exam [+ heatmaps] -> tensors) and the postprocessing of outputs into predictions. Training
datasets and the :class:`~breastscreen.inference.predictor.Predictor` both call the spec's input
builder, so a validation tensor and a prediction tensor of the same exam are the same array.

Specs are pydantic models with ``extra="forbid"``: a checkpoint header with an unknown key, a
wrong type or an out-of-range value is refused with a message naming the key, the rule and the
value received. :func:`spec_from_dict` dispatches on ``family``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from breastscreen.errors import BreastscreenError

SPEC_VERSION = 1


class SpecError(BreastscreenError):
    """A spec (in a checkpoint header or built by a recipe) is invalid."""


class ModelSpec(BaseModel):
    """Base of every family's spec: frozen, unknown keys refused, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    spec_version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in the checkpoint header under ``"spec"``."""
        return self.model_dump(mode="json")


_SPECS: dict[str, type[ModelSpec]] = {}


def register_spec(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator: make ``cls`` the spec of its ``family`` (one class per family)."""
    family = cls.model_fields["family"].default
    if not isinstance(family, str) or not family:
        raise TypeError(f"{cls.__name__} must give its family a default value")
    if family in _SPECS and _SPECS[family] is not cls:
        raise ValueError(f"spec family {family!r} is already registered by {_SPECS[family].__name__}")
    _SPECS[family] = cls
    return cls


def spec_families() -> list[str]:
    """Registered spec families, sorted."""
    return sorted(_SPECS)


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line naming each bad key, the rule and the value received."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "(spec)"
        parts.append(f"{key}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
    return f"{where}: " + "; ".join(parts)


def spec_from_dict(data: Any, where: str = "model spec") -> ModelSpec:
    """Validate a stored spec and build the family's spec object."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}")
    family = data.get("family")
    if family not in _SPECS:
        close = difflib.get_close_matches(str(family), list(_SPECS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{where}: unknown family {family!r}{hint}; known: {', '.join(sorted(_SPECS))}")
    version = data.get("spec_version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"{where}: spec_version {version!r} is not supported by this version (expects {SPEC_VERSION})")
    try:
        return _SPECS[family].model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, where)) from None


@dataclass
class PreparedImage:
    """One image as a spec's input builder takes it: pixels after the family's preprocessing.

    ``pixels`` are float32 in original intensity units (mammography: cropped, oriented and
    resampled; ultrasound: the uint8 field-of-view crop resized to the spec's prepare size).
    ``record`` is the preprocessing record (windows, crop box, scale ...); ``mask`` the breast
    or field-of-view mask when one is known; ``source`` names the image in messages.
    """

    pixels: np.ndarray
    record: dict[str, Any]
    mask: np.ndarray | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
