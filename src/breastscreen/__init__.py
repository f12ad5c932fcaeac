"""breastscreen: deep-learning breast cancer screening, from DICOM/PNG to per-breast probabilities.

Research software. The bundled models are trained on synthetic images and are not for clinical use.
"""

__version__ = "0.1.0"
