"""The Typer application object shared by every command module (imports nothing heavy)."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from rainkit._version import __version__

app = typer.Typer(
    name="rainkit",
    help="Weather in images: derain photos (SAPNet, PReNet), add rain, snow, fog or night (physics or TPSeNCE), "
         "segment, train, benchmark, and measure what deraining buys a detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()  # stdout, for machine-readable output

SHARD_HELP = ("Process only shard K of N (every Nth input, starting at the Kth), e.g. 2/4, so a folder job spreads "
              "over processes or machines; N shards together write exactly what one run writes. Default: torchrun's "
              "RANK/WORLD_SIZE when set, else everything.")


VIDEO_HELP = {
    "codec": "Video encoder of video outputs (FFmpeg's name): libx264 (default), libx264rgb (with --crf 0: lossless), "
             "mpeg4, ...",
    "crf": "Quality of libx264 video outputs, 0 (lossless) to 51; default 18.",
    "frames": "Write each video as a PNG sequence into FRAMES/<name>/ instead of a video file.",
}

# Library parameters whose command-line option is not simply `--name-with-dashes`, per command.
OPTION_NAMES: dict[str, dict[str, str]] = {
    "detect": {"derained_dir": "--derained", "inputs": "IMAGES", "output": "--output", "weights": "--derain-weights"},
    "derain": {"inputs": "INPUTS", "frames_dir": "--frames"},
    "generate": {"output": "PATHS (the output folder comes last)", "inputs": "PATHS", "frames_dir": "--frames"},
    "export": {"arch": "MODEL"},
    "segment": {"inputs": "INPUTS"},
    "benchmark": {"models": "--model"},
    "train": {"sence=false": "--set sence=false", "patch": "--set patch=N", "val_fraction": "--set val_fraction=F"},
}


def option_name(command: str | None, parameter: str) -> str:
    """The command-line name of a library parameter, for messages (a name already given as an option stays)."""
    if parameter.startswith("-"):
        return parameter
    named = OPTION_NAMES.get(command or "", {}).get(parameter)
    if named is not None:
        return named
    name, _, value = parameter.partition("=")
    return "--" + name.replace("_", "-") + (f" {value}" if value else "")


def say_options(command: str | None, text: str) -> str:
    """A library message with the parameters it names in backticks (`seg_clear`) said as the command's options."""
    import re

    return re.sub(r"`([a-z][a-z0-9_]*(?:=[a-z0-9]+)?)`", lambda m: option_name(command, m.group(1)), text)


def emit_text(destination: str, text: str) -> None:
    """Write a report to a file atomically, or to stdout when the destination is '-'."""
    if destination == "-":
        print(text, end="")
    else:
        from rainkit.io.atomic import atomic_write_text

        atomic_write_text(destination, text)


def _version(value: bool) -> None:
    if value:
        print(f"rainkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More log output (-vv for debug)."),
) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
