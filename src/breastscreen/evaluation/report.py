"""Write an evaluation's outputs: metrics.json, the PNG plots and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from breastscreen.evaluation.evaluate import EvaluationResult
from breastscreen.evaluation.io import EvaluationInputError
from breastscreen.utils import atomic_path
from breastscreen.viz import plots

__all__ = ["write_outputs", "make_plots", "render_html"]


def make_plots(result: EvaluationResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Draw every plot the result supports; returns ``{name: path}``."""
    out = Path(out_dir)
    c, m = result.curves, result.metrics
    made: dict[str, Path] = {}
    if c["tasks"] and c.get("level") == "lesion":
        # The lesion section is flat (no task level); give the plot the task-keyed view it expects.
        le = m.get("lesion", {})
        view = {"lesion": {"malignant_vs_benign": le, "compare": le.get("compare", {})}}
        made["roc_pr"] = plots.plot_roc_pr(c, view, out / "roc_pr.png")
    elif c["tasks"]:
        made["roc_pr"] = plots.plot_roc_pr(c, m, out / "roc_pr.png")
    if "readers" in c and c["readers"]["readers"]:
        made["readers_roc_pr"] = plots.plot_reader_roc_pr(c, m, out / "readers_roc_pr.png")
        lam = next(iter(m.get("readers", {}).get("per_reader", {}).values()), {}).get("hybrid", {}).get("lambda")
        made["hybrid_lambda"] = plots.plot_lambda_curves(c, out / "hybrid_lambda.png", lam_marker=lam)
    if c.get("subgroups"):
        made["subgroups"] = plots.plot_subgroups(c["subgroups"], out / "subgroups.png")
    if c.get("birads_kept"):
        made["birads_kept_fraction"] = plots.plot_birads_kept(c["birads_kept"], out / "birads_kept_fraction.png")
    if c.get("correlation"):
        made["correlation"] = plots.plot_correlation(c["correlation"]["labels"], c["correlation"]["matrix"],
                                                     out / "correlation.png")
    return made


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _ci(e: Any) -> str:
    if not isinstance(e, dict):
        return _f(e)
    s = _f(e.get("value"))
    if e.get("ci_low") is not None:
        s += f" <small>[{_f(e['ci_low'])}, {_f(e['ci_high'])}]</small>"
    return s


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: EvaluationResult, images: dict[str, Path]) -> str:
    """The report as one HTML string with the PNGs embedded as base64."""
    m = result.metrics
    meta = m["meta"]
    level = meta["level"]
    parts = [f"<h1>breastscreen evaluation</h1><p>Level: <b>{level}</b> · population: <b>{html.escape(meta['population'])}</b>"
             f" · units: {meta['n_units_in_population']} · bootstrap: {meta['bootstrap']['n_resamples']} resamples "
             f"(percentile, {int(100 * meta['bootstrap']['confidence'])}% CI, clustered by {meta['bootstrap']['cluster']}, "
             f"seed {meta['bootstrap']['seed']})</p>"]
    if meta["warnings"]:
        parts.append("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in meta["warnings"])
                     + "</ul></div>")
    if level == "lesion":
        return _page(parts + _lesion_parts(m, images))
    rows = []
    for task, t in m.get(level, {}).items():
        rows.append([task.replace("_", " "), _f(t.get("n")), _f(t.get("n_positive")), _ci(t.get("auroc")),
                     _f(t.get("auroc", {}).get("delong", {}).get("ci_low")) + "–" + _f(t.get("auroc", {}).get("delong", {}).get("ci_high"))
                     if isinstance(t.get("auroc"), dict) and t["auroc"].get("delong") else "–",
                     _ci(t.get("auprc"))])
    parts.append("<h2>Discrimination</h2>" + _table(["task", "n", "positives", "AUROC [bootstrap CI]", "DeLong CI",
                                                     "AUPRC [CI]"], rows))
    pops = m.get("populations", {})
    prow = []
    for pop, d in pops.items():
        for task, t in d.get(level, {}).items():
            prow.append([pop, task.replace("_", " "), _f(t.get("n")), _f(t.get("n_positive")),
                         _ci(t.get("model", {}).get("auroc")), _ci(t.get("model", {}).get("auprc"))])
    if prow:
        parts.append("<h3>Screening vs biopsied population</h3>" + _table(["population", "task", "n", "positives", "AUROC", "AUPRC"], prow))
    if "roc_pr" in images:
        parts.append(_img(images["roc_pr"]))
    mal = m.get(level, {}).get("malignant", {})
    ops = mal.get("operating_points", {})
    if ops:
        orow = [[name, _f(op.get("threshold"), 4), _ci(op.get("sensitivity")), _ci(op.get("specificity")), _ci(op.get("ppv")),
                 _ci(op.get("npv")), _ci(op.get("biopsy_rate"))] for name, op in ops.items()]
        parts.append("<h2>Operating points (malignant)</h2>" + _table(
            ["point", "threshold", "sensitivity", "specificity", "PPV", "NPV", "biopsy rate"], orow))
    tnr = mal.get("tnr_at_fnr", {})
    if tnr:
        parts.append("<h3>Benign cases avoided while missing at most X% of cancers (TNR at FNR)</h3>" + _table(
            ["max FNR", "threshold", "TNR [CI]", "achieved FNR", "missed cancers"],
            [[k, _f(v.get("threshold"), 4), _ci(v.get("tnr")), _ci(v.get("fnr")), _f(v.get("fn"), 0)] for k, v in tnr.items()]))
    tri = mal.get("triage", {})
    if tri:
        ro, ri = tri.get("rule_out", {}), tri.get("rule_in", {})
        parts.append("<h3>Triage</h3>" + _table(
            ["point", "target", "threshold", "value [CI]", "fraction [CI]"],
            [[f"rule-out (dismiss below)", f"sensitivity ≥ {_f(ro.get('target_sensitivity'), 2)}", _f(ro.get("threshold"), 4),
              "NPV " + _ci(ro.get("npv")), "dismissed " + _ci(ro.get("fraction_dismissed"))],
             [f"rule-in (escalate at/above)", f"specificity ≥ {_f(ri.get('target_specificity'), 2)}", _f(ri.get("threshold"), 4),
              "PPV " + _ci(ri.get("ppv")), "escalated " + _ci(ri.get("fraction_escalated"))]]))
    br = m.get("branches")
    if br:
        brow = []
        for b, d in br.items():
            if b.startswith("delong"):
                continue
            for task, t in d.items():
                brow.append([b.upper(), task, _ci(t.get("model", {}).get("auroc")), _ci(t.get("model", {}).get("auprc"))])
        parts.append("<h2>Per-branch AUCs</h2>" + _table(["branch", "task", "AUROC", "AUPRC"], brow))
    if "correlation" in images:
        parts.append("<h2>Correlation of predicted labels</h2>" + _img(images["correlation"], width=420))
    bi = m.get("birads")
    if bi and isinstance(bi.get("macauc"), dict):
        hc = bi.get("high_confidence", {})
        parts.append("<h2>BI-RADS</h2>" + _table(
            ["n", "macAUC", "AUC BI-RADS 0", "AUC 1", "AUC 2", "high-confidence macAUC", "kept", "entropy cut-off (from)"],
            [[_f(bi.get("n")), _ci(bi.get("macauc")), _ci(bi.get("auc_0")), _ci(bi.get("auc_1")), _ci(bi.get("auc_2")),
              _ci(hc.get("macauc")), _f(hc.get("n_kept")), f"{_f(hc.get('entropy_cutoff'), 4)} ({_f(hc.get('cutoff_from'))})"]]))
        if "birads_kept_fraction" in images:
            parts.append(_img(images["birads_kept_fraction"], width=520))
    rd = m.get("readers")
    if rd:
        rrows = []
        for rid, r in rd.get("per_reader", {}).items():
            op = r.get("operating_point", {})
            perm = r.get("permutation_model_vs_reader", {})
            dl = r.get("delong_model_vs_reader", {})
            rrows.append([html.escape(rid), _f(r.get("scale")), _f(r.get("n")), _ci(r.get("reader", {}).get("auroc")),
                          _ci(r.get("model", {}).get("auroc")), _ci(r.get("hybrid", {}).get("auroc")),
                          _ci(op.get("sensitivity")), _ci(op.get("specificity")),
                          _ci(r.get("model_at_reader_sensitivity", {}).get("specificity")),
                          _f(dl.get("p_value"), 4), _f(perm.get("p_value"), 4)])
        parts.append("<h2>Reader study (malignant, breast level)</h2>" + _table(
            ["reader", "scale", "n", "reader AUROC", "model AUROC", "hybrid AUROC (λ=%s)" % _f(rd.get("per_reader", {}) and next(iter(rd["per_reader"].values())).get("hybrid", {}).get("lambda"), 2),
             "reader sens.", "reader spec.", "model spec. at reader sens.", "DeLong p (2-sided)", "permutation p (model > reader)"], rrows))
        av = rd.get("average_reader")
        if av:
            ens = rd.get("ensemble", {})
            parts.append(_table(
                ["", "value"],
                [["average reader AUROC", _ci(av.get("auroc"))], ["model AUROC (same breasts)", _ci(av.get("model_auroc"))],
                 ["model − average reader AUROC", _ci(av.get("model_minus_average_reader_auroc"))],
                 ["model − average reader AUPRC", _ci(av.get("model_minus_average_reader_auprc"))],
                 ["average reader sensitivity / specificity", f"{_f(av.get('sensitivity'))} / {_f(av.get('specificity'))}"],
                 ["model specificity at average reader sensitivity", _ci(av.get("model_at_average_reader_sensitivity", {}).get("specificity"))],
                 ["model sensitivity at average reader specificity", _ci(av.get("model_at_average_reader_specificity", {}).get("sensitivity"))],
                 ["reader ensemble AUROC (" + _f(ens.get("kind")) + ")", _ci(ens.get("reader_ensemble", {}).get("auroc"))],
                 ["hybrid ensemble AUROC", _ci(ens.get("hybrid_ensemble", {}).get("auroc"))],
                 ["permutation p, model > reader ensemble", _f(ens.get("permutation_model_vs_reader_ensemble", {}).get("p_value"), 4)]]))
        for k in ("readers_roc_pr", "hybrid_lambda"):
            if k in images:
                parts.append(_img(images[k]))
    sg = result.curves.get("subgroups")
    if sg:
        srow = []
        for f, rows_ in sg.items():
            for r in rows_:
                srow.append([html.escape(f), html.escape(r["group"]), _f(r["malignant_n"]), _f(r["malignant_n_positive"]),
                             _ci({"value": r["malignant_auroc"], "ci_low": r["malignant_auroc_ci_low"], "ci_high": r["malignant_auroc_ci_high"]}),
                             _ci({"value": r["malignant_auprc"], "ci_low": r["malignant_auprc_ci_low"], "ci_high": r["malignant_auprc_ci_high"]}),
                             _ci({"value": r["benign_auroc"], "ci_low": r["benign_auroc_ci_low"], "ci_high": r["benign_auroc_ci_high"]})])
        parts.append("<h2>Subgroups</h2>" + _table(["field", "group", "n", "malignant", "malignant AUROC", "malignant AUPRC",
                                                    "benign AUROC"], srow))
        if "subgroups" in images:
            parts.append(_img(images["subgroups"]))
    loc = m.get("localisation", {}).get("malignant")
    if loc:
        parts.append("<h2>Localisation: malignant saliency vs lesion masks</h2>" + _table(
            ["images", "pointing game", "mean IoU", "map threshold"],
            [[_f(loc["n_images"]), _f(loc["pointing_game"]), _f(loc["mean_iou"]),
              f"{_f(loc['threshold'])} ({html.escape(loc['threshold_mode'])})"]]))
    return _page(parts)


