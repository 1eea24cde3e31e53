"""`rainkit generate` as one call: add weather to files, resumable, with a run record.

Two methods: `physics` (rainkit.synth.physics, seeded per image) and `tpsence`, a learned
TPSeNCE generator (rainkit.synth.tpsence: native resolution, seam-free tiles). `auto` picks the
learned generator when weights for the domain are registered and present (`tpsence.<domain>`, see
`rainkit.synth.tpsence.default_generator_weights`), otherwise physics; `choose_method` says which
and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.data.images import encode_image, read_image, to_uint8
from rainkit.errors import InputError, ParameterError, RainkitError
from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
from rainkit.io.batch import BatchResult, ItemResult, Job, Shard, plan_jobs, run_batch
from rainkit.synth.motion import DEFAULT_RAIN_FALL, MovingWeather
from rainkit.synth.physics import DOMAINS, PRESETS, image_seed, synthesize
from rainkit.video.batch import VideoOptions, check_output, run_video_job, video_output_of
from rainkit.video.pipeline import is_video_name

METHODS = ("physics", "tpsence", "auto")
RECORD_NAME = "rainkit-generate.json"
# Record keys that may differ between runs into the same folder without changing the outputs.
_UNCOMPARED = ("rainkit_version", "device", "tile", "weights")


@dataclass(frozen=True)
class GenerateSettings:
    method: str = "physics"
    domain: str = "rain"
    preset: str = "light"  # physics only
    intensity: float | None = None  # physics only
    seed: int = 0
    weights: str | None = None  # tpsence: registered name or file; None = the domain's registered weights
    device: str = "auto"  # tpsence
    precision: str = "fp32"  # tpsence
    tile: int | None = None  # tpsence: None = automatic, 0 = whole image, N = the single pass in N px tiles
    max_memory: int | str | None = None  # tpsence: cap the process's memory ("3G"); large images run in tiles under it
    # tpsence: None = the registered weights' own width (WeightsEntry.work_width; 0 for a file), 0 = native
    # resolution, W = make the weather at W px wide (rainkit.synth.tpsence)
    work_width: int | None = None
    fall_speed: float = DEFAULT_RAIN_FALL  # physics video: pixels a frame of the nearest rain at the 480 px reference

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ParameterError("method", f"unknown method '{self.method}' (available: {', '.join(METHODS)})")
        if self.domain not in DOMAINS:
            raise ParameterError("domain", f"unknown domain '{self.domain}' (use {', '.join(DOMAINS)})")
        if self.preset not in PRESETS:
            raise ParameterError("preset", f"unknown preset '{self.preset}' (use {', '.join(PRESETS)})")
        if self.intensity is not None and not 0.0 <= self.intensity <= 1.0:
            raise ParameterError("intensity", f"must be within 0..1, got {self.intensity}")
        if self.tile is not None and self.tile < 0:
            raise ParameterError("tile", f"must be 0 (whole image) or a positive size, got {self.tile}")
        if self.fall_speed < 0:
            raise ParameterError("fall_speed", f"must be 0 (still weather) or more, got {self.fall_speed}")


@dataclass(frozen=True)
class MethodChoice:
    method: str  # "physics" or "tpsence"
    weights: str | None  # tpsence: registered name or path
    reason: str  # one line: which method and why


def no_learned_weights_message(domain: str) -> str:
    return (f"no learned {domain} generator is registered yet (weights 'tpsence.{domain}'): use `method=physics`, "
            f"or train one with `rainkit train tpsence --domain {domain} --clear DIR --target DIR` and pass "
            f"`weights` RUN/generator.safetensors")


def choose_method(method: str, domain: str, weights: str | None = None) -> MethodChoice:
    """Resolve `auto` and the default weights of `tpsence`, offline and without loading a network.

    physics: the physics model. tpsence: `weights`, else the domain's registered `tpsence.<domain>`
    weights; none registered is an error naming `--method physics` and `rainkit train tpsence`.
    auto: tpsence when `weights` are given or the domain's registered weights are present and
    verified here, otherwise physics (the reason says why). Weights chosen for tpsence are
    resolved here, so a missing or unverified file fails before any work.
    """
    if method not in METHODS:
        raise RainkitError(f"unknown method '{method}' (available: {', '.join(METHODS)})")
    if method == "physics":
        if weights:
            raise ParameterError("weights", "is for the learned generator: use `method=tpsence` (or auto), not physics")
        return MethodChoice("physics", None, "physics model")
    from rainkit.hub.weights import check_weights, resolve_weights

    if weights:
        resolve_weights(weights)  # a missing or unverified file fails here, in one line, before any work
        return MethodChoice("tpsence", str(weights), f"learned TPSeNCE generator ({weights})")
    from rainkit.synth.tpsence import default_generator_weights

    entry = default_generator_weights(domain)
    if entry is None:
        if method == "tpsence":
            raise RainkitError(no_learned_weights_message(domain))
        return MethodChoice("physics", None, f"no learned {domain} weights are registered (tpsence.{domain}), "
                                             f"so the physics model was used")
    if method == "auto":
        status = check_weights(entry)
        if status.state != "verified":
            why = "not found here" if status.state == "missing" else "do not verify (sha256 mismatch)"
            return MethodChoice("physics", None, f"learned weights '{entry.name}' {why} (`rainkit weights fetch "
                                                 f"{entry.name}` gets them), so the physics model was used")
    else:
        resolve_weights(entry.name)  # the registry's one-line message when they are not on this machine
    return MethodChoice("tpsence", entry.name, f"learned TPSeNCE generator ({entry.name})")


def _check_record(record_path: Path, record: dict) -> None:
    previous = json.loads(record_path.read_text())
    changed = {k: (previous.get(k), v) for k, v in record.items() if k not in _UNCOMPARED and previous.get(k) != v}
    if changed:
        raise RainkitError(f"{record_path}: this folder was generated with other settings {changed}; "
                           f"use another output folder or `overwrite`")


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
    shard: Shard | str | None = None,
    video: VideoOptions = VideoOptions(),
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
    on_tile: Callable[[int, int, str], None] | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Write weather versions of `inputs` (images and videos) into `output` (`shard`: only this shard's share,
    `K/N`; default torchrun's rank when set).

    With `pairs`, writes `output/rain/<name>` (degraded) and `output/norain/<name>.png` (the clean
    input, losslessly), a layout `rainkit train` and `rainkit benchmark` read; other domains use
    `output/<domain>/` and `output/clear/`.
    Physics: each image's randomness is seeded from `settings.seed` and its name, so results do not
    depend on batch order or on which images were already done; in a video, rain and snow move from
    frame to frame (`rainkit.synth.motion`, `settings.fall_speed`). tpsence: the generator is
    deterministic, frame by frame; the seed is recorded all the same. `output/rainkit-generate.json` records the
    method and, for the learned one, the model, weights and their sha256. `on_tile(done, total, plan)` reports the
    tiles of an image the generator runs in tiles, `plan` naming how ("tiles of 256 px, single pass").
    """
    settings.validate()
    choice = choose_method(settings.method, settings.domain, settings.weights)
    settings = replace(settings, method=choice.method, weights=choice.weights)
    output = Path(output)
    degraded_dir = output / settings.domain if pairs else output
    clean_dir = (output / ("norain" if settings.domain == "rain" else "clear")) if pairs else None
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    jobs = shard.take(plan_jobs(inputs, degraded_dir, recursive=recursive, fmt=fmt, videos=True))
    if any(job.source is not None and is_video_name(job.source) for job in jobs):
        video.validate()
    generator = None
    if settings.method == "physics":
        record = {"rainkit_version": __version__, "method": "physics", "domain": settings.domain,
                  "preset": settings.preset, "intensity": settings.intensity, "seed": settings.seed, "pairs": pairs,
                  "fall_speed": settings.fall_speed}
    else:
        from rainkit.synth.tpsence import load_generator

        generator = load_generator(settings.weights, settings.device, settings.precision, tile=settings.tile,
                                   max_memory=settings.max_memory, work_width=settings.work_width)
        described = generator.describe()
        record = {"rainkit_version": __version__, "method": "tpsence", "domain": settings.domain,
                  "seed": settings.seed, "pairs": pairs, "model": described["model"],
                  "weights": described["weights"], "weights_sha256": described["weights_sha256"],
                  "precision": described["precision"], "device": described["device"],
                  "work_width": described["work_width"],
                  "tile": settings.tile if settings.tile is not None else "auto"}
    record_path = output / RECORD_NAME
    if record_path.exists() and not overwrite:
        _check_record(record_path, record)
    atomic_write_json(record_path, record)
    if generator is not None:
        def tile_progress(done: int, total: int) -> None:
            on_tile(done, total, generator.plan_line())

        def render(rgb: np.ndarray, name: str) -> np.ndarray:
            return generator.generate(rgb, on_tile=tile_progress if on_tile else None)
    else:
        def render(rgb: np.ndarray, name: str) -> np.ndarray:
            return synthesize(rgb, settings.domain, preset=settings.preset, intensity=settings.intensity,
                              seed=image_seed(settings.seed, name))

    def clean_output(job: Job) -> Path | None:
        return clean_dir / job.output.relative_to(degraded_dir).with_suffix(".png") if clean_dir else None

    def outputs_of(job: Job) -> list[Path]:
        if job.source is not None and is_video_name(job.source):
            return [video_output_of(job, video)]
        return [job.output] + ([clean_output(job)] if clean_dir else [])

    def generate_video(job: Job) -> ItemResult:
        if pairs:
            raise InputError(f"{job.source}: the pairs layout takes images only; generate videos without pairs")
        name = job.output.relative_to(degraded_dir).with_suffix("").as_posix()
        if generator is not None:
            def frame_fn(rgb: np.ndarray, index: int) -> np.ndarray:
                return to_uint8(generator.generate(rgb.astype(np.float32) / 255.0))
        else:
            weather: list[MovingWeather] = []

            def frame_fn(rgb: np.ndarray, index: int) -> np.ndarray:
                if not weather:
                    weather.append(MovingWeather(rgb.shape[:2], settings.domain, preset=settings.preset,
                                                 intensity=settings.intensity, seed=image_seed(settings.seed, name),
                                                 fall_speed=settings.fall_speed))
                return to_uint8(weather[0].frame(rgb.astype(np.float32) / 255.0, index))
        return run_video_job(job, frame_fn, video, record=record, run_key=json.dumps(record, sort_keys=True),
                             on_frame=on_frame)

    def generate_one(job: Job) -> ItemResult:
        if is_video_name(job.source):
            return generate_video(job)
        image = read_image(job.source)
        height, width = image.rgb.shape[:2]
        name = job.output.relative_to(degraded_dir).with_suffix("").as_posix()
        clean = image.rgb
        image.rgb = render(clean, name)
        data = encode_image(image, job.output.suffix, quality)
        clean_out = clean_output(job)
        if clean_out is not None:
            image.rgb = clean
            atomic_write_bytes(clean_out, encode_image(image, ".png"))
        atomic_write_bytes(job.output, data)
        return ItemResult(job.label, str(job.output), "done", width=width, height=height,
                          tile=generator.last_tile if generator is not None else None)

    result = run_batch(jobs, generate_one, outputs_of=outputs_of, overwrite=overwrite, decode=check_output,
                       settings=record,
                       on_start=on_start, on_progress=on_progress)
    if not shard.whole:
        result.settings["shard"] = str(shard)
    return result


def megapixels_per_second(result: BatchResult) -> float:
    done = [i for i in result.items if i.status == "done"]
    seconds = sum(i.seconds for i in done)
    pixels = np.sum([i.width * i.height * (i.frames or 1) for i in done])
    return float(pixels / 1e6 / seconds) if seconds else 0.0
