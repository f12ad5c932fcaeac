"""Model zoo: every architecture from the papers behind one registry, with safe checkpoints.

>>> from breastscreen.models import create_model, list_models
>>> model = create_model("nyu-viewwise", in_channels=3)

See docs/models.md for the architectures, output contracts and checkpoint format.
"""

from breastscreen.models.checkpoint import Checkpoint, load_checkpoint, load_model, read_header, save_checkpoint
from breastscreen.models.convert import SCHEMES, convert_state_dict
from breastscreen.models.hub import list_bundled, resolve_model_ref
from breastscreen.models.pretrained import load_pretrained_backbone
from breastscreen.models.registry import (
    ModelInfo,
    count_model_parameters,
    count_parameters,
    create_model,
    list_models,
    model_names,
    register_model,
)

__all__ = [
    "Checkpoint",
    "ModelInfo",
    "SCHEMES",
    "convert_state_dict",
    "count_model_parameters",
    "count_parameters",
    "create_model",
    "list_bundled",
    "list_models",
    "load_checkpoint",
    "load_model",
    "load_pretrained_backbone",
    "model_names",
    "read_header",
    "register_model",
    "resolve_model_ref",
    "save_checkpoint",
]
