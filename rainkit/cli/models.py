"""`rainkit models`: the architectures rainkit can build."""

from __future__ import annotations

from rainkit.cli.app import app, console


@app.command("models")
def models_command() -> None:
    """List registered architectures, their variants, parameter counts and default weights."""
    from rich.table import Table

    from rainkit.hub import create_model, default_weights_for, list_archs, list_weights

    table = Table(title="rainkit models")
    for column in ("name", "task", "parameters", "variants", "weights", "description"):
        table.add_column(column, overflow="fold")
    weights = list_weights()
    for spec in list_archs():
        params = sum(p.numel() for p in create_model(spec.name).parameters())
        default = default_weights_for(spec.name)
        names = ", ".join(w.name + (" (default)" if default and w.name == default.name else "") for w in weights if w.arch == spec.name)
        table.add_row(spec.name, spec.task, f"{params:,}", ", ".join(spec.variants) or "-", names or "-", spec.summary)
    console.print(table)
