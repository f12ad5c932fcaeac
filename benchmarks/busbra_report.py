"""Write the BUS-BRA results block of docs/ultrasound.md from benchmarks/results/busbra_cv.json.

    python benchmarks/busbra_report.py [--json benchmarks/results/busbra_cv.json] [--doc docs/ultrasound.md]

Replaces what lies between ``<!-- results:start -->`` and ``<!-- results:end -->``, so the
published figures are always the JSON's (never typed by hand).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _ci(block: dict, key: str) -> str:
    lo, hi = block[f"{key}_ci95"]
    return f"{block[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def headline(summary: dict) -> list[str]:
    """The pre-registered headline figures of a registered protocol (v3 on), single model first."""
    proto, single, ens = summary["protocol"], summary["single_model"], summary["ensemble"]
    lvn = summary["lesion_vs_normal"]
    ens_text = "n/a" if ens["pooled_auroc"] is None else f"{ens['pooled_auroc']:.3f}"
    lo, hi = single["pooled_auroc_ci95"]
    return [
        f"Headline figures of protocol {proto['name']} (registered {proto.get('registered_at', '?')}), against the "
        "issue's goals:", "",
        "| figure | result | goal |", "|---|---|---|",
        f"| pooled malignant AUROC, single model per fold | {single['pooled_auroc']:.3f} [{lo:.3f}, {hi:.3f}] | >= 0.90 |",
        f"| same, ensemble | {ens_text}" + (f" ({ens['reason']})" if ens.get("reason") else "") + " | >= 0.92 |",
        f"| lesion-vs-normal AUROC (derived normals) | {_ci(lvn, 'auroc')} ({lvn['n_positive']} lesion, "
        f"{lvn['n'] - lvn['n_positive']} normal bags) | >= 0.95 |",
        f"| pointing game / mean IoU, malignant saliency | {summary['pointing_game']:.3f} / {summary['mean_iou']:.3f} "
        "| >= 0.60 / >= 0.30 |",
        f"| lesion pixels kept by the crop, worst image | {100 * summary['crop_min_lesion_fraction']:.1f} % | 100 % |",
    ]


def render(summary: dict) -> str:
    """The markdown block for ``summary`` (the CV JSON)."""
    setup = summary["setup"]
    seeds = setup["seeds"]
    pooled = summary["pooled"]
    lines = []
    if isinstance(summary.get("protocol"), dict):
        lines += headline(summary) + [""]
    lines += [f"Results (`benchmarks/results/busbra_cv.json`; {setup['n_breasts']:,} breasts, {setup['n_images']:,} "
              "images, 95 % patient-level bootstrap CIs, 1,000 resamples; CPU; every model trained by "
              "`breastscreen train us`):", "",
              "| | malignant AUROC | malignant AUPRC |", "|---|---|---|"]
    for seed in seeds:
        m = summary["single_models"][f"seed{seed}"]["pooled_malignant"]
        lines.append(f"| single model per fold (seed {seed}), pooled held-out | {_ci(m, 'auroc')} | {_ci(m, 'auprc')} |")
    what = "one model per fold" if len(seeds) == 1 else f"{len(seeds)}-seed ensemble per fold"
    m = pooled["malignant"]
    lines.append(f"| **pooled held-out (5 folds, {what})** | **{_ci(m, 'auroc')}** | {_ci(m, 'auprc')} |")
    for fold, f in summary["per_fold"].items():
        lines.append(f"| fold {fold} | {_ci(f['malignant'], 'auroc')} | {_ci(f['malignant'], 'auprc')} |")
    c = summary["clinical"]
    lines.append(f"| reader: radiologist BI-RADS (max per case) | {_ci(c['reader'], 'auroc')} | {_ci(c['reader'], 'auprc')} |")
    lines.append(f"| hybrid 0.5·z(BI-RADS) + 0.5·z(model) | {_ci(c['hybrid'], 'auroc')} | {_ci(c['hybrid'], 'auprc')} |")
    lines += ["", f"Benign AUROC (pooled): {_ci(pooled['benign'], 'auroc')}.", "",
              "Operating points (malignant, pooled):", "",
              "| | sensitivity | specificity | PPV | biopsy rate |", "|---|---|---|---|---|"]
    r, mr = c["reader"]["operating_point"], c["model_at_reader_sensitivity"]
    for name, op in (("BI-RADS ≥ 4 (reader)", r), ("model at the reader's sensitivity", mr)):
        lines.append(f"| {name} | {op['sensitivity']:.3f} | {op['specificity']:.3f} | {op['ppv']:.3f} | "
                     f"{op['biopsy_rate']:.3f} |")
    t = c["triage"]
    lines += ["", f"Triage: rule-out (sensitivity ≥ 0.99) dismisses {100 * t['rule_out']['fraction_dismissed']:.1f}% of "
              f"breasts with NPV {t['rule_out']['npv']:.3f} ({int(t['rule_out']['missed_cancers'])} cancer(s) missed); "
              f"rule-in (specificity ≥ 0.99) escalates {100 * t['rule_in']['fraction_escalated']:.1f}% with PPV "
              f"{t['rule_in']['ppv']:.3f}.", ""]
    loc = pooled["localisation_malignant_images"]
    lines.append(f"Localisation of the malignant saliency map on {loc['n_images']} malignant images: pointing-game hit "
                 f"rate {loc['pointing_game']:.3f}, mean IoU {loc['mean_iou']:.3f} (map thresholded at half its "
                 "maximum).")
    final = setup["final_model"]
    lines += ["", f"Bundled `us-busbra-mil`: the fold-{final['fold']} model (seed {final['seed']}), selected by its "
              f"validation AUROC {final['val_auroc_malignant']:.3f}; its held-out fold AUROC is "
              f"{final['held_out_fold_auroc_malignant']:.3f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/results/busbra_cv.json")
    ap.add_argument("--doc", default="docs/ultrasound.md")
    args = ap.parse_args(argv)
    doc = Path(args.doc).read_text(encoding="utf-8")
    a, b = doc.index(START) + len(START), doc.index(END)
    block = render(json.loads(Path(args.json).read_text(encoding="utf-8")))
    Path(args.doc).write_text(doc[:a] + "\n" + block + "\n" + doc[b:], encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
