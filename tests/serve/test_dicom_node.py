"""The DICOM node in-process: pynetdicom as the sending modality and as the receiving PACS.

One node (``demo-breast-heatmaps`` so that overlays exist) serves the whole module; each test
uses its own synthetic study or refused instance. The dcmtk command-line round trip and the
SIGKILL restart are in ``test_dicom_dcmtk.py``.
"""

from __future__ import annotations

import copy
import csv
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from breastscreen.errors import BreastscreenError  # noqa: E402
from breastscreen.serve.dicom_node import DicomNode, NodeConfig, parse_destination  # noqa: E402
from breastscreen.serve.dicom_studies import StudyBook, safe_uid_name  # noqa: E402
from breastscreen.serve.store import JobStore  # noqa: E402

SCU_AE = "TESTSCU"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def _study(folder: Path, seed: int) -> list[Path]:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    generate_mammo_cohort(folder, 1, seed=seed, scale=0.125, fmt="dicom")
    return sorted(p for p in folder.rglob("*.dcm") if "mask" not in p.name.lower())


class _Pacs:
    """A Storage SCP standing in for the PACS: keeps every received data set."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt

        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for uid in (SR_CLASS, SC_CLASS):
            ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def of_study(self, study_uid: str) -> list[pydicom.Dataset]:
        with self.lock:
            return [d for d in self.received if d.StudyInstanceUID == study_uid]


@pytest.fixture(scope="module")
def pacs() -> Iterator[_Pacs]:
    p = _Pacs()
    yield p
    p.server.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: _Pacs) -> Iterator[DicomNode]:
    cfg = NodeConfig(models=("demo-breast-heatmaps",), ae_title="BSCREEN", port=0, device="cpu",
                     destination=f"PACS@127.0.0.1:{pacs.port}", data_dir=tmp_path_factory.mktemp("node"),
                     allow=(SCU_AE,), complete_after=30.0, max_associations=2, max_pixels=500_000,
                     tick_seconds=0.1)
    n = DicomNode(cfg)
    n.start()
    yield n
    n.stop()


def _assoc(node: DicomNode, classes: list[str], ae_title: str = SCU_AE) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for uid in classes:
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1"])
    return ae.associate("127.0.0.1", node.port, ae_title="BSCREEN")


def _store(node: DicomNode, datasets: list[pydicom.Dataset]) -> list[int]:
    assoc = _assoc(node, sorted({str(d.SOPClassUID) for d in datasets}))
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(d).Status) for d in datasets]
    finally:
        assoc.release()


def _wait(cond: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _probabilities(sr: pydicom.Dataset) -> dict[tuple[str, str], float]:
    """(breast, measurement code) -> value from the SR's measurement groups."""
    out: dict[tuple[str, str], float] = {}

    def walk(items: Any, site: str | None) -> None:
        for it in items:
            if it.ValueType == "NUM":
                here = site
                for sub in it.get("ContentSequence", []):
                    if sub.ConceptNameCodeSequence[0].CodeValue == "363698007":  # finding site
                        here = sub.ConceptCodeSequence[0].CodeMeaning
                out[(here or "?", it.ConceptNameCodeSequence[0].CodeValue)] = float(
                    it.MeasuredValueSequence[0].NumericValue)
            elif "ContentSequence" in it:
                walk(it.ContentSequence, site)

    walk(sr.ContentSequence, None)
    return out


# ---------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/../../x", "..", "", "a" * 300, "1.2.3\x00/evil", "/abs"])
def test_uid_names_never_leave_the_data_dir(tmp_path: Path, uid: str) -> None:
    book = StudyBook(JobStore(tmp_path, kind="dicom"))
    name = safe_uid_name(uid)
    assert "/" not in name and name not in (".", "..") and name.startswith("h-")
    assert book.study_dir(name).resolve().parent == (tmp_path / "dicom" / "studies").resolve()


def test_well_formed_uids_keep_their_name() -> None:
    assert safe_uid_name("1.2.840.10008.5.1") == "1.2.840.10008.5.1"


