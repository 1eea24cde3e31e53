"""The benchmark runner: derain every image of a set with every model and score it.

Inference goes through the derain pipeline (`rainkit.derain.load_derainer`: device, precision,
tiling). Model outputs are quantised to 8 bits the way the published evaluations saved them
(`truncate`: uint8(255 * clamp(x)), as the official PReNet/SAPNet test scripts do; `round` on
request); the rainy inputs and clean references are 8-bit files and are used as they are.
Scoring, saving and cache writing run in one worker thread while the next image is being
derained (OpenCV and NumPy release the GIL), so metrics add little to the inference time.

A run never stops at a bad image: one that cannot be read (or derained, or compared with its
reference) keeps an `error` line and no scores, and a metric that does not apply to an image
(NIQE on one smaller than its block, anything on a uniform one) leaves its value out with the
reason in `not_scored`. Means are over the images that have a value (`ModelResult.count`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rainkit._version import __version__
from rainkit.benchmark.cache import ResumeCache, cache_key
from rainkit.benchmark.models import ModelSpec, finalize_specs, parse_model
from rainkit.data.datasets import Dataset, Pair
from rainkit.data.images import read_image, to_uint8
from rainkit.io.atomic import atomic_write_bytes
from rainkit.errors import InputError, MetricNotApplicable, ParameterError, RainkitError
from rainkit.metrics import METRICS, create_metric, crop_border, parse_metrics

QUANTIZE_MODES = ("truncate", "round")
GRID_FOLDER = "grid"
_IN_FLIGHT = 2  # images scored in the worker while the main thread derains the next


@dataclass
class ImageScore:
    id: str
    scores: dict[str, float]  # the metrics that have a value for this image
    seconds: float  # inference time (0 for the rainy input)
    cached: bool = False
    error: str | None = None  # one line: why this image has no scores at all (unreadable file, ...)
    not_scored: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value here


@dataclass
class ModelResult:
    spec: ModelSpec
    params: int | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    device: str | None = None
    precision: str | None = None
    images: list[ImageScore] = field(default_factory=list)
    seconds: float = 0.0  # wall time of this model's pass (loading, inference, scoring)

    @property
    def label(self) -> str:
        return self.spec.label

    def values(self, metric: str) -> np.ndarray:
        return np.array([im.scores[metric] for im in self.images if metric in im.scores], dtype=np.float64)

    def count(self, metric: str) -> int:
        """How many images the mean of `metric` is taken over."""
        return sum(1 for im in self.images if metric in im.scores)

    @property
    def failed(self) -> list[ImageScore]:
        return [im for im in self.images if im.error is not None]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return float(values.mean()) if values.size else float("nan")

    def std(self, metric: str) -> float:
        """Population standard deviation over images."""
        values = self.values(metric)
        if not values.size or not np.all(np.isfinite(values)):
            return float("nan")
        return float(values.std())

    @property
    def seconds_per_image(self) -> float | None:
        derained = [im.seconds for im in self.images if im.error is None]
        if self.spec.is_input or not derained:
            return None
        return float(np.mean(derained))

    @property
    def cached_count(self) -> int:
        return sum(1 for im in self.images if im.cached)


def _finite(value):
    """JSON has no inf/nan: identical images (PSNR inf) and empty means become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class BenchmarkResult:
    dataset: Dataset
    metrics: list[str]
    settings: dict
    models: list[ModelResult]
    seconds: float = 0.0
    created: str = ""
    grids: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[tuple[str, ImageScore]]:
        """(model label, image) for every image that could not be scored."""
        return [(m.label, im) for m in self.models for im in m.failed]

    @property
    def not_scored(self) -> list[tuple[str, ImageScore, str, str]]:
        """(model label, image, metric, reason) for every metric without a value on an image."""
        return [(m.label, im, metric, reason) for m in self.models for im in m.images
                for metric, reason in im.not_scored.items()]

    def means(self) -> dict[str, dict[str, float]]:
        return {m.label: {k: m.mean(k) for k in self.metrics} for m in self.models}

    def model(self, label: str) -> ModelResult:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(label)

    def rows(self) -> list[dict]:
        """One row per model and image (the CSV)."""
        pairs = {p.id: p for p in self.dataset.pairs}
        rows = []
        for m in self.models:
            for im in m.images:
                pair = pairs[im.id]
                row = {"model": m.label, "image": im.id, "rainy": str(pair.rainy),
                       "clean": str(pair.clean) if pair.clean is not None else "",
                       "seconds": round(im.seconds, 4), "cached": im.cached}
                row.update({k: im.scores.get(k) for k in self.metrics})
                row["error"] = im.error or ""
                row["not_scored"] = "; ".join(f"{k}: {v}" for k, v in im.not_scored.items())
                rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {
            "rainkit_version": __version__,
            "created": self.created,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            "dataset": self.dataset.describe(),
            "metrics": {k: METRICS[k].describe() for k in self.metrics},
            "means": {label: {k: _finite(v) for k, v in means.items()} for label, means in self.means().items()},
            "models": [
                {
                    "label": m.label,
                    "model": m.spec.model,
                    "weights": m.weights,
                    "weights_sha256": m.weights_sha256,
                    "params": m.params,
                    "device": m.device,
                    "precision": m.precision,
                    "images": len(m.images),
                    "failed_images": len(m.failed),
                    "cached_images": m.cached_count,
                    "seconds_per_image": _finite(m.seconds_per_image) if m.seconds_per_image is not None else None,
                    "means": {k: _finite(m.mean(k)) for k in self.metrics},
                    "std": {k: _finite(m.std(k)) for k in self.metrics},
                    "counts": {k: m.count(k) for k in self.metrics},  # images each mean is taken over
                }
                for m in self.models
            ],
            "images": {
                m.label: [{"id": im.id, "seconds": round(im.seconds, 4), "cached": im.cached,
                           **{k: _finite(im.scores.get(k)) for k in self.metrics},
                           "error": im.error, "not_scored": dict(im.not_scored)} for im in m.images]
                for m in self.models
            },
            "failures": [{"model": label, "image": im.id, "error": im.error} for label, im in self.failures],
            "not_scored": [{"model": label, "image": im.id, "metric": metric, "reason": reason}
                           for label, im, metric, reason in self.not_scored],
        }


