"""``breastscreen dicom-node`` (registered by ``breastscreen.cli``)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer


def dicom_node_command(
    model: List[str] = typer.Option(..., "--model", "-m",
                                    help="Checkpoint file, bundled model name or ensemble .json; repeat to average."),
    ae_title: str = typer.Option("BSCREEN", "--ae-title", help="This node's AE title (what the PACS calls)."),
    port: int = typer.Option(11112, "--port", "-p", help="TCP port to listen on (104 needs root; 11112 is usual)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on; 0.0.0.0 to receive from a PACS on another machine."),
    destination: Optional[str] = typer.Option(
        None, "--destination", help="Where results go, AE@HOST:PORT (e.g. PACS@10.0.0.5:104); none: kept on disk."),
    data_dir: Path = typer.Option(Path("breastscreen-dicom-data"), "--data-dir", "-d",
                                  help="Received studies, job database and results."),
    allow: List[str] = typer.Option([], "--allow",
                                    help="Calling AE title allowed to connect (repeat); default: any."),
    complete_after: float = typer.Option(
        60.0, "--complete-after", help="Seconds without a new instance after which a study counts as complete "
                                       "(a study with the four standard views is complete at once)."),
    patch_model: Optional[str] = typer.Option(None, "--patch-model",
                                              help="Patch classifier for image+heatmaps models (default: the model's own)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Studies predicted at the same time."),
    max_associations: int = typer.Option(8, "--max-associations", help="Concurrent associations; more are rejected."),
    max_instance_mb: float = typer.Option(512.0, "--max-instance-mb", help="Largest instance accepted, MiB."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Most pixels per instance (all frames)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    tta: int = typer.Option(1, "--tta", help="Test-time augmentations per view (1 = none), as in `predict`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test-time augmentations."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run a DICOM node: receive studies (C-STORE), predict them, send back an SR and heatmap overlays.

    Answers C-ECHO and stores digital mammography (for presentation / processing), DX, CR and
    ultrasound images in --data-dir, grouped by study. A study is predicted once, when its four
    standard views are there or after --complete-after quiet seconds; the results (a
    Comprehensive SR with per-breast probabilities and one Secondary Capture overlay per view)
    are sent to --destination by C-STORE and kept on disk. Unfinished studies are finished after
    a restart. Logs carry job ids and hashed UIDs, never patient data.
    Research software: not for clinical use.
    """
    from breastscreen.errors import BreastscreenError
    from breastscreen.serve.cli import _check_model_refs, check_log_level, setup_logging
    from breastscreen.serve.dicom_node import DicomNode, NodeConfig

    level = log_level.upper()
    check_log_level(level, log_level)
    if max_instance_mb <= 0:
        raise typer.BadParameter(f"must be > 0, got {max_instance_mb}", param_hint="--max-instance-mb")
    config = NodeConfig(
        models=tuple(model), patch_model=patch_model, ae_title=ae_title, host=host, port=port,
        destination=destination, data_dir=data_dir, allow=tuple(allow), complete_after=complete_after,
        workers=workers, max_associations=max_associations, max_instance_bytes=int(max_instance_mb * 1024**2),
        max_pixels=max_pixels, device=device, tta=tta, seed=seed,
    )
    _check_model_refs(list(model) + ([patch_model] if patch_model else []))
    setup_logging(level)
    # pynetdicom's INFO/DEBUG output can dump data set contents (patient data): warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: DICOM has no encryption here; keep the node on a protected "
                    "network segment or behind a TLS tunnel", err=True, fg=typer.colors.YELLOW)
    node = DicomNode(config)
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        node.start()
    except OSError as exc:
        raise BreastscreenError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    typer.echo(f"breastscreen dicom-node: AE {node.ae_title} on {host}:{node.port}, data {data_dir} "
               "(not for clinical use)", err=True)
    try:
        stop.wait()
    finally:
        node.stop()


def register(app: typer.Typer) -> None:
    """Add ``dicom-node`` to ``app``."""
    app.command("dicom-node")(dicom_node_command)
