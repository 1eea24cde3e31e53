"""`rainkit generate`: add weather (rain, snow, fog, night) to photos."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import app, console


@app.command("generate")
def generate_command(
    paths: List[str] = typer.Argument(..., help="Input files, folders or globs, then the output folder last."),
    method: str = typer.Option("physics", "--method", help="Synthesis method: physics."),
    domain: str = typer.Option("rain", "--domain", "-d", help="rain, snow, fog or night."),
    preset: str = typer.Option("light", "--preset", "-p", help="Rain preset: light, heavy or storm."),
    intensity: Optional[float] = typer.Option(None, "--intensity", help="0..1; for rain 0.5 is the preset as is."),
    seed: int = typer.Option(0, "--seed", help="Run seed; each image's randomness derives from it and the image's name."),
    pairs: bool = typer.Option(False, "--pairs", help="Also write the clean inputs: OUT/rain/ + OUT/norain/ (train/benchmark layout)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    fmt: str = typer.Option("png", "--format", "-f", help="png, jpg, webp or tif."),
    quality: Optional[int] = typer.Option(None, "--quality", min=1, max=100),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo existing outputs (default: skip them)."),
) -> int:
    """Add physically modelled weather to images, reproducibly."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rainkit.synth.batch import GenerateSettings, generate_paths, megapixels_per_second

    if len(paths) < 2:
        raise typer.BadParameter("give at least one input and the output folder", param_hint="PATHS")
    *inputs, output = paths
    if Path(output).exists() and not Path(output).is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder; the output folder comes last", param_hint="PATHS")
    settings = GenerateSettings(method=method, domain=domain, preset=preset, intensity=intensity, seed=seed)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = progress.add_task(f"{domain} ({method})", total=total)

    def on_progress(item, index, total) -> None:
        progress.update(task, completed=index)
        if item.status == "failed":
            progress.console.print(f"[red]failed[/red] {escape(item.error or '')}", highlight=False, soft_wrap=True)

    with progress:
        result = generate_paths(inputs, output, settings, recursive=recursive, pairs=pairs, fmt=fmt, quality=quality,
                                overwrite=overwrite, on_start=on_start, on_progress=on_progress)
    console.print(f"{result.count('done')} done, {result.count('skipped')} skipped, {result.count('failed')} failed "
                  f"into {escape(str(output))} ({megapixels_per_second(result):.1f} MP/s, seed {seed})", highlight=False)
    for item in result.failed:
        console.print(f"[red]failed:[/red] {escape(item.error or item.input)}", highlight=False, soft_wrap=True)
    return 0 if result.ok else 1