@dataclass
class ImageEvent:
    """Passed to `on_image` after each image: which model, how far, and the scores."""

    model: str
    index: int  # 1-based
    total: int
    image: ImageScore


def _encode_png(rgb_u8: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb_u8[:, :, ::-1]))
    if not ok:
        raise RainkitError("could not encode a PNG")
    return buffer.tobytes()


def _read_u8(path: Path) -> np.ndarray:
    # 8-bit files come back exactly (k/255 in float32 times 255 rounds to k); 16-bit ones are
    # rounded to the nearest 8-bit level.
    return to_uint8(read_image(path).rgb, "round")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)


class _Scorer:
    """Scores one restored image with the metrics asked for: those needing a reference against the
    clean image, the others alone; `border` pixels are cropped on every side first."""

    def __init__(self, metrics: Sequence[str], border: int):
        self.metrics = [create_metric(m) for m in metrics]
        self.border = border

    def __call__(self, restored: np.ndarray, pair: Pair,
                 clean: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, str]]:
        """(scores, not_scored): a metric that cannot apply to this image (NIQE on a small one)
        leaves its value out and says why; an unusable image raises."""
        scores: dict[str, float] = {}
        not_scored: dict[str, str] = {}
        if any(m.info.needs_reference for m in self.metrics):
            if clean is None:
                clean = _read_u8(pair.clean)
            if clean.shape != restored.shape:
                raise RainkitError(f"{pair.rainy.name}: the output is {restored.shape[1]}x{restored.shape[0]} "
                                   f"but {pair.clean.name} is {clean.shape[1]}x{clean.shape[0]}")
            clean = crop_border(clean, self.border)
        restored = crop_border(restored, self.border)
        for metric in self.metrics:
            reference = clean if metric.info.needs_reference else None
            try:
                scores[metric.name] = metric(restored, reference, name=pair.rainy.name)
            except MetricNotApplicable as exc:
                not_scored[metric.name] = exc.reason
        return scores, not_scored


# What one image may raise without stopping the run: decoding and I/O problems, a model failing on
# an odd input (out of memory, ...). Anything else is a bug and is not hidden.
_IMAGE_ERRORS = (RainkitError, OSError, RuntimeError, MemoryError, ValueError)


def _failure(exc: Exception, path: Path) -> str:
    """One line naming the file and the problem."""
    if isinstance(exc, InputError):
        return str(exc)  # names its file already
    text = str(exc).strip()
    if isinstance(exc, RainkitError):
        return f"{path}: {text}"
    return f"{path}: {type(exc).__name__}: {text.splitlines()[0][:200]}" if text else f"{path}: {type(exc).__name__}"


