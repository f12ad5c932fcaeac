"""Settings of ``breastscreen serve``, validated once (pydantic, unknown settings refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import ConfigDict, Field

from breastscreen.data.readers import DEFAULT_MAX_PIXELS
from breastscreen.inference.options import ValidatedOptions

NOT_FOR_CLINICAL_USE = (
    "Research software — not for clinical use. The bundled models are trained on synthetic phantoms or small "
    "public research datasets and say nothing about performance on patients."
)


class ServeConfig(ValidatedOptions):
    """Everything the service needs to start (see ``breastscreen serve --help`` for each option)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = Field(..., min_length=1, description="checkpoints, bundled names or ensemble files")
    patch_model: Optional[str] = Field(None, description="patch classifier for models that take heatmaps")
    data_dir: Path = Field(Path("breastscreen-serve-data"), description="job database, uploads and results")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=0, le=64, description="jobs run at the same time (threads sharing one model)")
    device: str = "auto"
    tta: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)  # None: Predictor's default_batch_size
    patch_batch_size: Optional[int] = Field(None, ge=1, le=100_000)  # None: 16 on CPU, 256 on GPU
    max_upload_bytes: int = Field(512 * 1024**2, ge=1, description="total bytes of one upload (request body)")
    max_unzipped_bytes: int = Field(2 * 1024**3, ge=1, description="total uncompressed bytes of an uploaded zip")
    max_files: int = Field(200, ge=1, le=100_000, description="files in one upload (zip entries included)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="pixels per image (frame), checked from headers")
    max_queued: int = Field(100, ge=1, description="waiting jobs before new uploads get 429")
    lease_seconds: float = Field(60.0, gt=0, description="a running job's lease, renewed while it runs")
    max_attempts: int = Field(3, ge=1, le=100, description="runs of one job before it is failed")
    viewer_max_side: int = Field(1024, ge=64, le=8192, description="longest side of the viewer's images (px)")

