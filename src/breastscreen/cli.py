"""The ``breastscreen`` command line: one typer app; each stage registers its own thin commands."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import typer

from breastscreen import __version__
from breastscreen.errors import BreastscreenError

app = typer.Typer(
    name="breastscreen",
    help="Deep-learning breast cancer screening: manifests, preprocessing, models, inference, evaluation.\n\n"
    "Research software: bundled models are trained on synthetic images and are NOT for clinical use.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines ``register(app)``; the order here is the order in ``--help``.
_COMMAND_MODULES = (
    "breastscreen.synthetic.cli",
    "breastscreen.data.cli",
    "breastscreen.preprocess.cli",
    "breastscreen.models.cli",
    "breastscreen.inference.cli",
    "breastscreen.training.cli",
    "breastscreen.evaluation.cli",
    "breastscreen.ultrasound.cli",
    "breastscreen.serve.cli",
    "breastscreen.serve.dicom_cli",
    "breastscreen.demo",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root() -> None:
    """breastscreen command line."""


@app.command("version")
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


# Options whose value is the folder (or file) a command writes: the error log goes there.
_OUT_OPTIONS = ("--out", "-o", "--output", "--out-dir", "--run-dir")
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130


def _out_argument(args: Sequence[str]) -> str | None:
    """The value of ``--out``/``-o`` in ``args`` (``None`` when absent)."""
    for i, arg in enumerate(args):
        for opt in _OUT_OPTIONS:
            if arg == opt and i + 1 < len(args):
                return args[i + 1]
            if opt.startswith("--") and arg.startswith(opt + "="):
                return arg.split("=", 1)[1]
    return None


def _one_line(text: str, limit: int = 2000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _command_words(args: Sequence[str]) -> str:
    """The command as typed, shortened for a message (``breastscreen predict DIR --model X ...``)."""
    return _one_line("breastscreen " + " ".join(args), 300)


class _LazyFileHandler(logging.Handler):
    """Logging handler that creates its file (and folder) only when the first record arrives."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(level=logging.WARNING)
        self.path = path
        self.used: Path | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Append the record to the log file (or to a temporary file when the folder is unusable)."""
        text = self.format(record) + "\n"
        for target in self._targets():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "a", encoding="utf-8") as fh:
                    fh.write(text)
                self.used = target
                return
            except OSError:
                continue  # try the next place; the message on stderr still tells the user

    def _targets(self) -> list[Path]:
        if self.used is not None:
            return [self.used]
        fallback = Path(tempfile.gettempdir()) / f"breastscreen-error-{os.getpid()}.log"
        return ([self.path] if self.path is not None else []) + [fallback]


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` and return the exit status; no traceback reaches the user.

    Errors in user input (:class:`~breastscreen.errors.BreastscreenError`) print one line and
    return 2. Anything unexpected prints one line naming the command and the problem and returns
    3; its traceback goes to ``breastscreen-error.log`` in the ``--out`` folder (or beside a file
    ``--out``, else in the temporary folder), whose path the message names. Ctrl-C returns 130.
    """
    from breastscreen.outdir import error_log_path

    args = list(sys.argv[1:] if argv is None else argv)
    handler = _LazyFileHandler(error_log_path(_out_argument(args)))
    log = logging.getLogger("breastscreen")
    log.addHandler(handler)
    try:
        try:
            app(args=args, prog_name="breastscreen", standalone_mode=True)
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                return int(exc.code or 0)
            typer.secho(_one_line(str(exc.code)), err=True, fg=typer.colors.RED)
            return 1
        return 0
    except BreastscreenError as exc:
        typer.secho(f"error: {_one_line(str(exc))}", err=True, fg=typer.colors.RED)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        typer.secho("interrupted; rerun the same command (with --resume where offered) to continue", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: log it, never show a traceback
        what = {RecursionError: "input nested too deeply", MemoryError: "out of memory"}.get(type(exc), "")
        log.error("unexpected error in `%s`", _command_words(args), exc_info=exc)
        where = f"traceback in {handler.used}" if handler.used else "no log file could be written"
        detail = _one_line(f"{type(exc).__name__}: {exc}", 400)
        typer.secho(
            f"error: `{_command_words(args)}` failed unexpectedly ({what + '; ' if what else ''}{detail}); "
            f"{where}. This is a bug or an unhandled kind of input: please report it with the log.",
            err=True, fg=typer.colors.RED,
        )
        return EXIT_INTERNAL_ERROR
    finally:
        log.removeHandler(handler)


def main() -> None:
    """Console-script entry point: :func:`run` on ``sys.argv``, its result as the exit status."""
    sys.exit(run())
