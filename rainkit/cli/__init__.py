"""rainkit's command line. Command modules import torch only inside their functions, so
`rainkit --help` stays instant."""

from __future__ import annotations

import sys
import warnings

from rainkit.cli.app import app, console
from rainkit.cli import derain, detect, generate, models, segment, train, weights  # noqa: F401,E402  (register commands)
from rainkit.cli import benchmark  # noqa: F401,E402
from rainkit.cli import export  # noqa: F401,E402


def main(argv: list[str] | None = None) -> int:
    from rich.markup import escape

    from rainkit.cli.app import option_name, say_options
    from rainkit.errors import ParameterError, RainkitError, RainkitWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", RainkitWarning)
            warnings.showwarning = _show_warning
            code = app(args=argv, prog_name="rainkit", standalone_mode=False)
    except RainkitError as exc:
        # Library errors name parameters (ParameterError's, or `name` in backticks); say them as this command's options.
        command = _command(sys.argv[1:] if argv is None else argv)
        text = (f"{option_name(command, exc.parameter)}: {exc.detail}" if isinstance(exc, ParameterError)
                else str(exc))
        console.print(f"[red]error:[/red] {escape(say_options(command, text))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except Exception as exc:  # click usage errors and the like
        kind = _click_kind(exc)
        if kind == "Exit":
            return exc.exit_code
        if kind == "ClickException":
            exc.show()
            return exc.exit_code
        if kind == "Abort":
            return 1
        raise
    return code if isinstance(code, int) else 0


def _command(argv: list[str]) -> str | None:
    """The subcommand named on a command line (the first word that is one)."""
    names = {command.name or command.callback.__name__ for command in app.registered_commands}
    names |= {group.name for group in app.registered_groups}
    return next((word for word in argv if word in names), None)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """rainkit's own warnings as one line each; others keep Python's format."""
    from rich.markup import escape

    from rainkit.errors import RainkitWarning

    if issubclass(category, RainkitWarning):
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _click_kind(exc: BaseException) -> str | None:
    """Which click exception family `exc` belongs to. Recent Typer releases vendor click as
    `typer._click`, so the classes are matched by name along the MRO rather than by identity."""
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0] in ("click", "typer")}
    for kind in ("Exit", "ClickException", "Abort"):
        if kind in names:
            return kind
    return None


def entry() -> None:
    sys.exit(main())
