"""Deraining files on rainkit's batch layer (`rainkit.io.batch`): output naming, resumable batches, sidecars.

A batch never stops at a bad file: every input ends as done, skipped (its output exists and is complete)
or failed (with a one-line reason), and the caller decides the exit code from the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.data.images import encode_image, read_image, to_uint8
from rainkit.derain.engine import Derainer
from rainkit.errors import ParameterError
from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
from rainkit.io.batch import BatchResult, ItemResult, Job, Shard, plan_jobs, run_batch, sha256_bytes, sidecar_path
from rainkit.video.batch import VideoOptions, check_output, run_video_job, video_output_of
from rainkit.video.pipeline import is_video_name

SUFFIX_SINGLE = "_derained"
BACKENDS = ("torch", "onnxruntime")


def derain_files(
    derainer: Derainer,
    jobs: list[Job],
    *,
    overwrite: bool = False,
    quality: int | None = None,
    sidecar: bool = True,
    video: VideoOptions = VideoOptions(),
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Derain every job (images and videos); complete existing outputs are skipped unless `overwrite` (so a
    killed batch resumes)."""

    def derain_frame(rgb: np.ndarray, index: int) -> np.ndarray:
        # As the photo path does it: 8-bit frame -> float -> network -> rounded to 8 bits.
        return to_uint8(derainer.derain(rgb.astype(np.float32) / 255.0))

    def tile_progress(done: int, total: int) -> None:
        on_tile(done, total, derainer.plan_line())

    def derain_one(job: Job) -> ItemResult:
        if is_video_name(job.source):
            described = derainer.describe()
            run_key = f"{described.get('weights_sha256')}:{described.get('precision')}:{derainer.tile}"
            return run_video_job(job, derain_frame, video, record=described, run_key=run_key, on_frame=on_frame)
        started = time.perf_counter()
        image = read_image(job.source)
        height, width = image.rgb.shape[:2]
        image.rgb = derainer.derain(image.rgb, on_tile=tile_progress if on_tile else None)
        data = encode_image(image, job.output.suffix, quality)
        seconds = time.perf_counter() - started
        if sidecar:
            record = {
                "input": str(job.source),
                "output": str(job.output),
                "output_sha256": sha256_bytes(data),
                **derainer.describe(),
                **getattr(derainer, "last_choice", {}),
                "plan": getattr(derainer, "last_plan", "whole"),
                "tile": derainer.last_tile,
                "halo": derainer.halo if getattr(derainer, "last_plan", "whole") == "two-pass" else 0,
                "size": [width, height],
                "seconds": round(seconds, 3),
                "rainkit_version": __version__,
            }
            # The sidecar goes first: an image without its record is redone on resume, never the reverse.
            atomic_write_json(sidecar_path(job.output), record)
        atomic_write_bytes(job.output, data)
        return ItemResult(job.label, str(job.output), "done", seconds=seconds, width=width, height=height,
                          tile=derainer.last_tile)

    def outputs_of(job: Job) -> list[Path]:
        return [video_output_of(job, video) if job.source is not None and is_video_name(job.source) else job.output]

    settings = {**derainer.describe(), "tile": derainer.tile if derainer.tile is not None else "auto"}
    return run_batch(jobs, derain_one, outputs_of=outputs_of, overwrite=overwrite, decode=check_output,
                     settings=settings, on_start=on_start, on_progress=on_progress)


def derain_paths(
    inputs: list[str],
    output: str | Path | None = None,
    *,
    model: str = "sapnet",
    weights: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    tile: int | None = None,
    backend: str = "torch",
    recursive: bool = False,
    fmt: str = "png",
    quality: int | None = None,
    overwrite: bool = False,
    sidecar: bool = True,
    shard: Shard | str | None = None,
    video: VideoOptions = VideoOptions(),
    max_memory: int | str | None = None,
    rain: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Everything `rainkit derain` does, as one call: plan outputs (videos keep a video container, or become
    PNG sequences with `video.frames_dir`), take this shard's share (`shard`: `K/N`, default torchrun's rank
    when set), load the model, run the batch. `backend` "onnxruntime" runs an ONNX export of the weights on the
    CPU (`rainkit.export.onnx_engine`; exported into rainkit's cache on first use). `max_memory` ("3G") caps the
    process's memory: large images are tiled to stay under it. `rain` ("auto", "light", "heavy") chooses between
    the default weights' light- and heavy-rain models (`rainkit.derain.engine.load_derainer`)."""
    from rainkit.derain.engine import load_derainer

    if backend not in BACKENDS:
        raise ParameterError("backend", f"'{backend}' is not one of {', '.join(BACKENDS)}")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    jobs = shard.take(plan_jobs(inputs, output, recursive=recursive, fmt=fmt, beside_suffix=SUFFIX_SINGLE,
                                videos=True))
    if any(job.source is not None and is_video_name(job.source) for job in jobs):
        video.validate()
    if backend == "onnxruntime":
        from rainkit.export.onnx_engine import load_onnx_derainer

        derainer = load_onnx_derainer(model, weights, device=device, precision=precision, tile=tile)
    else:
        derainer = load_derainer(model, weights, device=device, precision=precision, tile=tile,
                                 max_memory=max_memory, rain=rain)
    result = derain_files(derainer, jobs, overwrite=overwrite, quality=quality, sidecar=sidecar, video=video,
                          on_start=on_start, on_progress=on_progress, on_tile=on_tile, on_frame=on_frame)
    if not shard.whole:
        result.settings["shard"] = str(shard)
    if backend == "onnxruntime":
        result.settings["onnx_exported"] = derainer.exported_now
    return result
