"""Preprocessing: breast crop and orientation, windows, augmentation, patches, ultrasound FOV crop.

Modules: :mod:`~breastscreen.preprocess.mammo` (arrays), :mod:`~breastscreen.preprocess.pipeline`
(manifests, files), :mod:`~breastscreen.preprocess.augment`, :mod:`~breastscreen.preprocess.patches`,
:mod:`~breastscreen.preprocess.ultrasound`. See docs/preprocess.md.
"""
