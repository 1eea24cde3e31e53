"""Writing benchmark results: JSON, per-image CSV, and a bar chart of the means."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from rainkit.benchmark.runner import BenchmarkResult
from rainkit.io.atomic import atomic_write_bytes
from rainkit.metrics import METRICS


def json_text(result: BenchmarkResult, extra_settings: dict | None = None) -> str:
    data = result.to_json()
    if extra_settings:
        data["settings"].update(extra_settings)
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_json(result: BenchmarkResult, path: str | os.PathLike, extra_settings: dict | None = None) -> None:
    atomic_write_bytes(path, json_text(result, extra_settings).encode())


def write_csv(result: BenchmarkResult, path: str | os.PathLike) -> None:
    """One row per model and image: model, image, rainy, clean, seconds, cached, the metrics (empty
    where an image has no value), then `error` (why the image has no scores) and `not_scored`
    (`metric: reason; ...` for metrics that do not apply to it)."""
    buffer = io.StringIO()
    fields = ["model", "image", "rainy", "clean", "seconds", "cached", *result.metrics, "error", "not_scored"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in result.rows():
        writer.writerow({k: (_csv_number(v) if k in result.metrics else v) for k, v in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode())


def _csv_number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return repr(float(value))


def plot_means(result: BenchmarkResult, path: str | os.PathLike, title: str | None = None) -> None:
    """A bar chart of each metric's mean per model (one panel per metric, axes from zero),
    drawn with matplotlib's Agg canvas directly so no GUI backend or global state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = result.metrics
    labels = [m.label for m in result.models]
    figure = Figure(figsize=(max(3.2 * len(metrics), 4.0), 3.6 + 0.1 * max(len(label) for label in labels)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(labels))]
    for ax, metric in zip(axes, metrics):
        info = METRICS[metric]
        means = [m.mean(metric) for m in result.models]
        shown = [v if math.isfinite(v) else 0.0 for v in means]
        bars = ax.bar(range(len(labels)), shown, color=colours)
        for bar, value in zip(bars, means):
            text = f"{value:.{info.decimals}f}" if math.isfinite(value) else "n/a"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom" if bar.get_height() >= 0 else "top", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        unit = f" ({info.unit})" if info.unit else ""
        arrow = "higher is better" if info.higher_is_better else "lower is better"
        ax.set_title(f"{metric}{unit}\n{arrow}", fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.margins(y=0.12)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.tick_params(axis="y", labelsize=8)
    figure.suptitle(title or f"rainkit benchmark: {result.dataset.name} ({len(result.dataset)} images)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
