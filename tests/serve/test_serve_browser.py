"""The web viewer in a real browser: Debian's chromium driven by Playwright for Python.

Playwright cannot download browsers here, so the test launches ``/usr/bin/chromium`` (``apt-get
install chromium``; ``.ci/run`` installs it) and skips, saying why, where it is absent. The page
is served by uvicorn on 127.0.0.1 from a thread of the test process.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from serve_helpers import config, free_port, image_files, live_server, new_key

CHROMIUM = Path(os.environ.get("BREASTSCREEN_CHROMIUM", "/usr/bin/chromium"))
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "viewer.png"
FOUR = ("left_benign", "left_malignant", "right_benign", "right_malignant")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A fresh page of headless chromium; console errors and outside requests are collected on it.

    Without a browser the test skips on a developer machine but fails in CI (``.ci/run`` installs
    chromium, so a missing one there is a broken CI setup, not a reason to skip)."""
    if not CHROMIUM.is_file():
        message = f"no browser at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.problems = []
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("request", lambda r: page.problems.append("outside request " + r.url)
                if not r.url.startswith(("http://127.0.0.1", "blob:", "data:")) else None)
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            browser.close()


def _until(page: Any, script: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression in the page (``wait_for_function`` evaluates strings, which the
    viewer's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({script})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"page never satisfied: {script}")
        page.wait_for_timeout(50)


def _use_key(page: Any, key: str, expect: str = "demo") -> None:
    page.fill("#api-key", key)
    page.click("#save-key")
    _until(page, f"document.getElementById('model-name').textContent.includes({expect!r})")


def test_viewer_upload_result_overlay_and_screenshot(tmp_path: Path, heatmap_models: Any, mammo_folder: Path,
                                                     browser_page: Any) -> None:
    from breastscreen.serve.app import create_app

    page = browser_page
    data = tmp_path / "data"
    headers = new_key(data, "reader")
    app = create_app(config(data, "demo-breast-heatmaps"), models=heatmap_models)
    with live_server(app, free_port()) as base:
        page.goto(base + "/")
        assert "not for clinical use" in page.inner_text("[data-testid=notice]")
        _use_key(page, headers["Authorization"].split(" ", 1)[1])
        assert "demo-breast-heatmaps" in page.inner_text("[data-testid=model-name]")

        page.set_input_files("#file-input", [str(p) for p in image_files(mammo_folder)])
        page.wait_for_selector("[data-testid=job-status].done")
        assert not page.locator("#us").is_visible()
        job_id = page.inner_text("[data-testid=job-id]")
        _until(page, "document.querySelectorAll('#hanging img.base').length === 4")
        _until(page, "[...document.querySelectorAll('#hanging img')].every(i => i.complete && i.naturalWidth > 0)")

        api = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        expected = api["exams"][0]["predictions"]
        for k in FOUR:
            cell = page.locator(f"[data-testid=prob-{k}]")
            assert cell.inner_text() == f"{expected[k]:.3f}"
            assert float(cell.get_attribute("data-value")) == expected[k]

        # standard hanging: R-CC L-CC on top, R-MLO L-MLO below, right views on the viewer's left
        boxes = {v: page.locator(f"#hanging .view[data-view={v}]").bounding_box() for v in
                 ("R-CC", "L-CC", "R-MLO", "L-MLO")}
        assert boxes["R-CC"]["x"] < boxes["L-CC"]["x"] and boxes["R-CC"]["y"] == boxes["L-CC"]["y"]
        assert boxes["R-MLO"]["y"] > boxes["R-CC"]["y"] and boxes["R-MLO"]["x"] == boxes["R-CC"]["x"]

        malignant = page.locator("#hanging img.overlay[data-map=malignant]")
        benign = page.locator("#hanging img.overlay[data-map=benign]")
        assert malignant.count() == 4 and benign.count() == 4
        assert all(malignant.nth(i).is_visible() for i in range(4)) and not benign.first.is_visible()
        page.check("[data-testid=overlay-benign]")
        assert all(benign.nth(i).is_visible() for i in range(4)) and not malignant.first.is_visible()
        page.fill("[data-testid=opacity]", "80")
        assert benign.first.evaluate("e => getComputedStyle(e).opacity") == "0.8"
        page.check("[data-testid=overlay-none]")
        assert not benign.first.is_visible() and not malignant.first.is_visible()
        page.check("[data-testid=overlay-malignant]")

        layer = page.locator("#hanging .view[data-view=L-CC] .layer")
        view_box = boxes["L-CC"]
        page.mouse.move(view_box["x"] + view_box["width"] / 2, view_box["y"] + view_box["height"] / 2)
        page.mouse.wheel(0, -400)
        assert "scale(" in (layer.get_attribute("style") or "") and "scale(1)" not in layer.get_attribute("style")
        page.dblclick("#hanging .view[data-view=L-CC]")
        assert "scale(1)" in layer.get_attribute("style")

        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("BREASTSCREEN_UPDATE_SCREENSHOT") == "1":
            # The README's picture is refreshed on request only, so a test run never edits tracked files.
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, README_SCREENSHOT)

        # a reload with the job in the address opens it again from the job list
        page.goto(f"{base}/#job={job_id}")
        page.wait_for_selector("[data-testid=job-status].done")
        page.wait_for_selector("[data-testid=job-item]")
        assert page.locator("[data-testid=prob-left_malignant]").inner_text() == f"{expected['left_malignant']:.3f}"
    assert page.problems == []


def test_viewer_shows_refusals_and_ultrasound_attention(tmp_path: Path, us_models: Any, us_folder: Path,
                                                        mammo_folder: Path, browser_page: Any) -> None:
    from breastscreen.serve.app import create_app

    page = browser_page
    data = tmp_path / "data"
    headers = new_key(data, "reader")
    app = create_app(config(data, "us-busbra-mil"), models=us_models)
    with live_server(app, free_port()) as base:
        page.goto(base + "/")
        page.fill("#api-key", "bsk_00000000_" + "x" * 43)
        page.click("#save-key")
        _until(page, "document.getElementById('message').textContent.includes('401')")
        _use_key(page, headers["Authorization"].split(" ", 1)[1], "us-busbra-mil")

        page.set_input_files("#file-input", [str(image_files(mammo_folder)[0])])
        _until(page, "document.getElementById('message').textContent.includes('422')")
        assert "ultrasound" in page.inner_text("#message")

        images = image_files(us_folder)
        page.set_input_files("#file-input", [str(p) for p in images])
        page.wait_for_selector("[data-testid=job-status].done")
        _until(page, f"document.querySelectorAll('#us img.base').length === {len(images)}")
        shown = [float(v) for v in page.eval_on_selector_all(
            "#us .breast[data-side=R] [data-testid=attention]", "els => els.map(e => e.dataset.value)")]
        job_id = page.inner_text("[data-testid=job-id]")
        api = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        assert shown == [im["attention"] for im in api["exams"][0]["breasts"]["R"]["images"]]
        assert shown == sorted(shown, reverse=True)
        assert page.locator("#us img.overlay[data-map=malignant]").first.is_visible()
        assert not page.locator("#hanging").is_visible()
        for k in FOUR:
            assert page.inner_text(f"[data-testid=prob-{k}]") == f"{api['exams'][0]['predictions'][k]:.3f}"
        page.screenshot(path=str(tmp_path / "viewer-us.png"), full_page=True)
    # the refused key and upload are expected (401, 422); nothing else may fail
    unexpected = [p for p in page.problems if not p.startswith(("401 ", "422 ")) and "status of 401" not in p
                  and "status of 422" not in p]
    assert unexpected == []
