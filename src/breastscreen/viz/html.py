"""A static HTML page per prediction run: exams sorted by malignancy score, linking their pictures."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from breastscreen.labels import BREAST_LABELS


@dataclass
class ReportRow:
    """One exam (or ultrasound breast) on the page."""

    exam_id: str
    score: float | None  # sort key: higher first; None (no prediction) sorts last
    values: dict[str, float | None] = field(default_factory=dict)  # columns shown, e.g. BREAST_LABELS
    images: list[str] = field(default_factory=list)  # picture paths relative to the page
    note: str = ""


def malignancy_score(values: dict[str, Any]) -> float | None:
    """Sort key of an exam: the largest per-breast malignant probability (left, right, unknown side);
    else P(BI-RADS 0); else None."""
    mal = [values.get(k) for k in ("left_malignant", "right_malignant", "unknown_malignant")
           if values.get(k) is not None]
    if mal:
        return float(max(mal))
    if values.get("malignant") is not None:
        return float(values["malignant"])
    if values.get("birads_0") is not None:
        return float(values["birads_0"])
    return None


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


_STYLE = """
body{font-family:system-ui,Arial,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-top:1em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td.id{text-align:left}td.img{text-align:left}img.thumb{height:160px;margin:2px;border:1px solid #999}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em;margin:.5em 0}
.err{color:#a00}.prov{font-size:90%;color:#555}
"""


def write_report_html(
    path: str | os.PathLike[str],
    rows: Sequence[ReportRow],
    columns: Sequence[str] = BREAST_LABELS,
    title: str = "breastscreen predictions",
    provenance: dict[str, Any] | None = None,
    errors: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write the run page: a table sorted by score (highest first) with thumbnails linking to PNGs.

    ``errors`` lists (exam_id, reason) of exams without a prediction. Written atomically.
    """
    from breastscreen.utils import atomic_path

    ordered = sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.exam_id))
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p class='warn'>Research software. Probabilities from models trained on the data named in the "
        "model cards; bundled demo models are trained on synthetic images and are <b>not for clinical use</b>.</p>",
        f"<p>{len(ordered)} exam(s) predicted, {len(errors)} failed. Sorted by malignancy score "
        "(the larger of the two breasts' malignant probabilities). Red = malignant, green = benign.</p>",
        "<table><tr><th>#</th><th>exam</th><th>score</th>"
        + "".join(f"<th>{esc(c)}</th>" for c in columns)
        + "<th>pictures</th></tr>",
    ]
    for i, r in enumerate(ordered, start=1):
        thumbs = "".join(
            f"<a href='{esc(p)}'><img class='thumb' src='{esc(p)}' alt='{esc(r.exam_id)}'></a>" for p in r.images
        )
        note = f"<br><small>{esc(r.note)}</small>" if r.note else ""
        parts.append(
            f"<tr><td>{i}</td><td class='id'>{esc(r.exam_id)}{note}</td><td>{_fmt(r.score)}</td>"
            + "".join(f"<td>{_fmt(r.values.get(c))}</td>" for c in columns)
            + f"<td class='img'>{thumbs}</td></tr>"
        )
    parts.append("</table>")
    if errors:
        parts.append("<h2>Failed exams</h2><ul>")
        parts += [f"<li class='err'><b>{esc(e)}</b>: {esc(reason)}</li>" for e, reason in errors]
        parts.append("</ul>")
    if provenance:
        parts.append("<h2>Provenance</h2><table class='prov'>")
        parts += [f"<tr><th>{esc(str(k))}</th><td class='id'>{esc(str(v))}</td></tr>" for k, v in provenance.items()]
        parts.append("</table>")
    parts.append("</body></html>\n")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
