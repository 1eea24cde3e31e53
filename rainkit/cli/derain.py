"""`rainkit derain`: remove rain from photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import SHARD_HELP, VIDEO_HELP, app, console, emit_text


@app.command("derain")
def derain_command(
    inputs: Optional[List[str]] = typer.Argument(None, help="Image or video files, folders or glob patterns."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output folder (default: beside a single input, as <name>_derained.png)."),
    model: str = typer.Option("sapnet", "--model", "-m", help="Architecture: sapnet or prenet."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Registered weights name (see `rainkit weights list`) or a checkpoint path."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 (CUDA) or bf16."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size in pixels; 0 = whole image; default: automatic from free memory."),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnxruntime (CPU, whole images, fp32; exports the weights to ONNX in rainkit's cache on first use; needs rainkit[export])."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    fmt: str = typer.Option("png", "--format", "-f", help="Output format: png, jpg, webp or tif."),
    quality: Optional[int] = typer.Option(None, "--quality", min=1, max=100, help="JPEG/WebP quality (default 95)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Cap the process's memory, e.g. 3G or 512M: "
                                             "large images are tiled to stay under it (one exact pass over the "
                                             "tiles while its image-sized buffers fit, else two passes, slower). "
                                             "Default: the plan follows free memory."),
    rain: str = typer.Option("auto", "--rain", help="auto (default): the default weights' light- or heavy-rain "
                             "model, chosen per image from how much rain the light one finds; light or heavy forces "
                             "one."),
    shard: Optional[str] = typer.Option(None, "--shard", help=SHARD_HELP),
    codec: str = typer.Option("libx264", "--codec", help=VIDEO_HELP["codec"]),
    crf: int = typer.Option(18, "--crf", min=0, max=51, help=VIDEO_HELP["crf"]),
    frames: Optional[Path] = typer.Option(None, "--frames", help=VIDEO_HELP["frames"]),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist (default: skip them, so a batch resumes)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write a JSON summary to this file ('-' for stdout)."),
    no_sidecar: bool = typer.Option(False, "--no-sidecar", help="Do not write a <output>.json record beside each output."),
    sample: bool = typer.Option(False, "--sample", help="Derain the rainy sample image shipped with rainkit (output: -o or the current folder)."),
) -> int:
    """Remove rain from images and videos with SAPNet or PReNet."""
    from rainkit.cli.progress import BatchProgress
    from rainkit.derain.batch import derain_paths
    from rainkit.video.batch import VideoOptions
    from rainkit.data.images import SAMPLE_RAINY_IMAGE

    inputs = list(inputs or [])
    if sample:
        inputs.append(str(SAMPLE_RAINY_IMAGE))
        output = output or Path.cwd()
    if not inputs:
        raise typer.BadParameter("give image files, folders or globs (or --sample to try the shipped sample)",
                                 param_hint="INPUTS")
    if output is not None and output.exists() and not output.is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder", param_hint="--output")
    if output is None and len(inputs) == 1 and Path(inputs[0]).is_dir():
        raise typer.BadParameter("a folder input needs an output folder", param_hint="--output")

    with BatchProgress(console, "derain") as progress:
        result = derain_paths(inputs, output, model=model, weights=weights, device=device, precision=precision,
                              tile=tile, backend=backend, recursive=recursive, fmt=fmt, quality=quality,
                              overwrite=overwrite, sidecar=not no_sidecar, shard=shard, max_memory=max_memory, rain=rain,
                              video=VideoOptions(codec, crf, frames), on_start=progress.on_start,
                              on_progress=progress.on_progress, on_tile=progress.on_tile, on_frame=progress.on_frame)
    _render(result)
    if json_out:
        emit_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.ok else 1


def _render(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rainkit.cli.progress import print_failures

    table = Table(title="rainkit derain", show_lines=False)
    table.add_column("input", overflow="fold")
    table.add_column("output", overflow="fold")
    table.add_column("status")
    table.add_column("size", justify="right")
    table.add_column("tile", justify="right")
    table.add_column("seconds", justify="right")
    colours = {"done": "green", "skipped": "yellow", "failed": "red"}
    for item in result.items:
        size = f"{item.width}x{item.height}" if item.width else ""
        table.add_row(escape(item.input), escape(item.output or ""), f"[{colours[item.status]}]{item.status}[/]",
                      size, (str(item.tile) if item.tile else "whole") if item.status == "done" else "",
                      f"{item.seconds:.2f}" if item.status == "done" else "")
    console.print(table)
    settings = result.settings
    console.print(
        f"{result.count('done')} done, {result.count('skipped')} skipped (already there; --overwrite redoes them), "
        f"{result.count('failed')} failed in {result.seconds:.1f} s — model {settings.get('model')}, "
        f"weights {escape(str(settings.get('weights')))} (sha256 {str(settings.get('weights_sha256'))[:12]}), "
        f"{settings.get('device')} {settings.get('precision')}", highlight=False)
    if settings.get("backend") == "onnxruntime":
        first = "; exported from the weights on this first use, reused from now on" if settings["onnx_exported"] else ""
        console.print(f"onnxruntime ({settings['provider']}), whole images: ONNX {escape(settings['onnx'])} "
                      f"(sha256 {settings['onnx_sha256'][:12]}{first})", highlight=False, soft_wrap=True)
    print_failures(result)
