"""Pydantic response models of the HTTP API (they are also its OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, Field

JobState = Literal["queued", "running", "done", "failed"]


class Progress(BaseModel):
    """Where a job is: its stage and how far it got."""

    stage: Optional[str] = Field(None, description="queued, starting, preprocess, heatmaps, predict, pictures, done")
    stage_fraction: float = Field(0.0, ge=0, le=1, description="fraction of the current stage done")
    fraction: float = Field(0.0, ge=0, le=1, description="fraction of the whole job done")


class ViewResult(BaseModel):
    """One mammography view: links to the viewer image, its overlays and its heatmap array."""

    image: str = Field(..., description="greyscale PNG in display geometry (standard hanging orientation)")
    overlays: Dict[str, str] = Field(default_factory=dict, description="map name -> RGBA PNG, opacity = value")
    width: int
    height: int
    geometry: Optional[str] = Field(None, description="original, or preprocessed when the source was unreadable")
    mirrored_for_display: Optional[bool] = None
    source: Optional[str] = Field(None, description="the uploaded file")
    heatmaps: Optional[str] = Field(None, description="NPZ: heatmaps [2, H, W] (benign, malignant), preprocessed grid")
    heatmaps_source: Optional[str] = None


class USImage(BaseModel):
    """One ultrasound image of a breast, with its attention weight and saliency overlay."""

    image: str
    overlays: Dict[str, str] = Field(default_factory=dict)
    width: int
    height: int
    index: int = Field(..., description="position of the image in the breast's bag")
    rank: int = Field(..., description="1 = highest attention")
    attention: float
    source: Optional[str] = None


class USBreast(BaseModel):
    """One breast of an ultrasound exam (side L, R, or U for unknown laterality)."""

    benign: float
    malignant: float
    images: List[USImage]
    saliency: Optional[str] = Field(None, description="NPZ with saliency [K, h, w] and attention [K]")


class ExamResult(BaseModel):
    """Everything predicted for one exam."""

    exam_id: str
    modality: str
    predictions: Dict[str, Optional[float]] = Field(
        ..., description="the predictions.csv row: left_benign, left_malignant, right_benign, right_malignant (+ ...)")
    details: Dict[str, Any] = Field(default_factory=dict, description="per-view / per-branch / per-member outputs")
    views: Dict[str, ViewResult] = Field(default_factory=dict)
    breasts: Dict[str, USBreast] = Field(default_factory=dict)
    figures: List[str] = Field(default_factory=list, description="composite overlay PNGs, as `breastscreen predict` draws")
    picture_error: Optional[str] = None


class ExamError(BaseModel):
    """An exam of the upload that could not be predicted."""

    exam_id: str
    reason: str


class JobCreated(BaseModel):
    """Answer to an accepted upload."""

    id: str
    status: JobState
    exam_ids: List[str]
    links: Dict[str, str]


class JobSummary(BaseModel):
    """A job in the job list."""

    id: str
    status: JobState
    progress: Progress
    created_at: float
    finished_at: Optional[float] = None
    exam_ids: List[str]
    modality: Optional[str] = None
    n_files: int


class JobStatus(BaseModel):
    """A job with its progress and, once done, its results."""

    id: str
    status: JobState
    progress: Progress
    queue_position: Optional[int] = None
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int
    n_files: int
    upload_bytes: int
    exam_ids: List[str]
    modality: Optional[str] = None
    exams: List[ExamResult] = Field(default_factory=list)
    errors: List[ExamError] = Field(default_factory=list, description="exams that could not be predicted")
    error: Optional[str] = Field(None, description="why the job failed")
    models: List[Dict[str, Any]] = Field(default_factory=list)
    provenance: Dict[str, Any] = Field(default_factory=dict)
    notice: str
    links: Dict[str, str]


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""

    jobs: List[JobSummary]
    next_cursor: Optional[str] = Field(None, description="pass as ?cursor= for the next page; null on the last")


class ModelInfo(BaseModel):
    """One loaded model."""

    ref: str
    name: str
    version: str = Field(..., description="first 12 hex digits of the checkpoint's SHA-256")
    sha256: str
    role: str
    family: str
    bundled: bool
    summary: Optional[str] = None
    model_card: Optional[str] = Field(None, description="Markdown model card of a bundled model")
    not_for_clinical_use: bool = True
    training_data: Optional[Any] = None
    validation_metrics: Optional[Dict[str, Any]] = None


class ModelsResponse(BaseModel):
    """The models this service runs and how."""

    models: List[ModelInfo]
    modality: str
    columns: List[str]
    tta: int
    device: str
    notice: str
    limits: Dict[str, int]


class Health(BaseModel):
    """Liveness / readiness answer."""

    status: str
    detail: Optional[str] = None
    version: str
    models: List[str] = Field(default_factory=list)
    queue: Dict[str, int] = Field(default_factory=dict)