def run_benchmark(
    dataset: Dataset,
    models: Sequence[ModelSpec | str] = ("none",),
    metrics: Sequence[str] | str | None = None,
    *,
    quantize: str = "truncate",
    crop_border: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    tile: int | None = None,
    resume_cache: str | Path | None = None,
    resume: bool = True,
    save_images: str | Path | None = None,
    grid_images: int = 4,
    on_image: Callable[[ImageEvent], None] | None = None,
    on_model: Callable[[ModelSpec, int], None] | None = None,
    overlap: bool = True,
) -> BenchmarkResult:
    """Benchmark `models` on `dataset` and return every score.

    `models`: `ModelSpec`s or strings (`"none"`, `"prenet=path.pth"`); `metrics`: names or a
    comma-separated string (default: PSNR/SSIM on Y and RGB for paired sets, NIQE and BRISQUE for
    sets without references). `resume_cache`: a JSONL file of per-image scores, read when
    `resume` and appended to as images finish. `save_images`: a folder for the restored images
    (`<folder>/<model>/<id>.png`) and side-by-side grids of the first `grid_images` images.
    """
    started = time.perf_counter()
    metric_names = parse_metrics(metrics, dataset.has_reference)
    if quantize not in QUANTIZE_MODES:
        raise ParameterError("quantize", f"unknown quantisation '{quantize}' (use {' or '.join(QUANTIZE_MODES)})")
    if crop_border < 0:
        raise ParameterError("crop_border", f"must be 0 or more, got {crop_border}")
    if not dataset.pairs:
        raise RainkitError(f"{dataset.name}: no images to benchmark")
    specs = finalize_specs(parse_model(m) if isinstance(m, str) else m for m in models)
    if not specs:
        raise ParameterError("models", "no model to benchmark (use 'none' to score the rainy input)")
    save_dir = Path(save_images) if save_images is not None else None

    scorer = _Scorer(metric_names, crop_border)
    cache = ResumeCache(resume_cache, resume=resume) if resume_cache is not None else None
    results: list[ModelResult] = []
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rainkit-metrics") if overlap else None
    try:
        for spec in specs:
            results.append(_run_model(spec, dataset, metric_names, scorer, cache, executor, save_dir,
                                      quantize=quantize, crop_border=crop_border, device=device,
                                      precision=precision, tile=tile, on_image=on_image, on_model=on_model))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if cache is not None:
            cache.close()

    settings = {
        "models": [str(s) for s in specs],
        "metrics": metric_names,
        "quantize": quantize,
        "crop_border": crop_border,
        "device": device,
        "precision": precision,
        "tile": tile,
        "resume_cache": str(resume_cache) if resume_cache is not None else None,
        "save_images": str(save_dir) if save_dir is not None else None,
    }
    result = BenchmarkResult(dataset, metric_names, settings, results,
                             created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if save_dir is not None and grid_images > 0:
        result.grids = write_grids(result, save_dir, grid_images)
    result.seconds = time.perf_counter() - started
    return result


def _run_model(spec: ModelSpec, dataset: Dataset, metrics: list[str], scorer: _Scorer, cache: ResumeCache | None,
               executor: ThreadPoolExecutor | None, save_dir: Path | None, *, quantize: str, crop_border: int,
               device: str, precision: str, tile: int | None, on_image, on_model) -> ModelResult:
    started = time.perf_counter()
    result = ModelResult(spec)
    derainer = None
    if spec.is_input:
        key_settings = {"model": "none", "crop_border": crop_border}
    else:
        from rainkit.derain import load_derainer

        derainer = load_derainer(spec.model, spec.weights, device=device, precision=precision, tile=tile)
        info = derainer.describe()
        result.params = derainer.num_params
        result.weights = info["weights"]
        result.weights_sha256 = info["weights_sha256"]
        result.device = info["device"]
        result.precision = info["precision"]
        key_settings = {"model": spec.model, "weights_sha256": derainer.weights_sha256, "quantize": quantize,
                        "crop_border": crop_border, "device": derainer.device.type, "precision": precision,
                        "tile": tile}
    out_dir = save_dir / _safe_name(spec.label) if save_dir is not None and not spec.is_input else None
    total = len(dataset.pairs)
    if on_model is not None:
        on_model(spec, total)

    pending: deque = deque()
    finished = 0

    def finish(image: ImageScore) -> None:
        nonlocal finished
        finished += 1
        result.images.append(image)
        if on_image is not None:
            on_image(ImageEvent(spec.label, finished, total, image))

    def score(pair: Pair, key: str | None, restored: np.ndarray, seconds: float) -> ImageScore:
        try:
            if out_dir is not None:
                atomic_write_bytes(out_dir / f"{_safe_name(pair.id)}.png", _encode_png(restored))
            scores, not_scored = scorer(restored, pair)
        except _IMAGE_ERRORS as exc:
            return ImageScore(pair.id, {}, seconds, error=_failure(exc, pair.rainy))
        if cache is not None:
            cache.put(key, spec.label, pair.id, scores, seconds, not_scored)
        return ImageScore(pair.id, scores, seconds, not_scored=not_scored)

    def done(image: ImageScore) -> None:
        if pending:  # keep dataset order behind images still being scored
            pending.append(_Done(image))
        else:
            finish(image)

    for pair in dataset.pairs:
        key = cache_key(key_settings, dataset.pair_digest(pair)) if cache is not None else None
        entry = cache.get(key, metrics) if cache is not None else None
        if entry is not None and (out_dir is None or (out_dir / f"{_safe_name(pair.id)}.png").is_file()):
            done(ImageScore(pair.id, {m: entry["scores"][m] for m in metrics if m in entry["scores"]},
                            float(entry["seconds"]), True,
                            not_scored={m: entry["not_scored"][m] for m in metrics if m in entry["not_scored"]}))
            continue
        try:
            rgb = read_image(pair.rainy).rgb
            if derainer is None:
                restored, seconds = to_uint8(rgb, "round"), 0.0
            else:
                t0 = time.perf_counter()
                output = derainer.derain(rgb)
                seconds = time.perf_counter() - t0
                restored = to_uint8(output, quantize)
        except _IMAGE_ERRORS as exc:
            done(ImageScore(pair.id, {}, 0.0, error=_failure(exc, pair.rainy)))
            continue
        if executor is None:
            finish(score(pair, key, restored, seconds))
            continue
        pending.append(executor.submit(score, pair, key, restored, seconds))
        while len(pending) >= _IN_FLIGHT:
            finish(pending.popleft().result())
    while pending:
        finish(pending.popleft().result())
    result.seconds = time.perf_counter() - started
    return result


class _Done:
    """A finished value that looks like a future, to keep results in dataset order."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


# --- grids ---------------------------------------------------------------------------------------

def _label_band(text: str, width: int) -> np.ndarray:
    import cv2

    band = np.full((28, width, 3), 255, np.uint8)
    scale = 0.55
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 8 and len(text) > 4:
        text = text[:-2]
        (tw, _), _ = cv2.getTextSize(text + "~", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(band, text, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def contact_sheet(rows: list[list[tuple[str, np.ndarray]]], width: int = 320) -> np.ndarray:
    """One image of labelled cells: each row's (label, H x W x 3 uint8 RGB) cells scaled to `width` px wide, side by
    side with 4 px white gaps, rows padded to their tallest cell and stacked with 4 px gaps."""
    import cv2

    lines = []
    for row in rows:
        cells = [np.concatenate([_label_band(label, width),
                                 cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])),
                                            interpolation=cv2.INTER_AREA)]) for label, image in row]
        height = max(c.shape[0] for c in cells)
        lines.append(np.concatenate([np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0)), constant_values=255)
                                     for c in cells], axis=1))
    full = max(line.shape[1] for line in lines)
    return np.concatenate([np.pad(line, ((0, 4), (0, full - line.shape[1]), (0, 0)), constant_values=255)
                           for line in lines])


def write_contact_sheet(path: Path, rows: list[list[tuple[str, np.ndarray]]], width: int = 320,
                        quality: int = 90) -> Path:
    """`contact_sheet`, written atomically: JPEG at `quality` for a .jpg/.jpeg path, else PNG."""
    import cv2

    sheet = cv2.cvtColor(contact_sheet(rows, width), cv2.COLOR_RGB2BGR)
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    ok, encoded = cv2.imencode(".jpg" if jpeg else ".png", sheet, [cv2.IMWRITE_JPEG_QUALITY, quality] if jpeg else [])
    if not ok:
        raise RuntimeError(f"{path}: the contact sheet could not be encoded")
    atomic_write_bytes(path, encoded.tobytes())
    return Path(path)


def write_grids(result: BenchmarkResult, save_dir: Path, count: int = 4) -> list[Path]:
    """Side-by-side PNGs `rainy | each model | clean` (with each model's PSNR-Y where scored) of the
    first `count` images, in `<save_dir>/grid/`."""
    written: list[Path] = []
    models = [m for m in result.models if not m.spec.is_input]
    for pair in result.dataset.pairs[:count]:
        try:
            rainy = _read_u8(pair.rainy)
        except InputError:
            continue  # listed among the failures already
        columns = [("rainy", rainy)]
        for m in models:
            path = save_dir / _safe_name(m.label) / f"{_safe_name(pair.id)}.png"
            image = _read_u8(path) if path.is_file() else np.full_like(rainy, 128)
            score = next((im.scores for im in m.images if im.id == pair.id), {})
            label = m.label + (f" {score['psnr_y']:.2f} dB" if "psnr_y" in score else "")
            columns.append((label, image))
        if pair.clean is not None:
            try:
                columns.append(("clean", _read_u8(pair.clean)))
            except InputError:
                pass  # listed among the failures already
        gap = np.full((rainy.shape[0] + 28, 4, 3), 255, np.uint8)
        tiles = []
        for i, (label, image) in enumerate(columns):
            if i:
                tiles.append(gap)
            tiles.append(np.concatenate([_label_band(label, image.shape[1]), image], axis=0))
        path = save_dir / GRID_FOLDER / f"{_safe_name(pair.id)}.png"
        atomic_write_bytes(path, _encode_png(np.concatenate(tiles, axis=1)))
        written.append(path)
    return written
