"""``breastscreen models list|info|convert`` (registered by ``breastscreen.cli``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models_app = typer.Typer(
    help="Model zoo: registered architectures, bundled models and checkpoint metadata.",
    no_args_is_help=True,
)


def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """List registered architectures (trainable parameters, default input size) and bundled models."""
    from breastscreen.models.hub import list_bundled
    from breastscreen.models.registry import list_models

    infos = list_models()
    bundled = list_bundled()
    if as_json:
        typer.echo(json.dumps({
            "architectures": [i.__dict__ for i in infos],
            "bundled": [{"name": b.name, "path": str(b.path), "summary": b.summary, "architecture": b.architecture}
                        for b in bundled],
        }, indent=2))
        return
    rows = [(i.name, f"{i.params:,}", i.input_size, i.task, i.description) for i in infos]
    head = ("NAME", "PARAMETERS", "INPUT SIZE", "TASK", "DESCRIPTION")
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(4)]
    typer.echo("Registered architectures (trainable parameters):")
    for r in [head] + rows:
        typer.echo("  " + "  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]),
                                      r[3].ljust(widths[3]), r[4]]).rstrip())
    typer.echo("")
    if not bundled:
        typer.echo("Bundled models: none yet (use a checkpoint path with --model).")
        return
    typer.echo("Bundled models (use the name wherever a --model path is accepted):")
    for b in bundled:
        typer.echo(f"  {b.name}  [{b.architecture or '?'}]  {b.summary}")


def info_command(
    ref: str = typer.Argument(..., metavar="NAME_OR_PATH", help="Bundled model name, checkpoint file or architecture name."),
) -> None:
    """Show a checkpoint's metadata (model name, config, training data, metrics) or a model card."""
    from breastscreen.errors import CheckpointError
    from breastscreen.models.checkpoint import file_sha256, read_header
    from breastscreen.models.hub import list_bundled, read_model_card, resolve_model_ref
    from breastscreen.models.registry import count_model_parameters, get_entry, model_names

    if ref in model_names() and not Path(ref).exists() and ref not in {b.name for b in list_bundled()}:
        entry = get_entry(ref)
        typer.echo(f"architecture: {ref}\ndescription: {entry.description}\ninput size: {entry.input_size}\n"
                   f"trainable parameters: {count_model_parameters(ref):,}\n"
                   f"default config: {json.dumps(entry.default_config.__dict__, default=list)}")
        return
    path = resolve_model_ref(ref)
    header = read_header(path)
    typer.echo(f"file: {path}\nsha256: {file_sha256(path)}")
    if header is None:
        raise CheckpointError(f"{path} has no breastscreen header (a plain state dict); nothing more to show")
    typer.echo(f"model: {header.get('model_name')}\npackage version: {header.get('package_version')}")
    typer.echo("config: " + json.dumps(header.get("config", {}), sort_keys=True))
    if header.get("spec") is not None:
        typer.echo("spec: " + json.dumps(header["spec"], sort_keys=True))
    else:
        typer.echo("spec: (none stored: migrated from the metadata when loaded; `breastscreen models convert` stores one)")
    typer.echo("metadata:")
    for key, value in sorted(header.get("metadata", {}).items()):
        typer.echo(f"  {key}: {json.dumps(value)}")
    if ref in {b.name for b in list_bundled()}:
        card = read_model_card(ref)
        if card:
            typer.echo("\nmodel card:\n" + card)


def convert_command(
    src: Path = typer.Argument(..., help="Checkpoint to convert: a breastscreen checkpoint, or a plain state dict (.pt/.pth/.safetensors)."),
    out: Path = typer.Argument(..., help="New .safetensors checkpoint to write (must not exist)."),
    model: str = typer.Option(None, "--model", help="Architecture name, needed for a plain state dict (see `models list`)."),
    config: list[str] = typer.Option([], "--config", help="Architecture option KEY=VALUE (e.g. width=32), repeatable."),
    scheme: str = typer.Option(None, "--scheme", help="Rename keys from another implementation (e.g. nyu)."),
    spec: list[str] = typer.Option([], "--spec", help="Spec field KEY=VALUE (e.g. scale=0.125, channels=image), repeatable."),
) -> None:
    """Write a checkpoint that carries its model spec (preprocessing, input builder, outputs).

    Reads SRC (an older breastscreen checkpoint, or someone else's weights with --model and
    --scheme), takes the spec its metadata implies, applies --spec overrides, validates it and
    writes OUT. Weights are loaded with strict key matching and never unpickled.
    """
    import yaml

    from breastscreen.errors import BreastscreenError
    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint
    from breastscreen.specs import legacy_spec, spec_from_dict

    if out.exists():
        raise BreastscreenError(f"{out} already exists; choose another output path")

    def pairs(items: list[str], what: str) -> dict:
        parsed = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise BreastscreenError(f"{what} must be KEY=VALUE, got {item!r}")
            parsed[key.strip()] = yaml.safe_load(value)
        return parsed

    ck = load_checkpoint(str(src), model_name=model, config=pairs(config, "--config") or None, scheme=scheme)
    base = ck.spec if ck.header.get("spec") else legacy_spec(ck.name, ck.config, ck.metadata, str(src))
    fields = base.to_dict()
    for key, value in pairs(spec, "--spec").items():
        if key == "channels" and isinstance(value, str):
            value = [c.strip() for c in value.split(",")]
        fields[key] = value
    new = spec_from_dict(fields, f"{src}: --spec")
    save_checkpoint(ck.model, out, {**ck.metadata, "converted_from": str(src)}, spec=new)
    typer.echo(f"{out}: {ck.name} with spec {json.dumps(new.to_dict(), sort_keys=True)}")


models_app.command("list")(list_command)
models_app.command("info")(info_command)
models_app.command("convert")(convert_command)


def register(app: typer.Typer) -> None:
    """Add ``breastscreen models ...`` to ``app``."""
    app.add_typer(models_app, name="models")
