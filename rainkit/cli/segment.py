"""`rainkit segment`: semantic label maps with ESPNet (Cityscapes classes), the maps
`rainkit train tpsence --seg-clear/--seg-target` reads."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import SHARD_HELP, app, console


@app.command("segment")
def segment_command(
    inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: one <name>.png label map per image "
                                "(8-bit class ids; sub-folders of folder inputs are kept)."),
    weights: str = typer.Option("espnet.cityscapes", "--weights", "-w", help="ESPNet weights: registered name or a "
                                "checkpoint path (resolved offline; `rainkit weights fetch espnet.cityscapes`)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    width: Optional[int] = typer.Option(None, "--width", min=8, help="Segment at this width (labels are resized back "
                                        "to the image); default: the image's own resolution."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write colour overlays into OUTPUT/overlay/."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo existing label maps (default: skip them, so a batch resumes)."),
    shard: Optional[str] = typer.Option(None, "--shard", help=SHARD_HELP),
) -> int:
    """Segment images with ESPNet: label maps (Cityscapes train ids, 19 = unlabelled) and optional colour overlays."""
    from rich.markup import escape

    from rainkit.cli.progress import BatchProgress, print_failures
    from rainkit.segment import segment_paths

    if output.exists() and not output.is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder", param_hint="--output")
    with BatchProgress(console, "segment") as progress:
        result = segment_paths(inputs, output, weights=weights, device=device, width=width, overlay=overlay,
                               recursive=recursive, overwrite=overwrite, shard=shard, on_start=progress.on_start,
                               on_progress=progress.on_progress)
    record = result.settings
    console.print(f"{result.count('done')} label maps written, {result.count('skipped')} skipped (already there), "
                  f"{result.count('failed')} failed into {escape(str(output))}{' (+ overlay/)' if overlay else ''} — "
                  f"ESPNet {escape(record['weights'])} (sha256 {record['weights_sha256'][:12]})"
                  f"{', shard ' + record['shard'] if 'shard' in record else ''}; use the folder with "
                  f"`rainkit train tpsence --seg-clear/--seg-target`", highlight=False, soft_wrap=True)
    print_failures(result)
    return 0 if result.ok else 1
