"""breastscreen: deep-learning breast cancer screening, from DICOM/PNG to per-breast probabilities.

Research software. The bundled models are trained on synthetic images and are not for clinical use.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy, so that `import breastscreen` (e.g. for the CLI's --help) does not import torch.
    if name == "Predictor":
        from breastscreen.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'breastscreen' has no attribute {name!r}")
