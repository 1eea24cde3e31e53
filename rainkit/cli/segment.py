"""`rainkit segment`: semantic label maps with ESPNet (Cityscapes classes), the maps
`rainkit train tpsence --seg-clear/--seg-target` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import app, console

RECORD_NAME = "rainkit-segment.json"
OVERLAY_DIR = "overlay"
# The Cityscapes colours of the 19 training classes (rainkit.models.espnet.CITYSCAPES_CLASSES order), then unlabelled.
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 0),
)


def colour_overlay(rgb, labels, alpha: float = 0.5):
    """Blend the Cityscapes colour of each label over float RGB in [0, 1]; unlabelled pixels (19) keep the image."""
    import numpy as np

    palette = np.asarray(CITYSCAPES_PALETTE, np.float32) / 255.0
    colours = palette[labels.astype(np.int64) % len(palette)]
    blended = (1.0 - alpha) * rgb + alpha * colours
    unlabelled = labels == len(CITYSCAPES_PALETTE) - 1
    blended[unlabelled] = rgb[unlabelled]
    return blended


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
) -> int:
    """Segment images with ESPNet: label maps (Cityscapes train ids, 19 = unlabelled) and optional colour overlays."""
    import time

    import cv2
    import numpy as np
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rainkit._version import __version__
    from rainkit.data.images import read_image, to_uint8, write_image
    from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
    from rainkit.derain.batch import ItemResult, plan_jobs
    from rainkit.errors import InputError, RainkitError
    from rainkit.hub import load_model, resolve_device
    from rainkit.models.espnet import CITYSCAPES_CLASSES, Segmenter

    if output.exists() and not output.is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder", param_hint="--output")
    jobs = plan_jobs(inputs, output, recursive=recursive, fmt="png")
    dev = resolve_device(device)
    model, resolved = load_model("espnet", weights, device=dev)
    segmenter = Segmenter(model, dev, width)
    record = {"rainkit_version": __version__, "model": "espnet",
              "weights": resolved.entry.name if resolved.entry else str(resolved.path), "weights_sha256": resolved.sha256,
              "width": width, "classes": list(CITYSCAPES_CLASSES) if model.classes == len(CITYSCAPES_CLASSES) else
              model.classes, "format": "8-bit PNG of class ids, named like the images"}
    record_path = output / RECORD_NAME
    if record_path.exists() and not overwrite:
        previous = json.loads(record_path.read_text())
        changed = {k: (previous.get(k), record[k]) for k in ("weights_sha256", "width") if previous.get(k) != record[k]}
        if changed:
            raise RainkitError(f"{record_path}: this folder holds label maps made with other settings {changed}; "
                               f"use another output folder or --overwrite")
    atomic_write_json(record_path, record)

    items: list[ItemResult] = []
    progress = Progress(TextColumn("[bold]segment"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[current]}"),
                        TimeElapsedColumn(), console=console, transient=True)
    with progress:
        task = progress.add_task("segment", total=len(jobs), current="")
        for index, job in enumerate(jobs, start=1):
            label = str(job.source) if job.source is not None else job.spec
            started = time.perf_counter()
            if job.error:
                item = ItemResult(label, str(job.output) if job.output else None, "failed", job.error)
            else:
                overlay_path = output / OVERLAY_DIR / job.output.relative_to(output) if overlay else None
                if job.output.exists() and (overlay_path is None or overlay_path.exists()) and not overwrite:
                    item = ItemResult(label, str(job.output), "skipped")
                else:
                    try:
                        # Quantised to 8 bits first, as `rainkit train tpsence --segmenter` reads its images,
                        # so both give the same maps.
                        rgb = to_uint8(read_image(job.source).rgb).astype(np.float32) / 255.0
                        labels = segmenter.segment(rgb)
                        ok, png = cv2.imencode(".png", labels)
                        if not ok:
                            raise InputError(f"{job.output}: could not encode the label map")
                        if overlay_path is not None:
                            write_image(overlay_path, colour_overlay(rgb, labels))
                        atomic_write_bytes(job.output, png.tobytes())
                        item = ItemResult(label, str(job.output), "done", seconds=time.perf_counter() - started,
                                          width=rgb.shape[1], height=rgb.shape[0])
                    except InputError as exc:
                        item = ItemResult(label, str(job.output), "failed", str(exc).splitlines()[0])
                    except (RainkitError, OSError, RuntimeError, MemoryError, ValueError) as exc:
                        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                        item = ItemResult(label, str(job.output), "failed", f"{job.source}: {text}")
            items.append(item)
            progress.update(task, completed=index, current=Path(label).name)
            if item.status == "failed":
                progress.console.print(f"[red]failed[/red] {escape(item.error or '')}", highlight=False, soft_wrap=True)
    done = sum(i.status == "done" for i in items)
    skipped = sum(i.status == "skipped" for i in items)
    failed = [i for i in items if i.status == "failed"]
    console.print(f"{done} label maps written, {skipped} skipped (already there), {len(failed)} failed into "
                  f"{escape(str(output))}{' (+ overlay/)' if overlay else ''} — ESPNet {escape(record['weights'])} "
                  f"(sha256 {resolved.sha256[:12]}), {dev}; use the folder with "
                  f"`rainkit train tpsence --seg-clear/--seg-target`", highlight=False, soft_wrap=True)
    return 1 if failed else 0
