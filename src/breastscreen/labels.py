"""Names and constants every stage agrees on (label order, class order, reference geometry)."""

from __future__ import annotations

# Per-breast outputs of breast-level models and columns of predictions/labels CSVs, in this order.
BREAST_LABELS: tuple[str, ...] = ("left_benign", "left_malignant", "right_benign", "right_malignant")

# Patch classifier classes (Wu et al. 2019 SI), output index = position in this tuple.
PATCH_CLASSES: tuple[str, ...] = ("malignant", "benign", "outside", "negative")

# Five-class patch sets of the all-convolutional classifier (Shen et al. 2019).
PATCH_CLASSES_5: tuple[str, ...] = (
    "background",
    "benign_mass",
    "malignant_mass",
    "benign_calcification",
    "malignant_calcification",
)

# BI-RADS pretraining classes (Geras et al. 2017): 0 = incomplete, 1 = negative, 2 = benign.
BIRADS_CLASSES: tuple[str, ...] = ("0", "1", "2")

# Heatmap channels appended to the image for image-and-heatmaps models, in this order.
HEATMAP_CHANNELS: tuple[str, ...] = ("benign", "malignant")

# "Full resolution" means this pixel spacing; preprocessing at scale F resamples to REF_SPACING_MM / F.
REF_SPACING_MM: float = 0.1

# Fixed model input windows at full resolution (height, width).
NYU_WINDOWS: dict[str, tuple[int, int]] = {"CC": (2677, 1942), "MLO": (2974, 1748)}
MVDCN_WINDOW: tuple[int, int] = (2600, 2000)

# Patch classifier geometry at full resolution (Wu et al. 2019 SI).
PATCH_SIZE: int = 256
PATCH_STRIDE: int = 70
