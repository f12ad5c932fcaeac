"""Fixtures of the service tests: tiny synthetic exams, models loaded once, a service factory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from serve_helpers import config, wait_ready


def pytest_configure(config: pytest.Config) -> None:
    # Starlette >= 1.x asks for `httpx2` in its test client; the plain httpx client works the same.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One compute thread while these tests run (they share 2 cores with worker threads and other
    jobs), restored afterwards so that the rest of the suite keeps its setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mammo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic four-view exam at scale 0.125 (PNG, ``<exam>_<VIEW>.png`` names)."""
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    folder = tmp_path_factory.mktemp("mammo")
    generate_mammo_cohort(folder, 1, seed=11, scale=0.125)
    return folder


@pytest.fixture(scope="session")
def us_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic ultrasound patient (a few images per breast)."""
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    folder = tmp_path_factory.mktemp("us")
    generate_us_cohort(folder, 1, seed=5, min_images=2, max_images=3, both_breasts=1.0)
    return folder


def _load(model: str) -> Any:
    from breastscreen.serve.runner import load_models

    return load_models(config(Path("unused"), model))


@pytest.fixture(scope="session")
def image_models() -> Any:
    """``demo-breast-image`` loaded once for every test."""
    return _load("demo-breast-image")


@pytest.fixture(scope="session")
def heatmap_models() -> Any:
    """``demo-breast-heatmaps`` with its patch model ``demo-patch``, loaded once."""
    return _load("demo-breast-heatmaps")


@pytest.fixture(scope="session")
def us_models() -> Any:
    """The bundled ultrasound model, loaded once."""
    return _load("us-busbra-mil")


@pytest.fixture
def service(tmp_path: Path, image_models: Any) -> Iterator[Callable[..., Any]]:
    """Factory: ``service(models=..., **settings)`` -> a started test client (closed after the test)."""
    from fastapi.testclient import TestClient

    from breastscreen.serve.app import create_app

    stack = contextlib.ExitStack()
    counter = [0]

    def make(models: Any = None, start_workers: bool = True, data_dir: Path | None = None, **settings: Any) -> Any:
        counter[0] += 1
        loaded = models or image_models
        folder = data_dir or tmp_path / f"data{counter[0]}"
        cfg = config(folder, loaded.refs[0], **settings)
        client = stack.enter_context(TestClient(create_app(cfg, models=loaded, start_workers=start_workers)))
        wait_ready(client)
        client.data_dir = folder
        return client

    with stack:
        yield make
