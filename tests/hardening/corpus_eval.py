"""Corpus family "evaluate": predictions, labels, readers and validation files through `breastscreen evaluate`.

NaN or infinite scores, out-of-range values, BI-RADS outside 0-6, malformed optional files and
files that are not text are refused with the file, line and column (exit 2); an empty cell is
the only way to say "not predicted".
"""

from __future__ import annotations

from pathlib import Path

from hardening_helpers import Case, bs, expect

CASES: list[Case] = []

PRED_HEADER = "exam_id,left_benign,left_malignant,right_benign,right_malignant"
LAB_HEADER = "exam_id,left_benign,left_malignant,right_benign,right_malignant"
PREDS = [f"e{i},{0.1 + 0.02 * i:.2f},{(0.9 if i % 3 == 0 else 0.2) + 0.01 * i:.2f},0.3,0.{i % 9 + 1}" for i in range(12)]
LABELS = [f"e{i},{i % 2},{int(i % 3 == 0)},0,{int(i % 4 == 0)}" for i in range(12)]
BIRADS_PRED_HEADER = PRED_HEADER + ",birads_0,birads_1,birads_2"
BIRADS_PREDS = [p + ",0.2,0.3,0.5" for p in PREDS]


def _run(box: Path, preds: list[str] | bytes, labels: list[str] | bytes, extra: dict[str, list[str] | bytes],
         code: int, pattern: str | None, pred_header: str, lab_header: str) -> None:
    def write(name: str, header: str, body: list[str] | bytes) -> Path:
        path = box / name
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text("\n".join([header, *body]) + "\n", encoding="utf-8")
        return path

    args = ["evaluate", "--predictions", write("p.csv", pred_header, preds),
            "--labels", write("l.csv", lab_header, labels), "--out", box / "eval", "--bootstrap", "0",
            "--permutations", "0"]
    for option, body in extra.items():
        header = {"--readers": "reader_id,exam_id,side,score", "--val-predictions": BIRADS_PRED_HEADER}[option]
        if isinstance(body, tuple):  # (header, rows)
            header, body = body
        args += [option, write(option.strip("-") + ".csv", header, body)]
    res = bs(*args)
    expect(res, code, pattern)
    if code == 0:
        assert (box / "eval" / "metrics.json").is_file()


def ev(name: str, *, preds: list[str] | bytes = PREDS, labels: list[str] | bytes = LABELS,
       extra: dict[str, list[str] | bytes] | None = None, code: int = 2, pattern: str | None = None,
       pred_header: str = PRED_HEADER, lab_header: str = LAB_HEADER) -> None:
    kind = "accepted" if code == 0 else "error"
    CASES.append(Case("evaluate", name, kind, lambda box: _run(box, preds, labels, extra or {}, code, pattern,
                                                               pred_header, lab_header)))


def replace_cell(rows: list[str], row: int, col: int, value: str) -> list[str]:
    out = list(rows)
    cells = out[row].split(",")
    cells[col] = value
    out[row] = ",".join(cells)
    return out


ev("valid", code=0, pattern="AUROC")
ev("valid-with-empty-cells", preds=replace_cell(PREDS, 3, 4, ""), code=0, pattern="AUROC")
for label, value in [("NaN", "NaN"), ("nan", "nan"), ("NA", "NA"), ("inf", "inf"), ("minus-inf", "-inf"),
                     ("negative", "-0.1"), ("above-1", "1.5"), ("text", "abc"), ("1e400", "1e400"), ("percent", "50%")]:
    ev(f"prediction-{label}", preds=replace_cell(PREDS, 4, 2, value), pattern=r"p.csv line 6: .*left_malignant")
ev("prediction-duplicate-id", preds=PREDS + [PREDS[0]], pattern="repeats exam_id")
ev("prediction-empty-id", preds=replace_cell(PREDS, 2, 0, ""), pattern="empty exam_id")
ev("prediction-missing-column", pred_header="exam_id,left_benign", preds=["e1,0.1"], pattern="missing column")
ev("prediction-header-only", preds=[], pattern="no|empty|0 of")
ev("prediction-empty-file", preds=b"", pattern="cannot read predictions CSV|No columns")
ev("prediction-binary", preds=b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(200), pattern="not UTF-8|NUL bytes")
ev("prediction-nul", preds=(PRED_HEADER + "\ne1,0.1,0.2,0.3,0.4\0\n").encode(), pattern="NUL bytes")
ev("prediction-utf16", preds=("\n".join([PRED_HEADER, *PREDS]) + "\n").encode("utf-16"), code=0, pattern="AUROC")
ev("prediction-latin1", preds=("\n".join([PRED_HEADER, *PREDS[:-1], "caf\u00e9,0.1,0.2,0.3,0.4"]) + "\n").encode("latin-1"),
   pattern="not UTF-8")
ev("prediction-unknown-exam", preds=PREDS + ["zz,0.1,0.2,0.3,0.4"], pattern="not in the labels")
ev("prediction-birads-partial", pred_header=PRED_HEADER + ",birads_0", preds=[p + ",0.5" for p in PREDS],
   pattern="need all of birads_0")
