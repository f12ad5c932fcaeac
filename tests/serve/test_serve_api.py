"""The HTTP API end to end (FastAPI test client, real worker threads, the bundled demo models)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from serve_helpers import config, form_files, image_files, new_key, wait_job, wait_ready, zip_bytes

FOUR = ("left_benign", "left_malignant", "right_benign", "right_malignant")


def _predict_cli_equivalent(files: list[Path], model: str, out: Path) -> Any:
    """``breastscreen predict`` (the library call behind it) on a folder holding exactly ``files``."""
    from breastscreen.inference.predict import PredictOptions, predict

    folder = out / "in"
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    run = predict(folder, [model], out / "pred", PredictOptions(tta=1, device="cpu", pictures=False))
    assert run.ok and not run.skipped_files
    return run.predictions


def _submit(client: Any, headers: dict[str, str], files: list[Path], **data: str) -> dict[str, Any]:
    r = client.post("/v1/exams", files=form_files(files), data=data or None, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


# --------------------------------------------------------------------------- health, auth, viewer


def test_readyz_is_503_until_models_are_loaded_and_healthz_always_answers(tmp_path: Path, image_models: Any) -> None:
    from fastapi.testclient import TestClient

    from breastscreen.serve.app import create_app

    release = threading.Event()

    def slow_loader(_cfg: Any) -> Any:
        release.wait(30)
        return image_models

    app = create_app(config(tmp_path / "d"), loader=slow_loader)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        headers = new_key(tmp_path / "d", "alice")
        assert client.post("/v1/exams", files=form_files([]) or None, headers=headers).status_code == 503
        release.set()
        wait_ready(client)
        assert client.get("/readyz").json()["models"] == ["demo-breast-image"]


def test_failed_model_load_is_reported_by_readyz(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from breastscreen.errors import CheckpointError
    from breastscreen.serve.app import create_app

    def broken(_cfg: Any) -> Any:
        raise CheckpointError("checkpoint file not found: nowhere.safetensors")

    with TestClient(create_app(config(tmp_path / "d"), loader=broken)) as client:
        for _ in range(100):
            body = client.get("/readyz").json()
            if body["status"] != "loading":
                break
            threading.Event().wait(0.02)
        assert body["status"] == "failed" and "nowhere.safetensors" in body["detail"]


def test_every_v1_route_needs_a_valid_key_401(service: Any, mammo_folder: Path) -> None:
    client = service()
    good = new_key(client.data_dir, "alice")
    from breastscreen.serve.keys import revoke_key
    from breastscreen.serve.store import JobStore

    revoked = new_key(client.data_dir, "old")
    revoke_key(JobStore(client.data_dir), "old")
    bad_headers = [{}, {"Authorization": "Bearer nope"}, {"Authorization": good["Authorization"] + "x"},
                   {"Authorization": good["Authorization"].replace("Bearer", "Basic")}, revoked]
    routes = [("get", "/v1/models"), ("get", "/v1/jobs"), ("get", "/v1/jobs/abc"), ("delete", "/v1/jobs/abc"),
              ("get", "/v1/jobs/abc/files/views/x.png"), ("post", "/v1/exams")]
    for headers in bad_headers:
        for method, path in routes:
            r = client.request(method.upper(), path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers=good).status_code == 200


def test_viewer_and_health_need_no_key_and_load_nothing_external(service: Any) -> None:
    client = service()
    page = client.get("/")
    assert page.status_code == 200 and "breastscreen" in page.text and "not for clinical use" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    for asset in ("/static/viewer.js", "/static/viewer.css"):
        r = client.get(asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_models_endpoint_describes_models_and_the_notice(service: Any) -> None:
    client = service()
    info = client.get("/v1/models", headers=new_key(client.data_dir, "alice")).json()
    (model,) = info["models"]
    assert model["ref"] == "demo-breast-image" and model["bundled"] and len(model["version"]) == 12
    assert model["sha256"].startswith(model["version"]) and "not for clinical use" in model["model_card"].lower()
    assert info["modality"] == "MG" and info["columns"] == list(FOUR)
    assert "not for clinical use" in info["notice"].lower() and info["limits"]["max_files"] == 200


# --------------------------------------------------------------------------- jobs


def test_job_result_equals_breastscreen_predict(service: Any, mammo_folder: Path, tmp_path: Path) -> None:
    client = service()
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)
    created = _submit(client, headers, files)
    assert created["exam_ids"] == ["syn11-0001"] and created["links"]["self"] == f"/v1/jobs/{created['id']}"
    seen: list[dict[str, Any]] = []
    job = wait_job(client, created["id"], headers, seen=seen)
    assert job["status"] == "done", job
    (exam,) = job["exams"]
    (expected,) = _predict_cli_equivalent(files, "demo-breast-image", tmp_path)
    assert exam["exam_id"] == expected.exam_id
    for k in FOUR:
        assert abs(exam["predictions"][k] - expected.values[k]) <= 1e-6
    for branch, probs in expected.details["branch_probs"].items():
        for k, v in probs.items():
            assert abs(exam["details"]["branch_probs"][branch][k] - v) <= 1e-6
    assert exam["details"]["views_used"] == expected.details["views_used"]
    # progress: stages in order, fractions never going back
    stages = [d["progress"]["stage"] for d in seen]
    fractions = [d["progress"]["fraction"] for d in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert job["progress"] == {"stage": "done", "stage_fraction": 1.0, "fraction": 1.0}
    assert set(stages) <= {"queued", "starting", "preprocess", "predict", "pictures", "done"}
    # the four views with viewer pictures in original geometry; an image-only model has no overlays
    assert sorted(exam["views"]) == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    for view, v in exam["views"].items():
        assert v["geometry"] == "original" and v["overlays"] == {} and v["source"] == f"syn11-0001_{view}.png"
        png = client.get(v["image"], headers=headers)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (v["width"], v["height"])
    fig = client.get(exam["figures"][0], headers=headers)
    assert fig.status_code == 200 and fig.content[:4] == b"\x89PNG"
    assert "not for clinical use" in job["notice"].lower() and job["models"][0]["ref"] == "demo-breast-image"
    assert str(client.data_dir) not in json.dumps(job)


def test_heatmap_model_job_links_overlays_and_heatmap_arrays(service: Any, heatmap_models: Any,
                                                             mammo_folder: Path, tmp_path: Path) -> None:
    client = service(models=heatmap_models)
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)
    job = wait_job(client, _submit(client, headers, files)["id"], headers)
    assert job["status"] == "done", job
    (exam,) = job["exams"]
    (expected,) = _predict_cli_equivalent(files, "demo-breast-heatmaps", tmp_path)
    for k in FOUR:
        assert abs(exam["predictions"][k] - expected.values[k]) <= 1e-6
    stages = {m["role"] for m in job["models"]}
    assert stages == {"breast model", "patch classifier (heatmaps)"}
    for view, v in exam["views"].items():
        assert sorted(v["overlays"]) == ["benign", "malignant"]
        overlay = Image.open(io.BytesIO(client.get(v["overlays"]["malignant"], headers=headers).content))
        assert overlay.mode == "RGBA" and overlay.size == (v["width"], v["height"])
        assert np.asarray(overlay)[..., 3].max() > 0
        npz = client.get(v["heatmaps"], headers=headers)
        with np.load(io.BytesIO(npz.content), allow_pickle=False) as data:
            maps = data["heatmaps"]
        assert maps.ndim == 3 and maps.shape[0] == 2 and 0 <= maps.min() and maps.max() <= 1
        assert v["heatmaps_source"] == "patch classifier"


def test_ultrasound_job_shows_attention_and_saliency(service: Any, us_models: Any, us_folder: Path,
                                                     tmp_path: Path) -> None:
    client = service(models=us_models)
    headers = new_key(client.data_dir, "alice")
    files = image_files(us_folder)
    job = wait_job(client, _submit(client, headers, files)["id"], headers)
    assert job["status"] == "done", job
    (exam,) = job["exams"]
    (expected,) = _predict_cli_equivalent(files, "us-busbra-mil", tmp_path)
    for k in FOUR:
        assert abs(exam["predictions"][k] - expected.values[k]) <= 1e-6
    assert sorted(exam["breasts"]) == ["L", "R"] and exam["views"] == {}
    for side, breast in exam["breasts"].items():
        att = [im["attention"] for im in breast["images"]]
        assert att == sorted(att, reverse=True) and abs(sum(att) - 1) < 1e-4
        assert [im["rank"] for im in breast["images"]] == list(range(1, len(att) + 1))
        expected_att = expected.details["breasts"][side]["attention_malignant"]
        assert sorted(att, reverse=True) == pytest.approx(sorted(expected_att, reverse=True), abs=1e-6)
        for im in breast["images"]:
            assert "malignant" in im["overlays"]
            assert client.get(im["overlays"]["malignant"], headers=headers).status_code == 200
        with np.load(io.BytesIO(client.get(breast["saliency"], headers=headers).content)) as data:
            assert data["saliency"].shape[0] == len(att)


def test_zip_upload_with_mapping_json_gives_the_same_numbers(service: Any, mammo_folder: Path) -> None:
    client = service()
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)
    plain = wait_job(client, _submit(client, headers, files)["id"], headers)
    entries = {f"scans/img{i}.png": f.read_bytes() for i, f in enumerate(files)}
    mapping = {f"img{i}.png": {"view": f.stem.rsplit("_", 1)[1], "exam_id": "study-9"} for i, f in enumerate(files)}
    r = client.post("/v1/exams", files=[("files", ("exam.zip", zip_bytes(entries), "application/zip"))],
                    data={"mapping": json.dumps(mapping)}, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["exam_ids"] == ["study-9"]
    zipped = wait_job(client, r.json()["id"], headers)
    assert zipped["status"] == "done", zipped
    for k in FOUR:
        assert zipped["exams"][0]["predictions"][k] == pytest.approx(plain["exams"][0]["predictions"][k], abs=1e-6)


def test_another_keys_job_is_403(service: Any, mammo_folder: Path) -> None:
    client = service()
    alice, bob = new_key(client.data_dir, "alice"), new_key(client.data_dir, "bob")
    job = wait_job(client, _submit(client, alice, image_files(mammo_folder))["id"], alice)
    image = job["exams"][0]["views"]["L-CC"]["image"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=bob).status_code == 403
    assert client.get(image, headers=bob).status_code == 403
    assert client.delete(f"/v1/jobs/{job['id']}", headers=bob).status_code == 403
    assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
    assert client.get(image, headers=alice).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}/files/../../../breastscreen-serve.sqlite",
                      headers=alice).status_code == 404
    assert client.get("/v1/jobs/0123/files/x.png", headers=alice).status_code == 404


def test_jobs_are_listed_in_pages_and_deleted(service: Any, mammo_folder: Path) -> None:
    client = service(start_workers=False)
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)[:1]
    ids = [_submit(client, headers, files)["id"] for _ in range(3)]
    page1 = client.get("/v1/jobs?limit=2", headers=headers).json()
    page2 = client.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=headers).json()
    assert [j["id"] for j in page1["jobs"] + page2["jobs"]] == ids[::-1] and page2["next_cursor"] is None
    assert page1["jobs"][0]["status"] == "queued"
    status = client.get(f"/v1/jobs/{ids[0]}", headers=headers).json()
    assert status["queue_position"] == 1 and status["progress"]["stage"] == "queued"
    assert client.get(f"/v1/jobs/{ids[0]}/files/x.png", headers=headers).status_code == 409
    assert client.get("/v1/jobs?cursor=abc", headers=headers).status_code == 422
    assert client.delete(f"/v1/jobs/{ids[1]}", headers=headers).status_code == 204
    assert client.get(f"/v1/jobs/{ids[1]}", headers=headers).status_code == 404
    assert not (client.data_dir / "jobs" / ids[1]).exists()
    assert (client.data_dir / "jobs" / ids[0] / "upload").is_dir()


# --------------------------------------------------------------------------- refusals


def test_upload_limits_are_413(service: Any, mammo_folder: Path) -> None:
    files = image_files(mammo_folder)
    client = service(max_upload_bytes=50_000, max_files=3, max_pixels=50_000)
    headers = new_key(client.data_dir, "alice")
    too_big = client.post("/v1/exams", files=form_files([files[0]] * 1, ["a_L-CC.png"]), headers=headers)
    assert files[0].stat().st_size > 50_000 and too_big.status_code == 413
    tiny = Image.new("L", (10, 10))
    buf = io.BytesIO()
    tiny.save(buf, format="PNG")
    four = [("files", (f"e_{v}.png", buf.getvalue(), "image/png")) for v in ("L-CC", "R-CC", "L-MLO", "R-MLO")]
    too_many = client.post("/v1/exams", files=four, headers=headers)
    assert too_many.status_code == 413 and "more than 3 files" in too_many.json()["detail"]
    big = io.BytesIO()
    Image.new("L", (300, 200)).save(big, format="PNG")
    too_many_pixels = client.post("/v1/exams", files=[("files", ("e_L-CC.png", big.getvalue(), "image/png"))],
                                  headers=headers)
    assert too_many_pixels.status_code == 413 and "e_L-CC.png" in too_many_pixels.json()["detail"]
    bomb = zip_bytes({f"e_{v}.png": b"\0" * 20_000_000 for v in ("L-CC",)})
    zipped = service(max_unzipped_bytes=1_000_000)
    zheaders = new_key(zipped.data_dir, "alice")
    r = zipped.post("/v1/exams", files=[("files", ("exam.zip", bomb, "application/zip"))], headers=zheaders)
    assert r.status_code == 413 and "unpacks to" in r.json()["detail"]
    assert not any((client.data_dir / "jobs").iterdir()) and not any((zipped.data_dir / "jobs").iterdir())


def test_unusable_uploads_are_422_naming_the_file(service: Any, mammo_folder: Path, us_folder: Path) -> None:
    client = service()
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)

    def refused(parts: list[Any], **data: str) -> str:
        r = client.post("/v1/exams", files=parts, data=data or None, headers=headers)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert str(client.data_dir) not in detail
        return detail

    text = [("files", ("notes.txt", b"hello", "text/plain"))] + form_files(files)
    assert "notes.txt" in refused(text) and "not an image" in refused(text)
    broken = [("files", ("syn11-0001_L-CC.png", b"\x89PNG\r\n\x1a\ngarbage", "image/png"))] + form_files(files[1:])
    assert "syn11-0001_L-CC.png" in refused(broken)
    us = image_files(us_folder)[:1]
    detail = refused(form_files(us))
    assert us[0].name in detail and "ultrasound" in detail and "demo-breast-image" in detail
    assert "no file in the upload" in refused([("mapping", (None, b'{"a.png": "L-CC"}'))])
    escape = zip_bytes({"../../evil_L-CC.png": files[0].read_bytes()})
    assert "outside the upload folder" in refused([("files", ("exam.zip", escape, "application/zip"))])
    with_zip = [("files", ("exam.zip", zip_bytes({"a.png": b"1"}), "application/zip"))] + form_files(files[:1])
    assert "one zip on its own" in refused(with_zip)
    assert "missing.png" in refused(form_files(files), mapping='{"missing.png": "L-CC"}')
    assert "cannot tell exam and view" in refused(form_files(files[:1], ["scan.png"]))
    r = client.post("/v1/exams", content=b"just bytes", headers={**headers, "Content-Type": "image/png"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]
    assert not any((client.data_dir / "jobs").iterdir())


def test_full_queue_is_429_with_retry_after(service: Any, mammo_folder: Path) -> None:
    client = service(start_workers=False, max_queued=2)
    headers = new_key(client.data_dir, "alice")
    files = image_files(mammo_folder)
    _submit(client, headers, files)
    _submit(client, headers, files)
    r = client.post("/v1/exams", files=form_files(files), headers=headers)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert len(client.get("/v1/jobs", headers=headers).json()["jobs"]) == 2


def test_logs_hold_job_ids_and_hashes_but_no_patient_data(service: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    folder = tmp_path / "dicom"
    generate_mammo_cohort(folder, 1, seed=4, scale=0.125, fmt="dicom", id_prefix="DOEJANE")
    files = sorted(folder.glob("*.dcm"))
    import pydicom

    for f in files:  # a realistic header: name, id and birth date of a (made-up) patient
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-4711", "19600101"
        ds.save_as(f)
    client = service()
    headers = new_key(client.data_dir, "alice")
    caplog.set_level(logging.INFO, logger="breastscreen.serve")
    job = wait_job(client, _submit(client, headers, files)["id"], headers)
    assert job["status"] == "done", job
    bad = client.post("/v1/exams", files=[("files", ("DOEJANE_secret.txt", b"x", "text/plain"))], headers=headers)
    assert bad.status_code == 422 and "DOEJANE_secret.txt" in bad.json()["detail"]
    text = caplog.text
    assert job["id"] in text and "done in" in text
    import hashlib

    assert hashlib.sha256(files[0].read_bytes()).hexdigest()[:16] in text
    for phi in ("DOEJANE", "Doe", "Jane", "MRN-4711", "19600101", job["exams"][0]["exam_id"]):
        assert phi not in text, phi
