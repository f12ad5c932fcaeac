"""Per-breast benign/malignant labels from pathology reports, and cohort rules for negatives.

Term matcher
    Rule-based and negation-aware, on one sentence at a time (sentences end at ``.``, ``;``,
    ``!``, ``?`` or a line break).  Terms (Shen et al. 2021) and abbreviations are below; the
    abbreviations are matched case-sensitively as whole words.  Each match gets a status:

    * ``negated``: inside the scope of a negation cue before it ("no", "no evidence of",
      "negative for", "without", "free of", "absence of", "ruled out", "neither/nor", "not")
      or followed directly by one ("DCIS: absent", "carcinoma is not identified");
    * ``historical``: inside the scope of a history cue ("history of", "h/o", "prior",
      "previous(ly)", "status post", "s/p", "remote", "past") - a past diagnosis is not a
      finding of this biopsy;
    * ``uncertain``: "suspicious for", "concerning for", "cannot exclude", "cannot be
      excluded", "possible", "probable", "questionable", "rule out", "may represent";
    * ``affirmed`` otherwise.  Only affirmed mentions assign labels.

    A cue's scope runs to the end of the sentence or to a scope breaker ("but", "however",
    "although", "except", "consistent with", "compatible with", "diagnostic of", "showing",
    "shows", "demonstrating", "reveals", ":"); when several cues precede a term the nearest wins.

Laterality
    The side mention (left/lt/L breast/(L), right/rt/R breast/(R), bilateral/both breasts)
    nearest to the term in the same sentence; else the side carried from the last earlier
    sentence of the report that named one (section headers like "LEFT BREAST, CORE
    BIOPSY:"); else the report's ``laterality``/``side`` column; else unknown (the mention is
    kept in the provenance with status ``no_laterality`` and assigns nothing).

Matching reports to exams
    A report links to an exam by ``exam_id`` when the reports file gives one, else to every
    exam of the same patient whose ``study_date`` is within the window (default -30 to +120
    days: report date minus exam date).  Reports outside every window are listed in the
    provenance as ``out_of_window``.

Cohort rules (optional, for test sets)
    A breast whose malignant label is 0 is kept as a negative only if (1) no affirmed
    malignant mention for that breast (or with unknown side) exists in the patient's reports
    dated 0 to 15 months after the exam, and (2) the patient has a later exam with BI-RADS 1
    or 2 dated 6 to 24 months after it.  A month is 30.4375 days.  Excluded breasts get an
    empty malignant label (their benign label is kept) and are listed with the rule.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from breastscreen.evaluation.io import EvaluationInputError, read_table

__all__ = [
    "MALIGNANT_TERMS",
    "BENIGN_TERMS",
    "ABBREVIATIONS",
    "Mention",
    "find_mentions",
    "split_sentences",
    "CohortRules",
    "read_reports",
    "read_exams_table",
    "labels_from_reports",
    "labels_from_pathology_files",
]

DAYS_PER_MONTH = 30.4375

# canonical term -> regular expression (case-insensitive)
MALIGNANT_TERMS: dict[str, str] = {
    "invasive ductal carcinoma": r"(?:invasive|infiltrating)\s+ductal\s+carcinoma",
    "invasive lobular carcinoma": r"(?:invasive|infiltrating)\s+lobular\s+carcinoma",
    "special-type invasive carcinoma": r"(?:invasive\s+)?(?:tubular|mucinous|cribriform)\s+carcinoma",
    "inflammatory carcinoma": r"inflammatory\s+(?:breast\s+)?carcinoma",
    "intraductal papillary carcinoma": r"intraductal\s+papillary\s+carcinoma",
    "microinvasive carcinoma": r"micro-?\s?invasive\s+(?:ductal\s+)?carcinoma",
    "ductal carcinoma in situ": r"ductal\s+carcinoma\s+in[\s-]+situ",
    "lymphoma": r"lymphomas?",
    "phyllodes tumour": r"phyllodes\s+tumou?rs?|cystosarcoma\s+phyllodes",
}
BENIGN_TERMS: dict[str, str] = {
    "cyst": r"cysts?",
    "fibroadenoma": r"fibroadenomas?",
    "scar": r"(?:radial\s+)?scars?",
    "sclerosing adenosis": r"sclerosing\s+adenosis",
    "lobular carcinoma in situ": r"lobular\s+carcinoma\s+in[\s-]+situ",
    "columnar cell change": r"columnar\s+cell\s+(?:changes?|lesions?|alterations?)",
    "atypical lobular hyperplasia": r"atypical\s+lobular\s+hyperplasia",
    "atypical ductal hyperplasia": r"atypical\s+ductal\s+hyperplasia",
    "papilloma": r"(?:intraductal\s+)?papillomas?",
    "periductal mastitis": r"periductal\s+mastitis",
    "usual ductal hyperplasia": r"usual\s+ductal\s+hyperplasia",
}
# abbreviation -> canonical term (matched case-sensitively as whole words)
ABBREVIATIONS: dict[str, str] = {
    "IDC": "invasive ductal carcinoma",
    "ILC": "invasive lobular carcinoma",
    "DCIS": "ductal carcinoma in situ",
    "ADH": "atypical ductal hyperplasia",
    "ALH": "atypical lobular hyperplasia",
    "LCIS": "lobular carcinoma in situ",
    "UDH": "usual ductal hyperplasia",
    "FA": "fibroadenoma",
}

_NEG_PRE = r"no\s+evidence\s+of|no\s+residual|no|not|negative\s+for|without|free\s+of|absence\s+of|ruled\s+out|rules\s+out\s+(?=\w)|neither|nor"
_HIST_PRE = r"history\s+of|h/o|hx\s+of|prior|previous(?:ly)?|status\s+post|s/p|remote|past"
_UNC_PRE = (r"suspicious\s+(?:for|of)|concerning\s+for|cannot\s+(?:exclude|rule\s+out)|can\s*not\s+(?:exclude|rule\s+out)|"
            r"possible|possibly|probable|probably|questionable|rule\s+out|r/o|may\s+represent|equivocal\s+for")
_BREAKERS = (r"\bbut\b|\bhowever\b|\balthough\b|\bexcept\b|\bconsistent\s+with\b|\bcompatible\s+with\b|"
             r"\bdiagnostic\s+of\b|\bshowing\b|\bshows\b|\bdemonstrat\w*|\breveal\w*|:")
_NEG_POST = re.compile(
    r"^\s*[:\-]?\s*(?:(?:is|are|was|were|has\s+been|have\s+been)\s+)?"
    r"(?:not\s+(?:identified|seen|present|detected|found|demonstrated)|absent|negative|excluded|ruled\s+out|none)\b",
    re.I)
_UNC_POST = re.compile(r"^\s*[:\-]?\s*(?:(?:cannot|can\s*not|could\s+not)\s+be\s+(?:excluded|ruled\s+out)|"
                       r"not\s+excluded|(?:is|are)\s+(?:suspected|favou?red|possible))", re.I)

_CUES = [("negated", re.compile(rf"\b(?:{_NEG_PRE})\b", re.I)),
         ("historical", re.compile(rf"(?<![\w/])(?:{_HIST_PRE})(?![\w/])", re.I)),
         ("uncertain", re.compile(rf"(?<![\w/])(?:{_UNC_PRE})(?![\w/])", re.I))]
_BREAK_RE = re.compile(_BREAKERS, re.I)
_SIDE_RE = re.compile(
    r"\b(?P<both>bilateral(?:ly)?|both\s+breasts?|both\s+sides)\b|"
    r"\b(?P<left>left|lt)\b|\bL(?=\s+(?:breast|side)\b)|\((?P<lp>L)\)|"
    r"\b(?P<right>right|rt)\b|\bR(?=\s+(?:breast|side)\b)|\((?P<rp>R)\)",
    re.I)
_SENT_RE = re.compile(r"(?<=[.;!?])\s+|\n+")


def _compile_terms() -> list[tuple[str, str, re.Pattern[str]]]:
    out = []
    for label, terms in (("malignant", MALIGNANT_TERMS), ("benign", BENIGN_TERMS)):
        for name, pat in terms.items():
            out.append((label, name, re.compile(rf"\b(?:{pat})\b", re.I)))
    for abbr, name in ABBREVIATIONS.items():
        label = "malignant" if name in MALIGNANT_TERMS else "benign"
        out.append((label, name, re.compile(rf"(?<![\w-]){abbr}s?(?![\w-])")))
    return out


_TERMS = _compile_terms()


@dataclass
class Mention:
    """One term found in a report sentence."""

    label: str  # "benign" or "malignant"
    term: str  # canonical term
    matched_text: str
    status: str  # affirmed / negated / historical / uncertain
    side: str | None  # "L", "R", "B" (both) or None
    side_source: str  # sentence / context / record / none
    sentence: str
    trigger: str = ""
    sentence_index: int = 0


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (see the module docstring)."""
    return [s.strip() for s in _SENT_RE.split(text or "") if s and s.strip()]


