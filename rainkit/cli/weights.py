"""`rainkit weights`: list, verify and fetch registered checkpoints."""

from __future__ import annotations

from typing import List, Optional

import typer

from rainkit.cli.app import app, console

weights_app = typer.Typer(help="List, verify and fetch model weights (offline-first, sha256-checked).", no_args_is_help=True)
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
    console.print("searched: " + ", ".join(str(d) for d in search_dirs()), highlight=False)


@weights_app.command("verify")
def verify_command(names: Optional[List[str]] = typer.Argument(None, help="Names to verify (default: all that are present).")) -> int:
    """Check the sha256 of weights files; exits 1 if any present file does not match."""
    from rainkit.hub.weights import check_weights, get_weights, list_weights

    entries = [get_weights(n) for n in names] if names else list_weights()
    statuses = [check_weights(entry) for entry in entries]
    console.print(_status_table(statuses, "rainkit weights verify"))
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
