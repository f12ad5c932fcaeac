"""The pathology-report labeller on a fixture of realistic report snippets, and the cohort rules."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from breastscreen.evaluation.pathology import (
    CohortRules,
    find_mentions,
    labels_from_reports,
    read_exams_table,
    validate_reports,
)

EXAM_DATE = "2020-01-10"

# (patient, days after the exam, report text, record laterality, expected (L benign, L malignant, R benign, R malignant))
CASES = [
    ("p01", 5, "LEFT BREAST, 2 O'CLOCK, CORE BIOPSY: INVASIVE DUCTAL CARCINOMA, GRADE 2.", "", (0, 1, 0, 0)),
    ("p02", 5, "Right breast, ultrasound-guided core biopsy: Fibroadenoma.", "", (0, 0, 1, 0)),
    ("p03", 5, "Left breast biopsy: benign breast tissue. No evidence of carcinoma.", "", (0, 0, 0, 0)),
    ("p04", 5, "Right breast core biopsy: negative for malignancy, consistent with fibroadenoma.", "", (0, 0, 1, 0)),
    ("p05", 5, "Left breast: DCIS, cribriform type, intermediate nuclear grade.", "", (0, 1, 0, 0)),
    ("p06", 5, "Right breast: IDC with associated DCIS.", "", (0, 0, 0, 1)),
    ("p07", 5, "Bilateral breast biopsies: simple cysts.", "", (1, 0, 1, 0)),
    ("p08", 5, "Right breast: invasive lobular carcinoma. Left breast: fibroadenoma.", "", (1, 0, 0, 1)),
    ("p09", 5, "Invasive ductal carcinoma in the right breast and fibroadenoma in the left breast.", "", (1, 0, 0, 1)),
    ("p10", 5, "History of left breast DCIS treated in 2015. Current biopsy, right breast: sclerosing adenosis.", "",
     (0, 0, 1, 0)),
    ("p11", 5, "Left breast, excision: no residual ductal carcinoma in situ. Biopsy site scar.", "", (1, 0, 0, 0)),
    ("p12", 5, "Right breast: atypical ductal hyperplasia (ADH). DCIS cannot be excluded; excision recommended.", "",
     (0, 0, 1, 0)),
    ("p13", 5, "Left breast: fibrocystic changes with usual ductal hyperplasia. Negative for atypia and malignancy.", "",
     (1, 0, 0, 0)),
    ("p14", 5, "Core biopsy: lobular carcinoma in situ (LCIS).", "R", (0, 0, 1, 0)),
    ("p15", 5, "Intraductal papilloma without atypia.", "left", (1, 0, 0, 0)),
    ("p16", 5, "Right breast: intraductal papillary carcinoma.", "", (0, 0, 0, 1)),
    ("p17", 5, "Left breast mass: phyllodes tumour, borderline.", "", (0, 1, 0, 0)),
    ("p18", 5, "Right axillary tail: diffuse large B-cell lymphoma involving breast tissue.", "", (0, 0, 0, 1)),
    ("p19", 5, "Left breast: mucinous carcinoma.", "", (0, 1, 0, 0)),
    ("p20", 5, "Right breast: tubular carcinoma, 8 mm.", "", (0, 0, 0, 1)),
    ("p21", 5, "Left breast: microinvasive carcinoma arising in DCIS.", "", (0, 1, 0, 0)),
    ("p22", 5, "Right breast: ALH and columnar cell change.", "", (0, 0, 1, 0)),
    ("p23", 5, "Left breast: periductal mastitis.", "", (1, 0, 0, 0)),
    ("p24", 5, "Right breast: radial scar. No atypia or carcinoma identified.", "", (0, 0, 1, 0)),
    ("p25", 200, "Left breast: invasive ductal carcinoma.", "", (0, 0, 0, 0)),  # out of window (late)
    ("p26", -45, "Right breast: fibroadenoma.", "", (0, 0, 0, 0)),  # out of window (early)
    ("p27", -20, "Right breast: FA.", "", (0, 0, 1, 0)),
    ("p28", 5, "LEFT BREAST, CORE BIOPSY:\n- Invasive lobular carcinoma, classic type.\n- Lobular carcinoma in situ.", "",
     (1, 1, 0, 0)),
    ("p29", 5, "Right breast: ILC. Left breast: benign, no evidence of malignancy.", "", (0, 0, 0, 1)),
    ("p30", 5, "Left breast: Ductal carcinoma in situ: not identified. Fibroadenoma.", "", (1, 0, 0, 0)),
    ("p31", 5, "Right breast: suspicious for invasive ductal carcinoma; see excision.", "", (0, 0, 0, 0)),
    ("p32", 5, "Left breast: no evidence of DCIS or invasive carcinoma. Cyst wall with apocrine metaplasia.", "",
     (1, 0, 0, 0)),
    ("p33", 5, "Patient with prior right IDC, now left breast biopsy: fibroadenoma.", "", (1, 0, 0, 0)),
    ("p34", 5, "Right breast: inflammatory carcinoma.", "", (0, 0, 0, 1)),
    ("p35", 5, "Left breast: infiltrating ductal carcinoma, NOS.", "", (0, 1, 0, 0)),
    ("p36", 5, "Right breast: no fibroadenoma identified; benign fibrofatty tissue.", "", (0, 0, 0, 0)),
    ("p37", 5, "Both breasts: UDH.", "", (1, 0, 1, 0)),
    ("p38", 5, "Lt breast: invasive ductal carcinoma.", "", (0, 1, 0, 0)),
    ("p39", 5, "Rt breast, 10 o'clock: fibroadenoma.", "", (0, 0, 1, 0)),
    ("p40", 5, "Left breast: Invasive carcinoma is absent. DCIS, low grade.", "", (0, 1, 0, 0)),
    ("p41", 5, "Core biopsy: fibroadenoma.", "", (0, 0, 0, 0)),  # no laterality anywhere
    ("p42", 5, "Left breast: negative for ductal carcinoma in situ and invasive lobular carcinoma.", "", (0, 0, 0, 0)),
    ("p43", 5, "Right breast: invasive ductal carcinoma, no lymphovascular invasion; no DCIS identified.", "",
     (0, 0, 0, 1)),
    ("p44", 5, "Left breast: h/o fibroadenoma; current specimen shows ductal carcinoma in situ.", "", (0, 1, 0, 0)),
]


def _tables(cases=CASES):
    exams = pd.DataFrame({"exam_id": [f"x{c[0]}" for c in cases], "patient_id": [c[0] for c in cases],
                          "study_date": EXAM_DATE})
    dates = pd.Timestamp(EXAM_DATE) + pd.to_timedelta([c[1] for c in cases], unit="D")
    reports = pd.DataFrame({"report_id": [f"r{c[0]}" for c in cases], "patient_id": [c[0] for c in cases],
                            "report_date": dates.strftime("%Y-%m-%d"), "text": [c[2] for c in cases],
                            "laterality": [c[3] for c in cases]})
    return exams, reports


def _exams_table(df: pd.DataFrame, tmp_path) -> pd.DataFrame:
    p = tmp_path / "exams.csv"
    df.to_csv(p, index=False)
    return read_exams_table(p)


def test_fixture_labels_exactly(tmp_path):
    assert len(CASES) >= 40
    exams, reports = _tables()
    res = labels_from_reports(_exams_table(exams, tmp_path), validate_reports(reports))
    got = res.labels.set_index("exam_id")
    wrong = []
    for pid, _, text, _, want in CASES:
        row = got.loc[f"x{pid}"]
        have = tuple(int(row[c]) for c in ("left_benign", "left_malignant", "right_benign", "right_malignant"))
        if have != want:
            wrong.append((pid, text, want, have))
    assert not wrong, "\n".join(map(str, wrong))


def test_provenance_traces_every_label_to_its_sentence(tmp_path):
    exams, reports = _tables()
    res = labels_from_reports(_exams_table(exams, tmp_path), validate_reports(reports))
    prov = res.provenance
    assigned = prov[prov["status"] == "assigned"]
    lab = res.labels.set_index("exam_id")
    for ex, row in lab.iterrows():
        for side, prefix in (("L", "left"), ("R", "right")):
            for label in ("benign", "malignant"):
                if row[f"{prefix}_{label}"] == 1:
                    hit = assigned[(assigned.exam_id == ex) & (assigned.label == label)
                                   & assigned.side.isin([side, "B"])]
                    assert len(hit) >= 1 and all(hit.sentence.str.len() > 0)
    p9 = assigned[assigned.exam_id == "xp09"]
    assert set(zip(p9.term, p9.side)) == {("invasive ductal carcinoma", "R"), ("fibroadenoma", "L")}
    statuses = dict(zip(prov.report_id + "/" + prov.term.fillna(""), prov.status))
    assert statuses["rp03/"] == "no_term"
    assert statuses["rp25/"] == "out_of_window"
    assert statuses["rp11/ductal carcinoma in situ"] == "negated"
    assert statuses["rp10/ductal carcinoma in situ"] == "historical"
    assert statuses["rp12/ductal carcinoma in situ"] == "uncertain"
    assert statuses["rp41/fibroadenoma"] == "no_laterality"
    assert lab.loc["xp03", "biopsied"] == 1 and lab.loc["xp25", "biopsied"] == 0


def test_find_mentions_details():
    m = find_mentions("RIGHT BREAST: IDC. Margins negative.")
    assert [(x.term, x.status, x.side) for x in m] == [("invasive ductal carcinoma", "affirmed", "R")]
    # abbreviations are case-sensitive: "fa" in ordinary words or lower case is not fibroadenoma
    assert find_mentions("left breast: fa, fatty tissue") == []
    m = find_mentions("No carcinoma. Fibroadenoma.", record_side="L")
    assert [(x.term, x.side_source) for x in m] == [("fibroadenoma", "record")]


def test_report_window_and_multiple_exams(tmp_path):
    exams = pd.DataFrame({"exam_id": ["a1", "a2"], "patient_id": ["p", "p"], "study_date": ["2020-01-01", "2021-01-01"]})
    reports = pd.DataFrame({"patient_id": ["p"], "report_date": ["2020-02-01"], "text": ["Left breast: IDC."]})
    res = labels_from_reports(_exams_table(exams, tmp_path), validate_reports(reports))
    lab = res.labels.set_index("exam_id")
    assert lab.loc["a1", "left_malignant"] == 1 and lab.loc["a2", "left_malignant"] == 0
    res = labels_from_reports(_exams_table(exams, tmp_path), validate_reports(reports), window_days=(-400, -300))
    assert res.labels.set_index("exam_id").loc["a2", "left_malignant"] == 1


def test_cohort_rules_exclude_negatives_with_reasons(tmp_path):
    exams = pd.DataFrame({
        "exam_id": ["n1", "n1f", "n2", "n3", "n3f", "c1"],
        "patient_id": ["A", "A", "B", "C", "C", "D"],
        "study_date": ["2019-01-01", "2019-12-01", "2019-01-01", "2019-01-01", "2019-10-01", "2019-01-01"],
        "birads": ["1", "2", "1", "1", "1", "4"],
    })
    reports = pd.DataFrame({
        "patient_id": ["C", "D"],
        "report_date": ["2019-09-01", "2019-01-05"],  # C: cancer 8 months after n3 (outside the label window)
        "text": ["Right breast: invasive ductal carcinoma.", "Left breast: IDC."],
    })
    res = labels_from_reports(_exams_table(exams, tmp_path), validate_reports(reports), rules=CohortRules())
    lab = res.labels.set_index("exam_id")
    ex = res.excluded
    # n1: BI-RADS 2 follow-up 11 months later and no cancer -> both breasts stay negatives
    assert lab.loc["n1", "left_malignant"] == 0 and lab.loc["n1", "right_malignant"] == 0
    # n2: no follow-up exam -> both breasts excluded by the BI-RADS follow-up rule
    assert pd.isna(lab.loc["n2", "left_malignant"]) and pd.isna(lab.loc["n2", "right_malignant"])
    assert set(ex[ex.exam_id == "n2"].rule) == {"birads_followup"}
    # n3: right breast cancer 8 months later -> excluded by the cancer-free rule; left has follow-up -> kept
    assert set(ex[(ex.exam_id == "n3") & (ex.side == "R")].rule) == {"cancer_free_followup"}
    assert lab.loc["n3", "left_malignant"] == 0
    # c1: the malignant breast is a positive, untouched; its other breast lacks follow-up
    assert lab.loc["c1", "left_malignant"] == 1
    assert set(ex[ex.exam_id == "c1"].side) == {"R"}


def test_cli_from_pathology(tmp_path):
    from breastscreen.cli import app

    exams, reports = _tables(CASES[:6])
    exams.to_csv(tmp_path / "exams.csv", index=False)
    reports.to_csv(tmp_path / "reports.csv", index=False)
    out = tmp_path / "labels.csv"
    args = ["labels", "from-pathology", "--reports", str(tmp_path / "reports.csv"), "--exams",
            str(tmp_path / "exams.csv"), "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert out.exists() and (tmp_path / "labels.provenance.csv").exists()
    lab = pd.read_csv(out).set_index("exam_id")
    assert lab.loc["xp01", "left_malignant"] == 1
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0  # refuses to overwrite
    r = CliRunner().invoke(app, args + ["--overwrite", "--cohort-rules", "--no-birads-followup"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "labels.excluded.csv").exists()


def test_bad_report_date_names_the_line(tmp_path):
    from breastscreen.evaluation.io import EvaluationInputError

    reports = pd.DataFrame({"patient_id": ["p"], "report_date": ["12/01/2020"], "text": ["x"]})
    with pytest.raises(EvaluationInputError, match="line 2.*YYYY-MM-DD"):
        validate_reports(reports)
