"""Test helper: a synthetic, preprocessed four-view cohort with heatmap files (shared by several test modules)."""

from __future__ import annotations

from pathlib import Path


def make_mammo_cohort(root: Path, n_exams: int, seed: int, scale: float, *, edit=None) -> dict[str, Path]:
    """A synthetic four-view cohort, preprocessed, with random heatmap files for every image.

    Exams get BI-RADS 0/1/2 in turn (so every KIND can train); ``edit(exams)`` may change the
    raw exams before they are written. Returns the ``raw`` and ``pre`` manifests and the ``maps``
    folder.
    """
    import numpy as np

    from breastscreen.data.heatmaps import heatmap_filename, write_heatmap_file
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    exams = generate_mammo_cohort(root / "raw", n_exams=n_exams, seed=seed, scale=scale, prevalence=0.5,
                                  benign_prevalence=0.5)
    for i, e in enumerate(exams):
        e.birads = ("0", "1", "2")[i % 3]
    if edit is not None:
        edit(exams)
    write_manifest(exams, root / "raw" / "manifest.jsonl")
    preprocess_manifest(read_manifest(root / "raw" / "manifest.jsonl"), root / "pre", scale=scale)
    rng = np.random.default_rng(0)
    for e in read_manifest(root / "pre" / "manifest.jsonl"):
        for view, imgs in e.views.items():
            for k, img in enumerate(imgs):
                h, w = img.preprocessing["output_shape"]
                write_heatmap_file(root / "maps" / heatmap_filename(e.exam_id, view, k),
                                   rng.random((2, h, w)).astype(np.float32), {"exam_id": e.exam_id})
    return {"raw": root / "raw" / "manifest.jsonl", "pre": root / "pre" / "manifest.jsonl", "maps": root / "maps"}