def test_destination_parsing() -> None:
    d = parse_destination("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port) == ("PACS", "10.0.0.5", 104)
    assert parse_destination("X@[::1]:11112").host == "::1"
    for bad in ("PACS@host", "@h:1", "PACS@h:0", "PACS@h:70000", "A" * 17 + "@h:1", "A\\B@h:1"):
        with pytest.raises(BreastscreenError):
            parse_destination(bad)


def test_job_kinds_are_separate_and_old_databases_migrate(tmp_path: Path) -> None:
    # A version-1 database (no jobs.kind, no dicom_studies) as the HTTP service wrote it.
    con = sqlite3.connect(tmp_path / "breastscreen-serve.sqlite")
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
            status TEXT NOT NULL, stage TEXT, stage_fraction REAL NOT NULL DEFAULT 0, fraction REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT, lease_expires REAL, n_files INTEGER NOT NULL DEFAULT 0,
            upload_bytes INTEGER NOT NULL DEFAULT 0, exam_ids TEXT NOT NULL DEFAULT '[]', modality TEXT,
            result TEXT, error TEXT);
        INSERT INTO jobs (id, owner, status, created_at) VALUES ('old', 'k1', 'queued', 1.0);
    """)
    con.commit()
    con.close()
    exams, dicom = JobStore(tmp_path), JobStore(tmp_path, kind="dicom")
    assert exams.get("old").kind == "exam"
    dicom.submit("d1", "dicom-node", n_files=1, upload_bytes=0, exam_ids=[], modality="MG")
    assert dicom.claim("w", 60, 3).job_id == "d1"
    assert dicom.claim("w", 60, 3) is None  # never the service's job
    assert exams.claim("w", 60, 3).job_id == "old"
    assert exams.counts()["running"] == 1 and dicom.counts()["running"] == 1
    with exams.connect() as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"


def test_a_study_is_submitted_once_even_when_checked_concurrently(tmp_path: Path) -> None:
    book = StudyBook(JobStore(tmp_path, kind="dicom"))
    for i, view in enumerate(["L-CC", "R-CC", "L-MLO", "R-MLO"]):
        tmp = book.temp_path()
        tmp.write_bytes(b"x")
        assert book.commit_instance(tmp, "1.2.3", f"1.2.3.{i}", view, "X") == "new"
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(book.submit_complete(3600.0)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 1]
    tmp = book.temp_path()
    tmp.write_bytes(b"x")
    assert book.commit_instance(tmp, "1.2.3", "1.2.3.9", "L-CC", "X") == "late"
    assert not (book.study_dir("1.2.3") / "1.2.3.9.dcm").exists()
    assert book.get("1.2.3").late == 1


# ---------------------------------------------------------------------------- the running node


def test_study_round_trip_sr_equals_predict_and_overlays_arrive(node: DicomNode, pacs: _Pacs,
                                                                tmp_path: Path) -> None:
    from breastscreen.inference.options import PredictOptions
    from breastscreen.inference.predict import predict

    files = _study(tmp_path / "study", seed=11)
    datasets = [pydicom.dcmread(f) for f in files]
    study_uid = datasets[0].StudyInstanceUID
    assert _store(node, datasets) == [0, 0, 0, 0]
    got = _wait(lambda: (lambda r: r if len(r) >= 5 else None)(pacs.of_study(study_uid)), timeout=60)
    srs = [d for d in got if d.SOPClassUID == SR_CLASS]
    overlays = [d for d in got if d.SOPClassUID == SC_CLASS]
    assert len(srs) == 1 and len(overlays) == 4
    predict(tmp_path / "study", ["demo-breast-heatmaps"], tmp_path / "pred", PredictOptions(tta=1, pictures=False))
    row = next(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    values = _probabilities(srs[0])
    for breast, word in (("Left breast", "left"), ("Right breast", "right")):
        assert values[(breast, "111047")] == pytest.approx(float(row[f"{word}_malignant"]), abs=1e-6)
        assert values[(breast, "BENIGN-P")] == pytest.approx(float(row[f"{word}_benign"]), abs=1e-6)
    sources = {d.SOPInstanceUID for d in datasets}
    series = {d.SeriesInstanceUID for d in datasets}
    for sc in overlays:
        assert sc.SeriesInstanceUID not in series and sc.SOPInstanceUID not in sources
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in sources
        assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.shape[2] == 3
    assert srs[0].PatientID == datasets[0].PatientID
    evidence = {s.ReferencedSOPInstanceUID for ev in srs[0].CurrentRequestedProcedureEvidenceSequence
                for se in ev.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
    assert evidence == sources
    # Sending the same study again changes nothing: duplicates, and the study is not predicted twice.
    assert _store(node, datasets[:1]) == [0]
    time.sleep(1.0)
    assert len(pacs.of_study(study_uid)) == 5
    done = [e for e in node.store.events() if e["event"] == "done"]
    assert len({e["job_id"] for e in done}) == len(done)


def _refused(node: DicomNode, ds: pydicom.Dataset) -> tuple[int, str]:
    assoc = _assoc(node, [str(ds.SOPClassUID)])
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def test_refusals_have_their_statuses(node: DicomNode, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="breastscreen.serve")
    files = _study(tmp_path / "study", seed=12)
    base = pydicom.dcmread(files[0])

    ct = copy.deepcopy(base)
    ct.Modality = "CT"
    assert _refused(node, ct)[0] == 0xC001

    truncated = copy.deepcopy(base)
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 3]
    assert _refused(node, truncated)[0] == 0xC002

    huge = copy.deepcopy(base)
    huge.Rows, huge.Columns = 2000, 2000  # 4 MP claimed, above the node's --max-pixels 500 000
    assert _refused(node, huge)[0] == 0xA700

    no_side = copy.deepcopy(base)
    for kw in ("ImageLaterality", "Laterality", "PatientOrientation", "SeriesDescription", "ProtocolName",
               "ImageComments"):
        if kw in no_side:
            delattr(no_side, kw)
    no_side.PatientID = "P1"
    assert _refused(node, no_side)[0] == 0xC003

    # A CT Image Storage instance cannot even be offered: its presentation context is rejected.
    assoc = _assoc(node, [CT_CLASS])
    try:
        assert not assoc.accepted_contexts
    finally:
        assoc.release()
    # Unknown calling AE title: association rejected (calling AE title not recognised) and logged.
    bad = _assoc(node, [MG_FOR_PRESENTATION], ae_title="STRANGER")
    assert bad.is_rejected
    assert any("STRANGER" in r.getMessage() and "--allow" in r.getMessage() for r in caplog.records)
    assert sum("refused: status 0x" in r.getMessage() for r in caplog.records) == 4
    # Nothing refused was stored.
    stored = list((node.data_dir / "dicom" / "studies").glob(f"{safe_uid_name(str(base.StudyInstanceUID))}/*"))
    assert stored == []


def test_hostile_uids_stay_inside_the_data_dir(node: DicomNode, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_study(tmp_path / "study", seed=13)[0])
    ds.StudyInstanceUID = "../../../../escaped"
    ds.SOPInstanceUID = "../../sop"
    assert _refused(node, ds)[0] == 0x0000
    assert not (node.data_dir.parent / "escaped").exists()
    stored = [p for p in node.data_dir.rglob("*") if p.is_file() and p.parent.name == safe_uid_name(ds.StudyInstanceUID)]
    assert len(stored) == 1 and stored[0].name.startswith("h-")


def test_associations_are_limited(node: DicomNode) -> None:
    open_ = [_assoc(node, [MG_FOR_PRESENTATION]) for _ in range(2)]
    try:
        assert all(a.is_established for a in open_)
        third = _assoc(node, [MG_FOR_PRESENTATION])
        assert third.is_rejected
    finally:
        for a in open_:
            a.release()


def test_ultrasound_study_without_laterality_gets_its_probabilities_in_the_sr(tmp_path: Path) -> None:
    """US images seldom carry ImageLaterality: their bag is breast U, reported at "Breast structure".

    Before, such a study failed with "the prediction holds no per-breast probability".
    """
    import numpy as np
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from breastscreen import Predictor
    from breastscreen.data.build import build_manifest
    from breastscreen.serve.dicom_node import predict_study
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from breastscreen.serve.runner import LoadedModels

    folder = tmp_path / "study"
    folder.mkdir()
    rng, study, series = np.random.default_rng(0), generate_uid(), generate_uid()
    for k in range(2):  # two 8-bit US images of one study, no ImageLaterality
        img = np.zeros((120, 160), np.uint8)
        img[10:110, 20:140] = rng.integers(30, 200, (100, 120))
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset(str(folder / f"us{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.BodyPartExamined, ds.PatientID = "US", "BREAST", "p1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = img.tobytes()
        ds.save_as(str(folder / f"us{k}.dcm"), enforce_file_format=True)
    predictor = Predictor.load("us-busbra-mil")
    out = tmp_path / "out"
    out.mkdir()
    doc = predict_study(LoadedModels(predictor=predictor, refs=["us-busbra-mil"]), folder, out,
                        node_name="TEST", device_uid=generate_uid())
    (exam,) = build_manifest(folder, group_by="study").exams
    bag = predictor.predict_exam(exam).details["breasts"]["U"]
    assert doc["values"]["unknown_malignant"] == pytest.approx(bag["malignant"], abs=1e-7)
    assert doc["values"]["left_malignant"] is None and doc["values"]["right_malignant"] is None
    probs = _probabilities(pydicom.dcmread(out / "sr.dcm"))
    assert probs[("Breast structure", codes.DCM.ProbabilityOfCancer.value)] == pytest.approx(bag["malignant"], abs=1e-6)
    assert not any(site in ("Left breast", "Right breast") for site, _ in probs)
