"""A synthetic evaluation cohort (predictions, labels, simulated readers) for tests and demos.

Scores follow a binormal model: a breast's latent suspicion is its label times a separation
plus noise; the model and each reader see the latent value with their own noise, so model
and readers are correlated like in a real reader study.  Readers report BI-RADS (1-5 with
4A/4B/4C) or probabilities in percent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from breastscreen.labels import BREAST_LABELS

__all__ = ["simulate_cohort"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_cohort(
    n_exams: int = 300,
    seed: int = 0,
    *,
    n_readers: int = 3,
    reader_scales: tuple[str, ...] = ("birads", "percent", "birads"),
    malignant_rate: float = 0.08,
    benign_rate: float = 0.15,
    with_birads: bool = True,
    with_branches: bool = True,
    patients_per_exam: float = 0.8,
) -> dict[str, pd.DataFrame]:
    """Return ``{"predictions", "labels", "readers"}`` DataFrames of a synthetic cohort."""
    rng = np.random.default_rng(seed)
    n_pat = max(1, int(round(n_exams * patients_per_exam)))
    exam_ids = [f"e{i:05d}" for i in range(n_exams)]
    patient = rng.integers(0, n_pat, n_exams)
    lab = {}
    pred = {}
    latent = {}
    for side in ("left", "right"):
        mal = (rng.random(n_exams) < malignant_rate).astype(float)
        ben = (rng.random(n_exams) < benign_rate).astype(float)
        z = 1.6 * mal + 0.8 * ben + rng.normal(0, 1, n_exams)
        latent[side] = (z, mal)
        lab[f"{side}_benign"], lab[f"{side}_malignant"] = ben, mal
        pred[f"{side}_malignant"] = _sigmoid(z + rng.normal(0, 0.6, n_exams) - 2.5)
        pred[f"{side}_benign"] = _sigmoid(1.2 * ben + 0.3 * mal + rng.normal(0, 1, n_exams) - 1.5)
        if with_branches:
            for b in ("cc", "mlo"):
                pred[f"{b}_{side}_malignant"] = _sigmoid(z + rng.normal(0, 0.9, n_exams) - 2.5)
                pred[f"{b}_{side}_benign"] = _sigmoid(1.2 * ben + rng.normal(0, 1.2, n_exams) - 1.5)
    labels = pd.DataFrame({"exam_id": exam_ids, **{c: lab[c] for c in BREAST_LABELS}})
    labels["patient_id"] = [f"p{p:05d}" for p in patient]
    labels["age"] = np.round(rng.uniform(35, 80, n_exams), 1)
    labels["density"] = rng.choice(list("ABCD"), n_exams, p=[0.1, 0.4, 0.4, 0.1])
    labels["device"] = rng.choice(["VendorA", "VendorB"], n_exams)
    predictions = pd.DataFrame({"exam_id": exam_ids, **{c: np.round(pred[c], 5) for c in BREAST_LABELS}})
    if with_branches:
        for b in ("cc", "mlo"):
            for c in BREAST_LABELS:
                predictions[f"{b}_{c}"] = np.round(pred[f"{b}_{c}"], 5)
    if with_birads:
        k = rng.integers(0, 3, n_exams)
        labels["birads"] = k.astype(str)
        logits = rng.normal(0, 1, (n_exams, 3))
        logits[np.arange(n_exams), k] += rng.uniform(0.0, 3.0, n_exams)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        p = np.round(p, 6)
        p[:, 2] = 1.0 - p[:, 0] - p[:, 1]
        for j in range(3):
            predictions[f"birads_{j}"] = p[:, j]
    rows = []
    cuts = np.array([-0.2, 0.9, 1.4, 1.8, 2.2, 2.7])  # 1 | 2 | 3 | 4A | 4B | 4C | 5
    names = np.array(["1", "2", "3", "4A", "4B", "4C", "5"])
    for r in range(n_readers):
        scale = reader_scales[r % len(reader_scales)]
        for side in ("left", "right"):
            z, _ = latent[side]
            obs = z + rng.normal(0, 0.8, n_exams)
            for i in range(n_exams):
                if scale == "birads":
                    score = names[np.searchsorted(cuts, obs[i])]
                else:
                    score = f"{100 * _sigmoid(obs[i] - 2.0):.1f}"
                rows.append({"reader_id": f"R{r + 1}", "exam_id": exam_ids[i], "side": side[0].upper(), "score": score})
    readers = pd.DataFrame(rows)
    return {"predictions": predictions, "labels": labels, "readers": readers}
