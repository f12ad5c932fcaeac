"""CLI commands of this stage: ``breastscreen evaluate`` and ``breastscreen labels from-pathology``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from breastscreen.errors import BreastscreenError

labels_app = typer.Typer(help="Make label files (from pathology reports).", no_args_is_help=True)


def _parse_scales(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise BreastscreenError(f"--reader-scale must look like READER=birads|percent|probability (or *=...), got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def evaluate_cmd(
    predictions: Path = typer.Option(..., "--predictions", "-p", help="Predictions CSV: exam_id, left_benign, "
                                     "left_malignant, right_benign, right_malignant (+ birads_0..2, entropy, cc_*/mlo_* "
                                     "branch columns), or an image-level CSV with exam_id, view, benign, malignant; "
                                     "with --level lesion a lesions.csv (exam_id, patient_id, view, image, lesion_id, "
                                     "outcome, kind, malignant, benign)."),
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="Labels CSV (exam_id + the four label columns, "
                                          "0/1/empty; optional patient_id, age, density, birads, device, ...) or a "
                                          "manifest .jsonl. Required except with --level lesion, where it is an "
                                          "optional manifest giving patient ids (the outcome column is the truth)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="--level lesion only: a second lesions.csv with "
                                           "the same lesions (e.g. local-only vs local+global); adds the paired AUROC "
                                           "difference with a bootstrap CI and a DeLong test."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for metrics.json, report.html and the PNG plots."),
    readers: Optional[Path] = typer.Option(None, "--readers", help="Reader study CSV: reader_id, exam_id, side, score "
                                           "(probability 0-1 or 0-100, or BI-RADS 1-5 with 4A/4B/4C)."),
    population: str = typer.Option("screening", help="screening (all), biopsied (exams with any finding, or the "
                                   "'biopsied' labels column), or the name of a 0/1 labels column."),
    level: str = typer.Option("breast", help="breast (default), image, exam (exam: max over its breasts) or lesion "
                              "(malignant vs benign lesions, TNR at FNR; --predictions is a lesions.csv)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the percentile CIs (0 = none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and permutation draws."),
    subgroup: List[str] = typer.Option([], "--subgroup", help="Extra labels column to analyse by group (repeatable). "
                                       "Age bands, density and device are analysed when present."),
    val_predictions: Optional[Path] = typer.Option(None, "--val-predictions", help="Validation predictions with "
                                                   "birads_0..2: the high-confidence entropy cut-off comes from them."),
    threshold: List[float] = typer.Option([0.5], "--threshold", help="Fixed decision threshold(s) for operating points."),
    target_sensitivity: List[float] = typer.Option([0.9, 0.95], "--target-sensitivity", help="Report the operating "
                                                   "point at the highest threshold reaching this sensitivity."),
    target_specificity: List[float] = typer.Option([0.9, 0.95], "--target-specificity", help="Report the operating "
                                                   "point at the lowest threshold reaching this specificity."),
    triage_sensitivity: float = typer.Option(0.99, help="Rule-out triage: dismiss cases below the highest threshold "
                                             "keeping this sensitivity."),
    triage_specificity: float = typer.Option(0.99, help="Rule-in triage: escalate cases at/above the lowest threshold "
                                             "reaching this specificity."),
    reader_threshold: float = typer.Option(0.5, help="Probability readers: score >= this (0-1 scale) is positive."),
    reader_scale: List[str] = typer.Option([], "--reader-scale", help="Force a reader's scale, e.g. R1=percent "
                                           "(or *=birads for all)."),
    hybrid_lambda: float = typer.Option(0.5, "--lambda", help="Hybrid weight: λ·reader + (1-λ)·model."),
    hybrid_zscore: str = typer.Option("auto", help="z-score reader and model before mixing: auto (when the reader "
                                      "gives BI-RADS), yes, no."),
    permutations: int = typer.Option(10_000, help="Trials of the one-sided permutation test (0 = skip)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop predicted exams that are not in the "
                                       "labels instead of failing."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Ultrasound: a manifest with lesion masks. Adds the "
                                         "pointing game and mean IoU of the malignant saliency maps (read from the "
                                         "predictions.jsonl beside --predictions) against its malignant masks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/metrics.json."),
) -> None:
    """Evaluate predictions against labels: AUROC/AUPRC with bootstrap and DeLong CIs, operating points,
    triage, BI-RADS macAUC, subgroups and a reader study (or, with --level lesion, lesion classification);
    writes OUT/metrics.json, OUT/report.html and PNGs."""
    from breastscreen.evaluation.evaluate import LEVELS, EvalConfig, evaluate
    from breastscreen.evaluation.io import EvaluationInputError, read_labels, read_predictions
    from breastscreen.evaluation.readers import read_readers
    from breastscreen.evaluation.report import write_outputs

    from breastscreen.outdir import check_output_owner

    if level not in LEVELS + ("lesion",):
        raise EvaluationInputError(f"level must be one of {', '.join(LEVELS + ('lesion',))}, got {level!r}")
    check_output_owner(out, "evaluate")
    if (out / "metrics.json").exists() and not overwrite:
        raise EvaluationInputError(f"{out / 'metrics.json'} exists; pass --overwrite to replace it")
    if level == "lesion":
        # Options that only make sense for breast/image/exam are refused rather than silently ignored.
        unused = [name for name, given in (("--readers", readers is not None),
                                           ("--val-predictions", val_predictions is not None),
                                           ("--subgroup", bool(subgroup)),
                                           ("--masks", masks is not None),
                                           ("--population", population != "screening")) if given]
        if unused:
            raise EvaluationInputError(f"{', '.join(unused)} do(es) not apply to --level lesion")
        _evaluate_lesions(predictions, labels, compare, out, bootstrap, seed, overwrite)
        return
    if labels is None:
        raise EvaluationInputError(f"--labels is required for --level {level} (only --level lesion takes the truth "
                                   "from its predictions file)")
    if compare is not None:
        raise EvaluationInputError("--compare is only for --level lesion")
    cfg = EvalConfig(level=level, population=population, n_bootstrap=bootstrap, seed=seed,
                     thresholds=tuple(threshold), target_sensitivities=tuple(target_sensitivity),
                     target_specificities=tuple(target_specificity), triage_sensitivity=triage_sensitivity,
                     triage_specificity=triage_specificity, subgroups=tuple(subgroup), reader_threshold=reader_threshold,
                     reader_scales=_parse_scales(reader_scale), hybrid_lambda=hybrid_lambda, hybrid_zscore=hybrid_zscore,
                     n_permutations=permutations, allow_missing=allow_missing)
    cfg.validate()
    preds = read_predictions(predictions)
    labs = read_labels(labels)
    rd = read_readers(readers, cfg.reader_scales) if readers is not None else None
    val = read_predictions(val_predictions) if val_predictions is not None else None
    from rich.console import Console

    console = Console(stderr=True)
    loc = None
    if masks is not None:
        from breastscreen.evaluation.localisation import localisation_from_predictions

        # Checked before the bootstrap so that a bad masks manifest fails fast.
        loc = localisation_from_predictions(predictions.with_name("predictions.jsonl"), masks)
    with console.status("computing metrics, bootstrap and permutation tests ..."):
        result = evaluate(preds, labs, rd, cfg, val)
        if loc is not None:
            result.metrics["localisation"] = {"malignant": loc}
        files = write_outputs(result, out, overwrite=overwrite)
    for w in result.warnings:
        typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
    main = result.metrics.get(level, {}).get("malignant", {}).get("auroc", {})
    if main.get("value") is not None:
        ci = f" [{main['ci_low']:.3f}, {main['ci_high']:.3f}]" if main.get("ci_low") is not None else ""
        typer.echo(f"{level}-level malignant AUROC {main['value']:.4f}{ci}")
    if loc is not None:
        typer.echo(f"malignant saliency vs lesion masks ({loc['n_images']} images): pointing game "
                   f"{loc['pointing_game']:.3f}, mean IoU {loc['mean_iou']:.3f}")
    typer.echo(f"wrote {files['metrics']}, {files['report']} and {len(files) - 2} plot(s) to {out}")


def _evaluate_lesions(predictions: Path, labels: Optional[Path], compare: Optional[Path], out: Path,
                      bootstrap: int, seed: int, overwrite: bool) -> None:
    """``evaluate --level lesion``: read the lesion file(s), compute, write outputs and print the summary."""
    from rich.console import Console

    from breastscreen.evaluation.lesion import evaluate_lesion_result, lesion_summary_lines, read_lesion_predictions
    from breastscreen.evaluation.report import write_outputs

    df = read_lesion_predictions(predictions, labels)
    other = read_lesion_predictions(compare, labels) if compare is not None else None
    with Console(stderr=True).status("computing lesion-level metrics and bootstrap ..."):
        result = evaluate_lesion_result(df, bootstrap, seed, other)
        files = write_outputs(result, out, overwrite=overwrite)
    for w in result.warnings:
        typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
    for line in lesion_summary_lines(result.metrics):
        typer.echo(line)
    typer.echo(f"wrote {files['metrics']}, {files['report']} and {len(files) - 2} plot(s) to {out}")


def from_pathology_cmd(
    reports: Path = typer.Option(..., "--reports", help="Reports CSV: patient_id, report_date (YYYY-MM-DD), text; "
                                 "optional report_id, laterality/side, exam_id."),
    exams: Path = typer.Option(..., "--exams", help="Exams: manifest .jsonl or CSV with exam_id, patient_id, "
                               "study_date (+ birads for the follow-up rule)."),
    out: Path = typer.Option(..., "--out", "-o", help="Labels CSV to write; provenance goes to "
                             "<stem>.provenance.csv and exclusions to <stem>.excluded.csv next to it."),
    window: tuple[int, int] = typer.Option((-30, 120), help="Days from the exam in which a report counts "
                                           "(report date - exam date)."),
    cohort_rules: bool = typer.Option(False, "--cohort-rules", help="Keep malignant-negative breasts only with a "
                                      "cancer-free follow-up (see --cancer-free-months, --birads-followup-months)."),
    cancer_free_months: tuple[float, float] = typer.Option((0.0, 15.0), help="No malignant pathology in this many "
                                                           "months after the exam."),
    birads_followup_months: tuple[float, float] = typer.Option((6.0, 24.0), help="A later BI-RADS 1-2 exam in this "
                                                               "many months after the exam."),
    no_birads_followup: bool = typer.Option(False, "--no-birads-followup", help="Drop the BI-RADS follow-up rule."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing labels file."),
) -> None:
    """Per-breast benign/malignant labels from pathology reports (negation-aware term matching)."""
    from breastscreen.evaluation.pathology import CohortRules, labels_from_pathology_files

    rules = None
    if cohort_rules:
        rules = CohortRules(cancer_free_months=tuple(cancer_free_months),
                            birads_followup_months=None if no_birads_followup else tuple(birads_followup_months))
    summary = labels_from_pathology_files(reports, exams, out, tuple(window), rules, overwrite)
    typer.echo(f"{summary['exams']} exams, {summary['biopsied_exams']} with pathology in the window; "
               f"{summary['malignant_breasts']} malignant and {summary['benign_breasts']} benign breast labels")
    typer.echo("mentions: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["mentions"].items())))
    if rules is not None:
        ex = summary["excluded_by_rule"]
        typer.echo("excluded negatives: " + (", ".join(f"{k}={v}" for k, v in ex.items()) if ex else "none"))
    typer.echo("wrote " + ", ".join(summary["files"].values()))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command("evaluate")(evaluate_cmd)
    labels_app.command("from-pathology")(from_pathology_cmd)
    app.add_typer(labels_app, name="labels")
