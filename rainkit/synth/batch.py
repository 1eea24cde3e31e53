"""`rainkit generate` as one call: add weather to files, resumable, with a run record."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.data.images import atomic_write_bytes, encode_image, read_image
from rainkit.derain.batch import BatchResult, ItemResult, plan_jobs
from rainkit.errors import InputError, RainkitError
from rainkit.synth.physics import DOMAINS, PRESETS, image_seed, synthesize

METHODS = ("physics",)
RECORD_NAME = "rainkit-generate.json"


@dataclass(frozen=True)
class GenerateSettings:
    method: str = "physics"
    domain: str = "rain"
    preset: str = "light"
    intensity: float | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise RainkitError(f"unknown method '{self.method}' (available: {', '.join(METHODS)})")
        if self.domain not in DOMAINS:
            raise RainkitError(f"unknown domain '{self.domain}' (use {', '.join(DOMAINS)})")
        if self.preset not in PRESETS:
            raise RainkitError(f"unknown preset '{self.preset}' (use {', '.join(PRESETS)})")
        if self.intensity is not None and not 0.0 <= self.intensity <= 1.0:
            raise RainkitError(f"--intensity must be within 0..1, got {self.intensity}")


def generate_paths(
    inputs: list[str],
    output: str | Path,
    settings: GenerateSettings = GenerateSettings(),
    *,
    recursive: bool = False,
    pairs: bool = False,
    fmt: str = "png",
    quality: int | None = None,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
) -> BatchResult:
    """Write weather versions of `inputs` into `output`.

    With `pairs`, writes `output/rain/<name>` (degraded) and `output/norain/<name>.png` (the clean
    input, losslessly), a layout `rainkit train` and `rainkit benchmark` read; other domains use
    `output/<domain>/` and `output/clear/`.
    Each image's randomness is seeded from `settings.seed` and its name, so results do not depend
    on batch order or on which images were already done.
    """
    settings.validate()
    output = Path(output)
    degraded_dir = output / settings.domain if pairs else output
    clean_dir = (output / ("norain" if settings.domain == "rain" else "clear")) if pairs else None
    jobs = plan_jobs(inputs, degraded_dir, recursive=recursive, fmt=fmt)
    record = {"rainkit_version": __version__, **settings.__dict__, "pairs": pairs}
    record_path = output / RECORD_NAME
    if record_path.exists() and not overwrite:
        previous = json.loads(record_path.read_text())
        changed = {k: (previous.get(k), v) for k, v in record.items() if k != "rainkit_version" and previous.get(k) != v}
        if changed:
            raise RainkitError(f"{record_path}: this folder was generated with other settings {changed}; "
                               f"use another output folder or --overwrite")
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    if on_start:
        on_start(len(jobs))
    result = BatchResult(settings=record)
    start = time.perf_counter()
    for index, job in enumerate(jobs, start=1):
        item = _generate_one(job, settings, degraded_dir, clean_dir, fmt, quality, overwrite)
        result.items.append(item)
        if on_progress:
            on_progress(item, index, len(jobs))
    result.seconds = time.perf_counter() - start
    return result


def _generate_one(job, settings: GenerateSettings, degraded_dir: Path, clean_dir: Path | None, fmt: str,
                  quality: int | None, overwrite: bool) -> ItemResult:
    label = str(job.source) if job.source is not None else job.spec
    if job.error:
        return ItemResult(label, str(job.output) if job.output else None, "failed", job.error)
    clean_out = clean_dir / job.output.relative_to(degraded_dir).with_suffix(".png") if clean_dir else None
    if job.output.exists() and (clean_out is None or clean_out.exists()) and not overwrite:
        return ItemResult(label, str(job.output), "skipped")
    started = time.perf_counter()
    try:
        image = read_image(job.source)
        height, width = image.rgb.shape[:2]
        name = job.output.relative_to(degraded_dir).with_suffix("").as_posix()
        clean = image.rgb
        image.rgb = synthesize(clean, settings.domain, preset=settings.preset, intensity=settings.intensity,
                               seed=image_seed(settings.seed, name))
        data = encode_image(image, job.output.suffix, quality)
        if clean_out is not None:
            image.rgb = clean
            atomic_write_bytes(clean_out, encode_image(image, ".png"))
        atomic_write_bytes(job.output, data)
        return ItemResult(label, str(job.output), "done", seconds=time.perf_counter() - started, width=width, height=height)
    except (InputError, RainkitError, ValueError, OSError) as exc:
        message = str(exc) if isinstance(exc, InputError) else f"{job.source}: {exc}"
        return ItemResult(label, str(job.output), "failed", message.splitlines()[0], time.perf_counter() - started)


def megapixels_per_second(result: BatchResult) -> float:
    done = [i for i in result.items if i.status == "done"]
    seconds = sum(i.seconds for i in done)
    return float(np.sum([i.width * i.height for i in done]) / 1e6 / seconds) if seconds else 0.0