def _lesion_parts(m: dict[str, Any], images: dict[str, Path]) -> list[str]:
    """Report body of a lesion-level evaluation: counts, AUCs, TNR at FNR (Table 2), kinds, comparison."""
    le = m.get("lesion", {})
    cmp_ = le.get("compare")
    dci = (le.get("auroc") or {}).get("delong")
    parts = ["<h2>Lesions: malignant vs benign</h2>" + _table(
        ["lesions", "evaluated", "malignant", "benign", "unknown (excluded)", "patients", "AUROC [CI]", "DeLong CI",
         "AUPRC [CI]"],
        [[_f(le.get("n_lesions")), _f(le.get("n")), _f(le.get("n_malignant")), _f(le.get("n_benign")),
          _f(le.get("n_unknown")), _f(le.get("n_patients")), _ci(le.get("auroc")),
          f"{_f(dci['ci_low'])}–{_f(dci['ci_high'])}" if dci else "–", _ci(le.get("auprc"))]])]
    if "roc_pr" in images:
        parts.append(_img(images["roc_pr"]))
    tnr, ctnr = le.get("tnr_at_fnr", {}), (cmp_ or {}).get("tnr_at_fnr", {})
    if tnr:
        header = ["max FNR", "threshold", "TNR [CI]", "achieved FNR", "missed cancers"]
        if ctnr:
            header += ["compare: TNR [CI]"]
        rows = [[k, _f(v.get("threshold"), 4), _ci(v.get("tnr")), _ci(v.get("fnr")), _f(v.get("fn"), 0)]
                + ([_ci(ctnr.get(k, {}).get("tnr"))] if ctnr else []) for k, v in tnr.items()]
        parts.append("<h3>Benign lesions spared at a fixed false-negative rate (TNR at FNR)</h3>"
                     + _table(header, rows))
    kinds = le.get("by_kind", {})
    if kinds:
        parts.append("<h3>By lesion kind</h3>" + _table(
            ["kind", "n", "malignant", "benign", "AUROC [CI]"],
            [[html.escape(k), _f(v.get("n")), _f(v.get("n_malignant")), _f(v.get("n_benign")), _ci(v.get("auroc"))]
             for k, v in kinds.items()]))
    if cmp_:
        dl = cmp_.get("delong") or {}
        parts.append(f"<h3>Comparison with {html.escape(str(cmp_.get('source')))}</h3>" + _table(
            ["compare AUROC [CI]", "AUROC difference (this − compare) [bootstrap CI]", "DeLong difference [CI]",
             "DeLong p (2-sided)", "AUPRC difference [CI]"],
            [[_ci(cmp_.get("auroc")), _ci(cmp_.get("auroc_difference")),
              f"{_f(dl.get('difference'), 4)} [{_f(dl.get('ci_low'))}, {_f(dl.get('ci_high'))}]" if dl else "–",
              _f(dl.get("p_value"), 4), _ci(cmp_.get("auprc_difference"))]]))
    return parts