ev("prediction-birads-sum", pred_header=BIRADS_PRED_HEADER, preds=[p + ",0.5,0.5,0.5" for p in PREDS], pattern="sum to 1")
ev("prediction-birads-nan", pred_header=BIRADS_PRED_HEADER, preds=replace_cell(BIRADS_PREDS, 1, 5, "NaN"),
   pattern="birads_0")
for label, value in [("2", "2"), ("minus1", "-1"), ("text", "yes"), ("half", "0.5")]:
    ev(f"label-{label}", labels=replace_cell(LABELS, 1, 2, value), pattern="label 'left_malignant' must be 0, 1 or empty")
ev("label-nan-is-unknown", labels=replace_cell(LABELS, 1, 2, "nan"), code=0, pattern="AUROC")
for label, value, pattern in [("birads-7", "7", "birads must be one of"), ("birads-text", "high", "birads must be one of"),
                              ("birads-4x", "4X", "birads must be one of")]:
    ev(f"labels-{label}", lab_header=LAB_HEADER + ",birads", labels=[r + f",{value}" for r in LABELS], pattern=pattern)
ev("labels-birads-valid", lab_header=LAB_HEADER + ",birads", labels=[r + ",4A" for r in LABELS], code=0, pattern="AUROC")
for label, value in [("nan", "NaN"), ("text", "old"), ("200", "200"), ("negative", "-3"), ("inf", "inf")]:
    ev(f"labels-age-{label}", lab_header=LAB_HEADER + ",age", labels=[r + f",{value}" for r in LABELS], pattern="age")
ev("labels-density-E", lab_header=LAB_HEADER + ",density", labels=[r + ",E" for r in LABELS], pattern="density must be")
ev("labels-missing-column", lab_header="exam_id,left_benign", labels=["e1,0"], pattern="missing column")
ev("labels-duplicate", labels=LABELS + [LABELS[0]], pattern="repeats exam_id")

READERS = [f"R1,e{i},{s},{(i * 7 + (s == 'R')) % 5 + 1}" for i in range(12) for s in ("L", "R")]
ev("readers-valid", extra={"--readers": READERS}, code=0, pattern="AUROC")
ev("readers-side", extra={"--readers": replace_cell(READERS, 0, 2, "X")}, pattern="side must be")
ev("readers-birads-7", extra={"--readers": replace_cell(READERS, 0, 3, "7")}, pattern="gives BI-RADS '7'")
ev("readers-birads-0", extra={"--readers": replace_cell(READERS, 0, 3, "0")}, pattern="gives BI-RADS '0'")
ev("readers-percent", extra={"--readers": [r.rsplit(",", 1)[0] + f",{(i * 13) % 100}" for i, r in enumerate(READERS)]},
   code=0, pattern="AUROC")
ev("readers-score-nan", extra={"--readers": [r.rsplit(",", 1)[0] + ",0.5" for r in READERS[:-1]] + ["R1,e11,R,NaN"]},
   pattern="reader score must be")
ev("readers-score-inf", extra={"--readers": [r.rsplit(",", 1)[0] + ",0.5" for r in READERS[:-1]] + ["R1,e11,R,inf"]},
   pattern="score must be in")
ev("readers-score-text", extra={"--readers": replace_cell(READERS, 2, 3, "maybe")}, pattern="reader score")
ev("readers-empty-score", extra={"--readers": replace_cell(READERS, 2, 3, "")}, pattern="empty reader score")
ev("readers-duplicate", extra={"--readers": READERS + [READERS[0]]}, pattern="twice")
ev("readers-binary", extra={"--readers": b"\0\1\2\3" * 10}, pattern="NUL bytes|not UTF-8")

ev("val-without-birads-preds", extra={"--val-predictions": BIRADS_PREDS}, pattern="used only with BI-RADS predictions")
ev("val-missing-columns", pred_header=BIRADS_PRED_HEADER, preds=BIRADS_PREDS,
   extra={"--val-predictions": (PRED_HEADER, PREDS)}, pattern="validation predictions need birads_0")
ev("val-all-empty", pred_header=BIRADS_PRED_HEADER, preds=BIRADS_PREDS,
   extra={"--val-predictions": [p.rsplit(",", 3)[0] + ",,," for p in BIRADS_PREDS]}, pattern="no row of the validation")
ev("val-nan", pred_header=BIRADS_PRED_HEADER, preds=BIRADS_PREDS,
   extra={"--val-predictions": replace_cell(BIRADS_PREDS, 0, 5, "NaN")}, pattern="birads_0")
ev("val-valid", pred_header=BIRADS_PRED_HEADER, preds=BIRADS_PREDS, extra={"--val-predictions": BIRADS_PREDS},
   code=0, pattern="AUROC")


def _other_command_folder(box: Path) -> None:
    (box / "eval").mkdir()
    (box / "eval" / ".breastscreen-output.json").write_text('{"command": "predict"}')
    _run(box, PREDS, LABELS, {}, 2, "holds the output of `breastscreen predict`", PRED_HEADER, LAB_HEADER)


CASES.append(Case("evaluate", "out-is-predict-folder", "error", _other_command_folder))
