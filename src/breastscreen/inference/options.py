"""Options of ``breastscreen predict`` and ``breastscreen heatmaps``, validated once, declaratively.

Pydantic models with ``extra="forbid"``: an unknown option, a wrong type or an out-of-range
value is refused with one message naming the option, the rule and the value received.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from breastscreen.errors import BreastscreenError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ValidatedOptions(BaseModel):
    """Base of option models: unknown options refused; one message naming option, rule and value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                key = ".".join(str(p) for p in err.get("loc", ())) or "options"
                parts.append(f"--{key.replace('_', '-')}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
            raise BreastscreenError("; ".join(parts)) from None

    @field_validator("device", check_fields=False)
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value


class PredictOptions(ValidatedOptions):
    """Options of :func:`breastscreen.inference.predict.predict` (see ``breastscreen predict --help``)."""

    tta: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)  # None: Predictor's default_batch_size
    heatmaps_dir: Optional[str] = None
    patch_model: Optional[str] = None
    patch_batch_size: Optional[int] = Field(None, ge=1, le=100_000)  # None: 16 on CPU, 256 on GPU
    heatmap_backend: str = "torch"
    heatmap_precision: str = "fp32"
    model_precision: str = "fp32"
    pictures: bool = True
    max_pictures: Optional[int] = Field(None, ge=0)
    workers: int = Field(1, ge=1, le=256)
    allow_outside_paths: bool = False

    @field_validator("model_precision")
    @classmethod
    def _model_precision(cls, value: str) -> str:
        if value not in ("fp32", "bf16"):
            raise ValueError("must be fp32 or bf16")
        return value


class HeatmapOptions(ValidatedOptions):
    """Options of :func:`breastscreen.inference.heatmap_runner.run_heatmaps`."""

    device: str = "auto"
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)
    skip_background: bool = True
    images_per_chunk: int = Field(4, ge=1, le=10_000)
    workers: int = Field(1, ge=1, le=256)