def _page(parts: list[str]) -> str:
    """Wrap report sections into one self-contained HTML page."""
    style = ("body{font-family:system-ui,Arial,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "th{background:#f0f0f0}small{color:#666}.warn{background:#fff4e5;border:1px solid #f0b070;padding:0.5em 1em}"
             "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>breastscreen evaluation</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}<p><small>All numbers are also in metrics.json.</small></p></body></html>")


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    w = f" width='{width}'" if width else ""
    return f"<div><img alt='{html.escape(Path(path).stem)}' src='data:image/png;base64,{data}'{w}></div>"


def write_outputs(result: EvaluationResult, out_dir: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Path]:
    """Write ``metrics.json``, the PNGs and ``report.html`` into ``out_dir`` (marked as an ``evaluate``
    folder; another command's folder is refused)."""
    from breastscreen.outdir import check_output_owner, claim_output_dir

    out = Path(out_dir)
    check_output_owner(out, "evaluate")
    target = out / "metrics.json"
    if target.exists() and not overwrite:
        raise EvaluationInputError(f"{target} exists; pass --overwrite to replace it")
    claim_output_dir(out, "evaluate")
    images = make_plots(result, out)
    # Written last, so an existing metrics.json means a complete run; temp files are 0600, outputs are shared.
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(render_html(result, images), encoding="utf-8")
        os.chmod(tmp, 0o644)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(result.metrics, indent=2, allow_nan=False), encoding="utf-8")
        os.chmod(tmp, 0o644)
    return {"metrics": target, "report": out / "report.html", **images}
