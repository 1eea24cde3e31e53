"""`rainkit weights`: list, verify and fetch registered checkpoints; convert a trusted old one."""

from __future__ import annotations

from typing import List, Optional

import typer

from rainkit.cli.app import app, console

weights_app = typer.Typer(help="List, verify, fetch and convert model weights (offline-first, sha256-checked).",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")

_STYLE = {"verified": "green", "missing": "yellow", "bad": "red"}


def _status_table(statuses, title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for column in ("name", "status", "path / where to get it", "sha256", "licence"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        entry = status.entry
        where = str(status.path) if status.path else (entry.url or "no download URL")
        table.add_row(entry.name, f"[{_STYLE[status.state]}]{status.state}[/]", escape(where), entry.sha256[:16] + "…",
                      escape(entry.license))
    return table


@weights_app.command("list")
def list_command() -> None:
    """Show every registered checkpoint and whether it is found and verified here."""
    from rainkit.hub.weights import check_weights, list_weights, search_dirs

    statuses = [check_weights(entry) for entry in list_weights()]
    console.print(_status_table(statuses, "rainkit weights"))
    _print_skipped(statuses)
    console.print("searched: " + ", ".join(str(d) for d in search_dirs()), highlight=False)


def _print_skipped(statuses) -> None:
    for status in statuses:
        if status.state == "verified":
            for line in status.skipped:
                console.print(f"[yellow]skipped:[/yellow] {line}; using {status.path}", highlight=False, soft_wrap=True)


@weights_app.command("verify")
def verify_command(names: Optional[List[str]] = typer.Argument(None, help="Names to verify (default: all that are present).")) -> int:
    """Check the sha256 of weights files; exits 1 if any present file does not match."""
    from rainkit.hub.weights import check_weights, get_weights, list_weights

    entries = [get_weights(n) for n in names] if names else list_weights()
    statuses = [check_weights(entry) for entry in entries]
    console.print(_status_table(statuses, "rainkit weights verify"))
    _print_skipped(statuses)
    bad = [s for s in statuses if s.state == "bad"]
    missing_named = [s for s in statuses if names and s.state == "missing"]
    for status in bad:
        console.print(f"[red]bad:[/red] {status.detail}", highlight=False, soft_wrap=True)
    for status in missing_named:
        console.print(f"[yellow]missing:[/yellow] {status.entry.name}: {status.detail}", highlight=False, soft_wrap=True)
    return 1 if bad or missing_named else 0


@weights_app.command("fetch")
def fetch_command(name: str = typer.Argument(..., help="Registered name, e.g. sapnet.official."),
                  force: bool = typer.Option(False, "--force", help="Download again even if a verified copy exists.")) -> None:
    """Download a registered checkpoint into the user cache (verified before it is kept)."""
    from rainkit.hub.weights import fetch_weights

    path = fetch_weights(name, force=force)
    console.print(f"[green]verified[/green] {name} at {path}", highlight=False)


@weights_app.command("convert")
def convert_command(source: str = typer.Argument(..., help="An old .pth/.pt checkpoint that rainkit refused to unpickle."),
                    target: str = typer.Argument(..., help="Where to write its tensors (.safetensors)."),
                    trust_source: bool = typer.Option(False, "--trust-source",
                                                      help="Required: unpickling runs any code the file carries.")) -> int:
    """Re-save a trusted old checkpoint's tensors as safetensors, which rainkit loads without unpickling."""
    from rainkit.hub.checkpoint import convert_trusted_checkpoint
    from rainkit.hub.weights import sha256_file

    if not trust_source:
        console.print("[red]error:[/red] converting unpickles the file, which runs any code it carries: pass "
                      "--trust-source only for a checkpoint from a source you trust", highlight=False, soft_wrap=True)
        return 2
    path = convert_trusted_checkpoint(source, target)
    console.print(f"[green]converted[/green] {source} to {path} (sha256 {sha256_file(path)})", highlight=False,
                  soft_wrap=True)
    return 0
