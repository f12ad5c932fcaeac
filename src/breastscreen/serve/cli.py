"""``breastscreen serve`` and ``breastscreen keys add|list|revoke`` (registered by ``breastscreen.cli``)."""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_DATA_DIR = Path("breastscreen-serve-data")

keys_app = typer.Typer(
    help="API keys of `breastscreen serve`: stored hashed in the data directory, shown once when made.",
    no_args_is_help=True,
)

_DATA_DIR_OPTION = typer.Option(DEFAULT_DATA_DIR, "--data-dir", "-d",
                                help="The service's data directory (job database, uploads, results, keys).")


def serve_command(
    model: List[str] = typer.Option(..., "--model", "-m",
                                    help="Checkpoint file, bundled model name or ensemble .json; repeat to average."),
    patch_model: Optional[str] = typer.Option(
        None, "--patch-model", help="Patch classifier for image+heatmaps models (default: the model's own, e.g. demo-patch)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 exposes the service to the network."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    workers: int = typer.Option(1, "--workers", "-j", help="Jobs run at the same time (threads sharing the loaded model)."),
    data_dir: Path = _DATA_DIR_OPTION,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    tta: int = typer.Option(1, "--tta", help="Test-time augmentations per view (1 = none), as in `predict`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test-time augmentations."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Input rows per model call (default: 1 for four-view models on CPU, where it measured fastest; 8 otherwise)."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest upload (request body), MiB."),
    max_unzipped_mb: float = typer.Option(2048.0, "--max-unzipped-mb", help="Largest total size of an uploaded zip's files, MiB."),
    max_files: int = typer.Option(200, "--max-files", help="Most files in one upload (zip entries included)."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Most pixels per image, read from headers."),
    max_queued: int = typer.Option(100, "--max-queued", help="Waiting jobs before uploads get 429 Too Many Requests."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the HTTP service and web viewer: exams in, per-breast probabilities and heatmaps out.

    Open http://HOST:PORT/ for the viewer (drop an exam, see the four views with heatmap
    overlays) and http://HOST:PORT/docs for the API. Every /v1 request needs an API key
    (`breastscreen keys add NAME --data-dir DIR` prints one) sent as `Authorization: Bearer KEY`.
    Jobs, uploads and results live in --data-dir (SQLite in WAL mode); jobs queued or running
    when the service stopped are finished after a restart. Binds to 127.0.0.1 unless --host says
    otherwise. Logs carry job ids and file hashes, never file names or patient data.
    Research software: not for clinical use.
    """
    import uvicorn

    from breastscreen.serve.app import create_app
    from breastscreen.serve.config import ServeConfig

    level = log_level.upper()
    check_log_level(level, log_level)
    config = ServeConfig(
        models=tuple(model), patch_model=patch_model, data_dir=data_dir, host=host, port=port, workers=workers,
        device=device, tta=tta, seed=seed, batch_size=batch_size, max_upload_bytes=int(max_upload_mb * 1024**2),
        max_unzipped_bytes=int(max_unzipped_mb * 1024**2), max_files=max_files, max_pixels=max_pixels,
        max_queued=max_queued,
    )
    if config.workers < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--workers")
    _check_model_refs(list(model) + ([patch_model] if patch_model else []))
    setup_logging(level)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: other machines can reach this service; put it behind TLS "
                    "(a reverse proxy) before sending patient data over a network", err=True, fg=typer.colors.YELLOW)
    app = create_app(config)
    typer.echo(f"breastscreen serve: viewer http://{host}:{port}/  API docs http://{host}:{port}/docs  "
               f"data {data_dir} (not for clinical use)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=True, server_header=False)


def _check_model_refs(refs: list[str]) -> None:
    """Fail before starting when a model reference names no file or bundled model (typos), not after."""
    from breastscreen.inference.ensemble import expand_model_refs
    from breastscreen.models.hub import resolve_model_ref

    for member in expand_model_refs(refs):
        resolve_model_ref(member.ref)


def keys_add(name: str = typer.Argument(..., help="Who or what the key is for (letters, digits, _ . @ -)."),
             data_dir: Path = _DATA_DIR_OPTION) -> None:
    """Make an API key and print it once (only its salted hash is stored)."""
    from breastscreen.serve.keys import add_key
    from breastscreen.serve.store import JobStore

    key = add_key(JobStore(data_dir), name)
    typer.echo(f"API key {name!r} added to {data_dir}. It is shown only now; store it safely:", err=True)
    typer.echo(key)


def keys_list(data_dir: Path = _DATA_DIR_OPTION) -> None:
    """List the keys (names, ids, dates; never the keys themselves)."""
    from breastscreen.serve.keys import list_keys
    from breastscreen.serve.store import DB_NAME, JobStore

    if not (data_dir / DB_NAME).is_file():
        typer.echo(f"no keys: {data_dir} holds no service database yet")
        return
    keys = list_keys(JobStore(data_dir))
    if not keys:
        typer.echo("no keys")
        return

    def when(t: float | None) -> str:
        return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"

    typer.echo(f"{'NAME':<24} {'ID':<10} {'CREATED':<17} STATUS")
    for k in keys:
        status = "active" if k.active else f"revoked {when(k.revoked_at)}"
        typer.echo(f"{k.name:<24} {k.key_id:<10} {when(k.created_at):<17} {status}")


def keys_revoke(name: str = typer.Argument(..., help="Name of the key to revoke."),
                data_dir: Path = _DATA_DIR_OPTION) -> None:
    """Revoke a key: requests with it get 401 from now on (its jobs stay in the store)."""
    from breastscreen.serve.keys import revoke_key
    from breastscreen.serve.store import DB_NAME, JobStore

    from breastscreen.errors import BreastscreenError

    if not (data_dir / DB_NAME).is_file():
        raise BreastscreenError(f"{data_dir}: no service database (no keys to revoke)")
    revoke_key(JobStore(data_dir), name)
    typer.echo(f"revoked key {name!r}")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``keys`` to ``app``."""
    app.command("serve")(serve_command)
    keys_app.command("add")(keys_add)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    app.add_typer(keys_app, name="keys")


def check_log_level(level: str, given: str) -> None:
    """Refuse a ``--log-level`` that is not debug, info, warning or error."""
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"must be debug, info, warning or error, got {given!r}", param_hint="--log-level")


def setup_logging(level: str) -> None:
    """Send the service's and the node's log lines (``breastscreen.serve``) to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("breastscreen.serve")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
