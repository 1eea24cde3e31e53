"""`rainkit detect`: what deraining buys object detection (YOLO on clean, rainy and derained images)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import app, console, emit_text


@app.command("detect")
def detect_command(
    images: Optional[List[str]] = typer.Argument(None, help="Rainy images or videos (files, folders or globs); clean ones with --add-rain."),
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="Ground truth: a folder of YOLO .txt labels or a COCO .json file."),
    clean: Optional[Path] = typer.Option(None, "--clean", help="Folder of clean references named like the images."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A registered paired set instead of IMAGES (e.g. rain100l; see `rainkit benchmark`)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where to look for --dataset (default: $RAINKIT_DATA, then the user data folder)."),
    add_rain: Optional[str] = typer.Option(None, "--add-rain", help="Make the rainy images from clean IMAGES: light, heavy, storm, downpour or real (physics), or tpsence."),
    seed: int = typer.Option(0, "--seed", help="Seed of --add-rain; each image's rain derives from it and the image's name."),
    detector: Optional[str] = typer.Option(None, "--detector", help="YOLO weights: a path (.pt, or an export such as *_openvino_model/) or an Ultralytics model name (default yolo11n.pt, downloaded to the cache once)."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", min=32, help="Detector input size (default 640; fixed-size exports use their own)."),
    derain_model: str = typer.Option("sapnet", "--derain-model", "-m", help="Deraining architecture: sapnet or prenet."),
    derain_weights: Optional[str] = typer.Option(None, "--derain-weights", "-w", help="Deraining weights name or checkpoint path (default: the model's default weights)."),
    derained: Optional[Path] = typer.Option(None, "--derained", help="Use already-derained images from this folder (same names) instead of running the model."),
    no_derain: bool = typer.Option(False, "--no-derain", help="Skip the derained condition."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps (deraining and detector)."),
    precision: str = typer.Option("fp32", "--precision", help="Deraining precision: fp32, fp16 (CUDA) or bf16."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Deraining tile size; 0 = whole image; default: automatic."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Deraining: cap the process's memory (e.g. 3G); "
                                             "large images are tiled to stay under it."),
    conf: float = typer.Option(0.25, "--conf", help="Confidence threshold of the detections counted, drawn and used as a reference (mAP always uses val's 0.001)."),
    iou: float = typer.Option(0.7, "--iou", help="NMS IoU threshold (0.7 as in Ultralytics val)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Only these classes, by name or index, comma-separated (e.g. person,car)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    vid_stride: int = typer.Option(1, "--vid-stride", min=1, help="Videos: study every Nth frame (clean or derained "
                                   "references: the same frame of the video of the same name)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder for map.png and annotated side-by-side images."),
    save_images: int = typer.Option(8, "--save-images", min=0, help="How many annotated side-by-side images to write (with -o)."),
    pick: str = typer.Option("disagree", "--pick", help="Which images to annotate: disagree (conditions differ most) or first."),
    save_conditions: bool = typer.Option(False, "--save-conditions", help="Also write the rainy and derained images into the output folder."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print AP per class."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the full result as JSON to this file ('-' for stdout)."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write mAP per condition and class as CSV to this file ('-' for stdout)."),
) -> int:
    """Run a YOLO detector on rainy, derained and clean images and show what deraining recovers."""
    from rainkit.cli.progress import BatchProgress
    from rainkit.detect.runner import DetectSettings, run_detect

    if output is not None and output.exists() and not output.is_dir():
        raise typer.BadParameter(f"{output} exists and is not a folder", param_hint="--output")
    if pick not in ("disagree", "first"):
        raise typer.BadParameter("use disagree or first", param_hint="--pick")
    if not 0.0 < conf <= 1.0:
        raise typer.BadParameter(f"must be within (0, 1], got {conf}", param_hint="--conf")
    if not 0.0 < iou <= 1.0:
        raise typer.BadParameter(f"must be within (0, 1], got {iou}", param_hint="--iou")
    if no_derain and (derained is not None or derain_weights is not None):
        raise typer.BadParameter("--no-derain cannot be combined with --derained or --derain-weights", param_hint="--no-derain")
    if save_conditions and output is None:
        raise typer.BadParameter("--save-conditions needs an output folder (-o)", param_hint="--save-conditions")

    settings = DetectSettings(labels=labels, clean=clean, dataset=dataset, data_root=data_root, add_rain=add_rain,
                              seed=seed, detector=detector, imgsz=imgsz, derain=not no_derain,
                              derain_model=derain_model, derain_weights=derain_weights, derained_dir=derained,
                              device=device, precision=precision, tile=tile, max_memory=max_memory, conf=conf,
                              iou=iou, classes=classes, recursive=recursive, vid_stride=vid_stride, limit=limit,
                              output=output, save_images=save_images, pick=pick, save_conditions=save_conditions)
    with BatchProgress(console, "detect") as progress:
        result = run_detect(images or None, settings, on_start=progress.on_start, on_progress=progress.on_progress)
    render(result, per_class=per_class)
    if json_out:
        import json

        emit_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
    if csv_out:
        emit_text(csv_out, result.to_csv())
    return 0 if result.ok else 1


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(result, per_class: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    from rainkit.cli.progress import print_failures

    settings = result.settings
    title = f"rainkit detect — {escape(str(settings['detector'].get('detector')))} vs {result.reference}"
    table = Table(title=title)
    table.add_column("condition", no_wrap=True)
    table.add_column("images", justify="right")
    table.add_column("mAP50", justify="right")
    table.add_column("mAP50-95", justify="right")
    table.add_column("Δ mAP50-95", justify="right")
    table.add_column("obj/img", justify="right")
    table.add_column("mean conf", justify="right")
    clean = result.map_of("clean")
    for name, summary in result.conditions.items():
        is_ref = summary.is_reference
        m50, m = result.map_of(name, "map50"), result.map_of(name)
        delta = (m - clean) if (m is not None and clean is not None and name != "clean") else None
        per_image = summary.detections / summary.images if summary.images else None
        table.add_row(name + (" (ref)" if is_ref else ""), str(summary.images),
                      _f(m50), _f(m),
                      "" if delta is None else f"{delta:+.3f}", _f(per_image, 2), _f(summary.mean_conf))
    console.print(table)
    console.print(escape(result.reference_note), highlight=False)
    recovered = result.recovered
    if recovered.get("map50_95") is not None or recovered.get("map50") is not None:
        parts = [f"{label} {value:.1%}" for label, value in (("mAP50-95", recovered.get("map50_95")),
                                                              ("mAP50", recovered.get("map50"))) if value is not None]
        console.print(f"[bold]deraining recovers {' / '.join(parts)} of the clean → rainy drop[/bold]", highlight=False)
    if per_class:
        _render_per_class(result)
    derain = settings.get("derain") or {}
    rain = settings.get("add_rain")
    console.print(
        f"{result.count('done')} done, {result.count('failed')} failed in {result.seconds:.1f} s — "
        f"detector {escape(str(settings['detector'].get('detector')))} ({settings['detector'].get('format')}, "
        f"{'x'.join(str(v) for v in settings['detector'].get('imgsz', []))}); "
        + (f"derained images from {escape(str(derain['derained_dir']))}; " if derain.get("derained_dir")
           else f"derain {derain.get('model')} {escape(str(derain.get('weights')))} ({derain.get('device')}, "
                f"{derain.get('precision')}); " if derain else "no deraining; ")
        + (f"rain: physics {rain['preset']}, seed {rain['seed']}; " if rain else "")
        + f"mAP at conf {settings['map_nms']['conf']}, IoU {settings['map_nms']['iou']}; shown at conf {settings['display_nms']['conf']}",
        highlight=False)
    outputs = result.outputs or {}
    if outputs.get("chart"):
        console.print(f"chart: {escape(outputs['chart'])}; {len(outputs.get('annotated', []))} annotated images in "
                      f"{escape(str(Path(outputs['folder']) / 'annotated'))}", highlight=False)
    print_failures(result)


def _render_per_class(result) -> None:
    from rich.table import Table

    scored = [(n, s) for n, s in result.conditions.items() if s.map is not None]
    if not scored:
        return
    table = Table(title="AP50-95 per class (AP50 in brackets)")
    table.add_column("class")
    table.add_column("instances", justify="right")
    for name, _ in scored:
        table.add_column(name, justify="right")
    classes = sorted({c for _, s in scored for c in s.map.per_class})
    for cls in classes:
        cells = []
        instances = ""
        for _, summary in scored:
            row = summary.map.per_class.get(cls)
            instances = str(row["instances"]) if row else instances
            cells.append(f"{row['ap50_95']:.3f} ({row['ap50']:.3f})" if row else "—")
        table.add_row(result.names.get(cls, str(cls)), instances, *cells)
    console.print(table)