def _side_mentions(sentence: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _SIDE_RE.finditer(sentence):
        if m.group("both"):
            side = "B"
        elif m.group("left") or m.group("lp") or m.group(0).upper() == "L":
            side = "L"
        else:
            side = "R"
        out.append((m.start(), m.end(), side))
    return out


def _sentence_side(mentions: list[tuple[int, int, str]]) -> str | None:
    sides = {s for _, _, s in mentions}
    if not sides:
        return None
    if "B" in sides or sides == {"L", "R"}:
        return "B"
    return sides.pop()


def _status(sentence: str, start: int, end: int) -> tuple[str, str]:
    """Status of the term at ``sentence[start:end]`` and the cue that decided it."""
    after = sentence[end:]
    m = _UNC_POST.match(after)
    if m:
        return "uncertain", m.group(0).strip()
    m = _NEG_POST.match(after)
    if m:
        return "negated", m.group(0).strip()
    before = sentence[:start]
    best: tuple[int, str, str] | None = None
    for status, rx in _CUES:
        for c in rx.finditer(before):
            # The cue's scope ends at a breaker between it and the term.
            if _BREAK_RE.search(before[c.end():]):
                continue
            if best is None or c.start() > best[0] or (c.start() == best[0] and status == "uncertain"):
                best = (c.start(), status, c.group(0))
    if best is None:
        return "affirmed", ""
    return best[1], best[2]


def find_mentions(text: str, record_side: str | None = None) -> list[Mention]:
    """Every benign/malignant term in ``text`` with its status and side (see the module docstring)."""
    record = _norm_side(record_side)
    context: str | None = None
    out: list[Mention] = []
    for si, sent in enumerate(split_sentences(text)):
        sides = _side_mentions(sent)
        matches = []
        for label, name, rx in _TERMS:
            for m in rx.finditer(sent):
                matches.append((m.start(), m.end(), label, name, m.group(0)))
        # A match inside a longer one (e.g. "papilloma" inside nothing, "cyst" in "cystosarcoma") is dropped.
        matches.sort(key=lambda t: (t[0], -(t[1] - t[0])))
        kept: list[tuple[int, int, str, str, str]] = []
        for mt in matches:
            if any(mt[0] >= k[0] and mt[1] <= k[1] for k in kept):
                continue
            kept.append(mt)
        for start, end, label, name, matched in kept:
            if sides:
                centre = (start + end) / 2
                side = min(sides, key=lambda s: min(abs(s[0] - centre), abs(s[1] - centre)))[2]
                source = "sentence"
            elif context is not None:
                side, source = context, "context"
            elif record is not None:
                side, source = record, "record"
            else:
                side, source = None, "none"
            status, trigger = _status(sent, start, end)
            out.append(Mention(label, name, matched, status, side, source, sent, trigger, si))
        if sides:
            context = _sentence_side(sides)
    return out


def _norm_side(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip().lower()
    return {"l": "L", "left": "L", "r": "R", "right": "R", "b": "B", "both": "B", "bilateral": "B"}.get(s)


@dataclass
class CohortRules:
    """Rules a malignant-negative breast must pass to stay a negative (months; ``None`` disables a rule)."""

    cancer_free_months: tuple[float, float] | None = (0.0, 15.0)
    birads_followup_months: tuple[float, float] | None = (6.0, 24.0)
    followup_birads: tuple[str, ...] = ("1", "2")


def read_reports(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Reports CSV: ``patient_id, report_date, text`` (+ optional ``report_id``, ``laterality``/``side``, ``exam_id``)."""
    df = read_table(path, "pathology reports")
    return validate_reports(df)


def validate_reports(df: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a reports table (dates parsed, ids as text)."""
    src = df.attrs.get("source", "<reports>")
    df = df.copy()
    if "date" in df.columns and "report_date" not in df.columns:
        df = df.rename(columns={"date": "report_date"})
    if "report" in df.columns and "text" not in df.columns:
        df = df.rename(columns={"report": "text"})
    missing = [c for c in ("patient_id", "report_date", "text") if c not in df.columns]
    if missing:
        raise EvaluationInputError(f"{src}: reports table is missing column(s) {', '.join(missing)}; "
                                   f"found {', '.join(map(str, df.columns))}")
    if "report_id" not in df.columns:
        df["report_id"] = [f"line{i + 2}" for i in range(len(df))]
    for c in ("patient_id", "report_id"):
        df[c] = df[c].astype(str).str.strip()
    dates = pd.to_datetime(df["report_date"].astype(str).str.strip(), errors="coerce", format="%Y-%m-%d")
    if dates.isna().any():
        i = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise EvaluationInputError(f"{src} line {i + 2}: report_date must be YYYY-MM-DD, got {df['report_date'].iloc[i]!r}")
    df["report_date"] = dates
    side_col = "laterality" if "laterality" in df.columns else ("side" if "side" in df.columns else None)
    df["record_side"] = df[side_col].map(_norm_side) if side_col else None
    if "exam_id" in df.columns:
        df["exam_id"] = df["exam_id"].astype(str).str.strip().replace({"nan": ""})
    else:
        df["exam_id"] = ""
    return df


def read_exams_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Exams from a manifest (``.jsonl``) or CSV: ``exam_id, patient_id, study_date`` (+ ``birads``, ``age``, ...)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        from breastscreen.data.manifest import read_manifest

        rows = [{"exam_id": e.exam_id, "patient_id": e.patient_id, "study_date": e.study_date, "birads": e.birads,
                 "age": e.age, "density": e.density} for e in read_manifest(path, allow_outside_paths=True)]
        df = pd.DataFrame(rows)
        df.attrs["source"] = str(path)
    else:
        df = read_table(path, "exams")
    src = df.attrs.get("source", str(path))
    missing = [c for c in ("exam_id", "patient_id", "study_date") if c not in df.columns]
    if missing:
        raise EvaluationInputError(f"{src}: exams need column(s)/fields {', '.join(missing)}")
    df = df.copy()
    df["exam_id"] = df["exam_id"].astype(str)
    bad_pid = df["patient_id"].isna() | df["patient_id"].astype(str).str.strip().isin(["", "None", "nan"])
    if bad_pid.any():
        raise EvaluationInputError(f"{src}: exam {df['exam_id'][bad_pid].iloc[0]!r} has no patient_id; "
                                   f"pathology labels need patient ids ({int(bad_pid.sum())} exam(s) lack one)")
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    dates = pd.to_datetime(df["study_date"].astype(str), errors="coerce", format="%Y-%m-%d")
    if dates.isna().any():
        i = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise EvaluationInputError(f"{src}: exam {df['exam_id'].iloc[i]!r} needs study_date YYYY-MM-DD, got {df['study_date'].iloc[i]!r}")
    df["study_date"] = dates
    if "birads" not in df.columns:
        df["birads"] = None
    return df


@dataclass
class PathologyLabels:
    """Results of :func:`labels_from_reports`."""

    labels: pd.DataFrame
    provenance: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)


def labels_from_reports(
    exams: pd.DataFrame,
    reports: pd.DataFrame,
    window_days: tuple[int, int] = (-30, 120),
    rules: CohortRules | None = None,
) -> PathologyLabels:
    """Per-breast labels for ``exams`` from ``reports`` (both validated tables); see the module docstring."""
    lo, hi = window_days
    if lo > hi:
        raise EvaluationInputError(f"date window must have start <= end, got {window_days}")
    by_patient = {p: g for p, g in exams.groupby("patient_id")}
    exam_index = exams.set_index("exam_id")
    lab = {eid: {"left_benign": 0, "left_malignant": 0, "right_benign": 0, "right_malignant": 0, "n_reports": 0}
           for eid in exams["exam_id"]}
    prov: list[dict[str, Any]] = []
    mentions_by_report: dict[str, list[Mention]] = {}
    for rep in reports.itertuples(index=False):
        mentions = find_mentions(str(rep.text), rep.record_side)
        mentions_by_report[rep.report_id] = mentions
        if rep.exam_id:
            if rep.exam_id not in exam_index.index:
                raise EvaluationInputError(f"report {rep.report_id}: exam_id {rep.exam_id!r} is not among the exams")
            linked = exam_index.loc[[rep.exam_id]].reset_index()
        else:
            g = by_patient.get(rep.patient_id)
            linked = g.iloc[0:0] if g is None else g
        days_all = ((rep.report_date - linked["study_date"]).dt.days).to_numpy() if len(linked) else np.array([])
        in_win = np.ones(len(linked), bool) if rep.exam_id else ((days_all >= lo) & (days_all <= hi))
        base = {"report_id": rep.report_id, "patient_id": rep.patient_id,
                "report_date": rep.report_date.strftime("%Y-%m-%d")}
        if not in_win.any():
            nearest = int(days_all[np.argmin(np.abs(days_all))]) if days_all.size else None
            prov.append({**base, "exam_id": "", "side": "", "label": "", "term": "", "status": "out_of_window"
                         if days_all.size else "no_exam_for_patient", "days_from_exam": nearest,
                         "matched_text": "", "sentence": "", "trigger": "", "side_source": ""})
            continue
        for ex, days in zip(linked["exam_id"].to_numpy()[in_win], days_all[in_win]):
            lab[ex]["n_reports"] += 1
            if not mentions:
                prov.append({**base, "exam_id": ex, "side": "", "label": "", "term": "", "status": "no_term",
                             "days_from_exam": int(days), "matched_text": "", "sentence": "", "trigger": "",
                             "side_source": ""})
            for m in mentions:
                status = m.status
                if status == "affirmed" and m.side is None:
                    status = "no_laterality"
                if status == "affirmed":
                    for side in (("L", "R") if m.side == "B" else (m.side,)):
                        prefix = "left" if side == "L" else "right"
                        lab[ex][f"{prefix}_{m.label}"] = 1
                    status = "assigned"
                prov.append({**base, "exam_id": ex, "side": m.side or "", "label": m.label, "term": m.term,
                             "status": status, "days_from_exam": int(days), "matched_text": m.matched_text,
                             "sentence": m.sentence, "trigger": m.trigger, "side_source": m.side_source})
    labels = pd.DataFrame([{"exam_id": e, **v} for e, v in lab.items()])
    labels["biopsied"] = (labels["n_reports"] > 0).astype(int)
    meta = exams.set_index("exam_id")
    labels["patient_id"] = meta.loc[labels["exam_id"], "patient_id"].to_numpy()
    labels["study_date"] = meta.loc[labels["exam_id"], "study_date"].dt.strftime("%Y-%m-%d").to_numpy()
    for c in ("age", "density", "birads"):
        if c in meta.columns:
            labels[c] = meta.loc[labels["exam_id"], c].to_numpy()
    labels = labels.astype({c: object for c in ("left_benign", "left_malignant", "right_benign", "right_malignant")})
    excluded = pd.DataFrame(columns=["exam_id", "patient_id", "side", "rule", "detail"])
    if rules is not None:
        excluded = _apply_rules(labels, exams, reports, mentions_by_report, rules)
    provenance = pd.DataFrame(prov, columns=["exam_id", "side", "label", "term", "status", "report_id", "patient_id",
                                             "report_date", "days_from_exam", "matched_text", "sentence", "trigger",
                                             "side_source"])
    return PathologyLabels(labels=labels, provenance=provenance, excluded=excluded)


def _apply_rules(labels: pd.DataFrame, exams: pd.DataFrame, reports: pd.DataFrame,
                 mentions_by_report: dict[str, list[Mention]], rules: CohortRules) -> pd.DataFrame:
    rows = []
    exams_by_patient = {p: g for p, g in exams.groupby("patient_id")}
    rep_by_patient = {p: g for p, g in reports.groupby("patient_id")}
    date_of = exams.set_index("exam_id")["study_date"]
    for i, row in labels.iterrows():
        ex, pid = row["exam_id"], row["patient_id"]
        when = date_of[ex]
        for side, prefix in (("L", "left"), ("R", "right")):
            if row[f"{prefix}_malignant"] != 0:
                continue
            reason = None
            if rules.cancer_free_months is not None:
                a, b = (m * DAYS_PER_MONTH for m in rules.cancer_free_months)
                for rep in rep_by_patient.get(pid, pd.DataFrame()).itertuples(index=False):
                    d = (rep.report_date - when).days
                    if a <= d <= b and any(m.label == "malignant" and m.status == "affirmed" and m.side in (side, "B", None)
                                           for m in mentions_by_report.get(rep.report_id, [])):
                        reason = ("cancer_free_followup",
                                  f"malignant pathology in report {rep.report_id} {d} days after the exam")
                        break
            if reason is None and rules.birads_followup_months is not None:
                a, b = (m * DAYS_PER_MONTH for m in rules.birads_followup_months)
                later = exams_by_patient.get(pid)
                ok = False
                if later is not None:
                    d = (later["study_date"] - when).dt.days
                    br = later["birads"].astype(str).str.strip().str.upper()
                    ok = bool(((d >= a) & (d <= b) & br.isin(rules.followup_birads)).any())
                if not ok:
                    reason = ("birads_followup", f"no exam with BI-RADS {'/'.join(rules.followup_birads)} "
                                                 f"{rules.birads_followup_months[0]:g}-{rules.birads_followup_months[1]:g} "
                                                 f"months after")
            if reason is not None:
                labels.at[i, f"{prefix}_malignant"] = None
                rows.append({"exam_id": ex, "patient_id": pid, "side": side, "rule": reason[0], "detail": reason[1]})
    return pd.DataFrame(rows, columns=["exam_id", "patient_id", "side", "rule", "detail"])


def labels_from_pathology_files(reports_path: str | os.PathLike[str], exams_path: str | os.PathLike[str],
                                out_path: str | os.PathLike[str], window_days: tuple[int, int] = (-30, 120),
                                rules: CohortRules | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Read reports and exams, write ``out`` labels CSV plus ``<stem>.provenance.csv`` (and ``<stem>.excluded.csv``)."""
    from breastscreen.utils import atomic_path

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise EvaluationInputError(f"{out_path} exists; pass --overwrite to replace it")
    res = labels_from_reports(read_exams_table(exams_path), read_reports(reports_path), window_days, rules)
    prov_path = out_path.with_name(out_path.stem + ".provenance.csv")
    with atomic_path(out_path) as tmp:
        res.labels.to_csv(tmp, index=False)
        os.chmod(tmp, 0o644)
    with atomic_path(prov_path) as tmp:
        res.provenance.to_csv(tmp, index=False)
        os.chmod(tmp, 0o644)
    written = {"labels": str(out_path), "provenance": str(prov_path)}
    if rules is not None:
        ex_path = out_path.with_name(out_path.stem + ".excluded.csv")
        with atomic_path(ex_path) as tmp:
            res.excluded.to_csv(tmp, index=False)
            os.chmod(tmp, 0o644)
        written["excluded"] = str(ex_path)
    lab = res.labels
    summary = {
        "exams": int(len(lab)),
        "biopsied_exams": int(lab["biopsied"].sum()),
        "malignant_breasts": int(sum((lab[c] == 1).sum() for c in ("left_malignant", "right_malignant"))),
        "benign_breasts": int(sum((lab[c] == 1).sum() for c in ("left_benign", "right_benign"))),
        "mentions": res.provenance["status"].value_counts().to_dict(),
        "excluded_by_rule": res.excluded["rule"].value_counts().to_dict() if len(res.excluded) else {},
        "files": written,
    }
    return summary


def iter_assigned(provenance: pd.DataFrame) -> Iterable[dict[str, Any]]:
    """The provenance rows that assigned a label."""
    return provenance[provenance["status"] == "assigned"].to_dict("records")
