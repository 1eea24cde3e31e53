"""`rainkit benchmark`: score deraining models on the standard test sets, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer
from typer.core import TyperCommand

from rainkit.cli.app import app, console, emit_text, out

RAW_ARGS = "rainkit.benchmark.args"


class _RawArgsCommand(TyperCommand):
    """Keeps the raw argument list, so each `--weights` can be matched to the `--model` before it
    (Click gathers repeated options into separate lists and forgets their interleaving)."""

    def parse_args(self, ctx, args):
        ctx.meta[RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)


@app.command("benchmark", cls=_RawArgsCommand)
def benchmark_command(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="A registered set (rain100l, rain100h, rain12, rain1400) or a dataset folder."),
    pairs: Optional[Tuple[str, str]] = typer.Option(None, "--pairs", metavar="RAINY_DIR CLEAN_DIR", help="Any two folders of rainy and clean images, paired by name or number."),
    images: Optional[str] = typer.Option(None, "--images", metavar="DIR", help="Real rain without ground truth: no-reference metrics only."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder holding the datasets (default: $RAINKIT_DATA, then the user data folder)."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="none (the rainy input), sapnet, prenet, or MODEL=WEIGHTS; repeat to compare (default: none)."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", "-w", help="Weights (registered name or path) for the --model just before."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated: psnr_y, ssim_y, psnr_rgb, ssim_rgb, niqe, brisque, all (default: PSNR/SSIM Y and RGB with references, NIQE and BRISQUE without)."),
    quantize: str = typer.Option("truncate", "--quantize", help="How outputs become 8-bit: truncate (uint8(255*clamp(x)), the official test scripts) or round."),
    crop_border: int = typer.Option(0, "--crop-border", min=0, help="Pixels dropped on every side before scoring."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 (CUDA) or bf16."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size in pixels; 0 = whole image; default: automatic from free memory."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images (a quick look; not comparable to published figures)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write settings, fingerprint, means and per-image values here ('-' for stdout)."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write per-image values here."),
    save_images: Optional[Path] = typer.Option(None, "--save-images", help="Folder for restored images and side-by-side grids."),
    grid: int = typer.Option(4, "--grid", min=0, help="How many side-by-side grids --save-images writes."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a bar chart (PNG) of the means here."),
    resume: bool = typer.Option(False, "--resume", help="Reuse finished images from the cache beside --json (or --csv) instead of recomputing them."),
) -> int:
    """Score deraining models on standard test sets (PSNR/SSIM in the literature's convention, NIQE, BRISQUE).

    Exits with 1 when any image could not be scored (each is listed at the end and in --json/--csv)."""
    return _benchmark(ctx, dataset, pairs, images, data_root, model, weights, metrics, quantize, crop_border,
                      device, precision, tile, limit, json_out, csv_out, save_images, grid, plot, resume)


def _benchmark(ctx, dataset, pairs, images, data_root, model, weights, metrics, quantize, crop_border, device,
               precision, tile, limit, json_out, csv_out, save_images, grid, plot, resume) -> int:
    import time

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rainkit.benchmark import QUANTIZE_MODES, command_line_order, default_cache_path, model_specs, run_benchmark
    from rainkit.benchmark.report import json_text, plot_means, write_csv
    from rainkit.data.datasets import image_folder, paired_folders, resolve_dataset
    from rainkit.metrics import parse_metrics

    sources = [name for name, given in (("--dataset", dataset), ("--pairs", pairs and any(pairs)),
                                         ("--images", images)) if given]
    if len(sources) != 1:
        raise typer.BadParameter("give exactly one of --dataset NAME, --pairs RAINY_DIR CLEAN_DIR or --images DIR"
                                 + (f" (got {', '.join(sources)})" if sources else ""))
    if quantize not in QUANTIZE_MODES:
        raise typer.BadParameter(f"use {' or '.join(QUANTIZE_MODES)}", param_hint="--quantize")
    if tile is not None and tile < 0:
        raise typer.BadParameter("0 (whole image) or a positive size", param_hint="--tile")
    cache_base = json_out if json_out and json_out != "-" else csv_out
    if resume and not cache_base:
        raise typer.BadParameter("--resume needs --json FILE or --csv FILE: the resume cache lives beside it",
                                 param_hint="--resume")
    raw_args = ctx.meta.get(RAW_ARGS)
    specs = model_specs(model or [], weights or [], command_line_order(raw_args) if raw_args is not None else None)

    if dataset:
        data = resolve_dataset(dataset, data_root)
    elif images:
        data = image_folder(images)
    else:
        data = paired_folders(*pairs)
    data = data.subset(limit)
    metric_names = parse_metrics(metrics, data.has_reference)  # refuse bad metrics before any work
    cache_path = default_cache_path(cache_base) if cache_base else None

    size_text = ", ".join(f"{k} ({v})" for k, v in data.sizes.items())
    console.print(f"[bold]{escape(data.title)}[/bold]: {len(data)} images, {escape(size_text)}; "
                  f"layout {escape(data.layout)}, paired by {data.pairing}; fingerprint {data.fingerprint[:16]}",
                  highlight=False)

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[current]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    tasks: dict[str, object] = {}

    def on_model(spec, total: int) -> None:
        tasks[spec.label] = progress.add_task(spec.label, total=total, current="")

    def on_image(event) -> None:
        state = " (failed)" if event.image.error else " (cached)" if event.image.cached else ""
        progress.update(tasks[event.model], completed=event.index, current=event.image.id + state)

    started = time.perf_counter()
    with progress:
        result = run_benchmark(data, specs, metric_names, quantize=quantize, crop_border=crop_border, device=device,
                               precision=precision, tile=tile, resume_cache=cache_path, resume=resume,
                               save_images=save_images, grid_images=grid, on_image=on_image, on_model=on_model)
    extra = {"command": ["rainkit", "benchmark", *raw_args] if raw_args is not None else None, "limit": limit,
             "data_root": data_root}
    _render(result)
    if json_out:
        emit_text(json_out, json_text(result, extra))
    if csv_out:
        write_csv(result, csv_out)
    if plot:
        plot_means(result, plot)
    written = [f"{name} {escape(str(path))}" for name, path in
               (("JSON", json_out if json_out != "-" else None), ("CSV", csv_out), ("plot", plot),
                ("images", save_images)) if path]
    cached = sum(m.cached_count for m in result.models)
    console.print(f"{len(data)} images x {len(result.models)} models in {time.perf_counter() - started:.1f} s"
                  + (f" ({cached} image scores reused from {escape(str(cache_path))})" if cached else "")
                  + (f"; wrote {', '.join(written)}" if written else ""), highlight=False)
    if limit is not None:
        console.print(f"[yellow]note:[/yellow] --limit {limit}: a subset, not comparable to published figures",
                      highlight=False)
    return _report_problems(result)


def _report_problems(result) -> int:
    """One line per image a metric does not apply to and per image that failed; 1 if any failed."""
    from rich.markup import escape

    def models_note(labels: list[str]) -> str:
        return "" if len(labels) == len(result.models) else f" ({', '.join(labels)})"

    rainy = {pair.id: pair.rainy for pair in result.dataset.pairs}
    notes: dict[str, list[str]] = {}
    for label, image, metric, reason in result.not_scored:
        notes.setdefault(f"{rainy[image.id]}: {metric} not scored: {reason}", []).append(label)
    for text, labels in notes.items():
        console.print(f"[yellow]note:[/yellow] {escape(text + models_note(labels))}", highlight=False, soft_wrap=True)
    failures: dict[str, list[str]] = {}
    for label, image in result.failures:
        failures.setdefault(image.error, []).append(label)
    for text, labels in failures.items():
        console.print(f"[red]failed:[/red] {escape(text + models_note(labels))}", highlight=False, soft_wrap=True)
    if failures:
        images = len({image.id for _, image in result.failures})
        console.print(f"[red]{images} of {len(result.dataset)} images could not be scored[/red]; "
                      f"the means are over the others", highlight=False)
        return 1
    return 0


def _cell(model_result, metric: str) -> str:
    import math

    from rainkit.metrics import METRICS

    info = METRICS[metric]
    mean = model_result.mean(metric)
    if math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{info.decimals}f}"


def _count_cell(model_result, metric: str) -> str:
    """Says how many images a mean is over when that is not every image."""
    count = model_result.count(metric)
    return f"\n[dim]over {count}/{len(model_result.images)}[/dim]" if count < len(model_result.images) else ""


def _std_cell(model_result, metric: str) -> str:
    import math

    from rainkit.metrics import METRICS

    std = model_result.std(metric)
    if not math.isfinite(std) or len(model_result.images) < 2:
        return ""
    return f"\n[dim]± {std:.{METRICS[metric].decimals}f}[/dim]"


def _model_name(m) -> str:
    from rich.markup import escape

    if m.spec.is_input:
        return "none\n[dim]rainy input[/dim]"
    name = escape(m.label)
    if m.weights and m.weights != m.label:
        weights = Path(m.weights).name if ("/" in m.weights or "\\" in m.weights) else m.weights
        name += f"\n[dim]{escape(weights)}[/dim]"
    return name


def _render(result) -> None:
    """One row per model and a column per metric; turned around (a row per metric) when that
    would not fit the terminal, e.g. six metrics on 80 columns."""
    from rich.markup import escape
    from rich.table import Table

    from rainkit.metrics import METRICS

    data = result.dataset
    best = {}
    for metric in result.metrics:
        values = [(m.mean(metric), m.label) for m in result.models if m.mean(metric) == m.mean(metric)]
        if len(values) > 1:
            best[metric] = (max if METRICS[metric].higher_is_better else min)(values)[1]

    def cell(m, metric: str) -> str:
        text = _cell(m, metric)
        text = f"[bold green]{text}[/]" if best.get(metric) == m.label else text
        return text + _std_cell(m, metric) + _count_cell(m, metric)

    def seconds(m) -> str:
        return f"{m.seconds_per_image:.2f}" if m.seconds_per_image is not None else "-"

    def params(m) -> str:
        return f"{m.params:,}" if m.params is not None else "-"

    table = Table(title=f"rainkit benchmark: {escape(data.title)}, {len(data)} images",
                  caption=_caption(result), caption_justify="left")
    wide = 16 + 11 * len(result.metrics) + 8 + 10
    if wide <= out.width or len(result.models) * 13 + 16 > out.width:
        table.add_column("model", overflow="fold", min_width=8)
        for metric in result.metrics:
            info = METRICS[metric]
            arrow = "↑" if info.higher_is_better else "↓"
            table.add_column(f"{metric}\n{arrow} {info.unit}".rstrip(), justify="right", no_wrap=True)
        table.add_column("s/img", justify="right", no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        for m in result.models:
            table.add_row(_model_name(m), *[cell(m, metric) for metric in result.metrics], seconds(m), params(m))
    else:
        table.add_column("metric", no_wrap=True)
        for m in result.models:
            table.add_column(_model_name(m), justify="right", overflow="fold")
        for metric in result.metrics:
            info = METRICS[metric]
            arrow = "↑" if info.higher_is_better else "↓"
            table.add_row(f"{metric} {arrow} {info.unit}".rstrip(), *[cell(m, metric) for m in result.models])
        table.add_row("s/img", *[seconds(m) for m in result.models])
        table.add_row("params", *[params(m) for m in result.models])
    out.print(table)


def _caption(result) -> str:
    from rainkit.metrics import METRICS

    settings = result.settings
    parts = [("mean ± std over the images with a value (\"over n/N\" where some have none); ↑ higher is better, "
              "↓ lower is better; s/img: inference seconds per image")]
    if any(METRICS[m].needs_reference for m in result.metrics):
        parts.append(f"_y: Y of MATLAB rgb2ycbcr (BT.601, 16-235), _rgb: 8-bit RGB; peak 255; SSIM 11x11 Gaussian "
                     f"(sigma 1.5), valid borders; outputs quantised by {settings['quantize']}; "
                     f"crop border {settings['crop_border']}")
    if any(not METRICS[m].needs_reference for m in result.metrics):
        parts.append("NIQE/BRISQUE: pyiqa's implementations with the LIVE models shipped with rainkit, "
                     "lower is better")
    parts.append(f"dataset fingerprint {result.dataset.fingerprint[:16]}")
    return "\n".join(parts)
