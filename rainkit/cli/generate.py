"""`rainkit generate`: add weather (rain, snow, fog, night) to photos."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import SHARD_HELP, VIDEO_HELP, app, console


@app.command("generate")
def generate_command(
    paths: List[str] = typer.Argument(..., help="Input images or videos (files, folders or globs), then the output folder last."),
    method: Optional[str] = typer.Option(None, "--method", help="physics; tpsence (learned generator: the domain's "
                                         "registered weights or --weights); auto (tpsence when weights for the domain "
                                         "exist, else physics). Default: auto, or physics when --preset or "
                                         "--intensity is given."),
    domain: str = typer.Option("rain", "--domain", "-d", help="rain, snow, fog or night."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Physics rain preset: light (default), heavy, storm, downpour (Rain100H-like) or real (veil, grey light, lens drops)."),
    intensity: Optional[float] = typer.Option(None, "--intensity", help="Physics: 0..1; for rain 0.5 is the preset as is."),
    seed: int = typer.Option(0, "--seed", help="Run seed; each image's randomness derives from it and the image's name "
                             "(the learned generator is deterministic; the seed is recorded)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="tpsence: registered weights name or a "
                                          "generator file (e.g. a run's generator.safetensors)."),
    device: str = typer.Option("auto", "--device", help="tpsence: auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="tpsence: fp32, fp16 (CUDA) or bf16."),
    tile: Optional[int] = typer.Option(None, "--tile", min=0, help="tpsence: run in tiles of this size in pixels "
                                       "(one exact pass, seam-free); 0 = whole image; default: on the CPU tiles of "
                                       "256 px for larger images (faster), else the whole image while it fits in "
                                       "free memory."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="tpsence: cap the process's memory, e.g. 3G "
                                             "or 512M: large images run in tiles to stay under it. Default: the "
                                             "plan follows free memory."),
    work_width: Optional[int] = typer.Option(None, "--work-width", min=0, help="tpsence: make the weather with the "
                                             "image scaled to this width and apply it at full resolution (the width "
                                             "the generator was trained at); 0 = run on the image as is. Default: "
                                             "the width the registered weights name, else 0."),
    fall_speed: float = typer.Option(24.0, "--fall-speed", min=0.0, help="Videos, physics rain and snow: how "
                                     "far the nearest rain falls a frame, in pixels at a 480 px short side (snow "
                                     "falls at an eighth of it); 0 = still weather."),
    pairs: bool = typer.Option(False, "--pairs", help="Also write the clean inputs: OUT/rain/ + OUT/norain/ (train/benchmark layout)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    fmt: str = typer.Option("png", "--format", "-f", help="png, jpg, webp or tif."),
    quality: Optional[int] = typer.Option(None, "--quality", min=1, max=100),
    shard: Optional[str] = typer.Option(None, "--shard", help=SHARD_HELP),
    codec: str = typer.Option("libx264", "--codec", help=VIDEO_HELP["codec"]),
    crf: int = typer.Option(18, "--crf", min=0, max=51, help=VIDEO_HELP["crf"]),
    frames: Optional[Path] = typer.Option(None, "--frames", help=VIDEO_HELP["frames"]),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo existing outputs (default: skip them)."),
) -> int:
    """Add weather to images at their native resolution, reproducibly: physics models or a learned generator."""
    from rich.markup import escape

    from rainkit.cli.progress import BatchProgress, print_failures
    from rainkit.synth.batch import GenerateSettings, choose_method, generate_paths, megapixels_per_second
    from rainkit.video.batch import VideoOptions

    if len(paths) < 2:
        raise typer.BadParameter("give at least one input and the output folder", param_hint="PATHS")
    *inputs, output = paths
    if Path(output).exists() and not Path(output).is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder; the output folder comes last", param_hint="PATHS")
    if method is None:
        method = "physics" if (preset is not None or intensity is not None) and not weights else "auto"
    settings = GenerateSettings(method=method, domain=domain, preset=preset or "light", intensity=intensity, seed=seed,
                                weights=weights, device=device, precision=precision, tile=tile,
                                max_memory=max_memory, work_width=work_width, fall_speed=fall_speed)
    settings.validate()
    choice = choose_method(method, domain, weights)
    if method == "auto" or choice.method != "physics":
        console.print(f"method: {choice.method} — {escape(choice.reason)}", highlight=False, soft_wrap=True)
    if choice.method == "physics" and work_width:
        console.print("[yellow]note:[/yellow] --work-width applies to the learned generator only; ignored",
                      highlight=False, soft_wrap=True)
    if choice.method != "physics" and (preset is not None or intensity is not None):
        console.print("[yellow]note:[/yellow] --preset and --intensity apply to the physics method only; ignored",
                      highlight=False, soft_wrap=True)
    from dataclasses import replace

    settings = replace(settings, method=choice.method, weights=choice.weights)
    with BatchProgress(console, f"{domain} ({choice.method})") as progress:
        result = generate_paths(inputs, output, settings, recursive=recursive, pairs=pairs, fmt=fmt, quality=quality,
                                overwrite=overwrite, shard=shard, video=VideoOptions(codec, crf, frames),
                                on_start=progress.on_start, on_progress=progress.on_progress,
                                on_tile=progress.on_tile, on_frame=progress.on_frame)
    record = result.settings
    used = (f"tpsence, weights {escape(str(record.get('weights')))} (sha256 {str(record.get('weights_sha256'))[:12]}), "
            f"{record.get('device')} {record.get('precision')}"
            + (f", weather made at {record['work_width']} px wide" if record.get("work_width") else "")
            if record.get("method") == "tpsence" else "physics")
    console.print(f"{result.count('done')} done, {result.count('skipped')} skipped, {result.count('failed')} failed "
                  f"into {escape(str(output))} ({megapixels_per_second(result):.1f} MP/s, seed {seed}; {used})",
                  highlight=False, soft_wrap=True)
    print_failures(result)
    return 0 if result.ok else 1
