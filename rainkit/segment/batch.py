"""`rainkit segment` as one call: ESPNet label maps (8-bit PNGs of Cityscapes train ids, 19 = unlabelled) for
files, folders and globs, resumable, sharded, with a folder record of the model and settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.data.images import read_image, to_uint8, write_image
from rainkit.errors import InputError, RainkitError
from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
from rainkit.io.batch import BatchResult, ItemResult, Job, Shard, plan_jobs, run_batch

RECORD_NAME = "rainkit-segment.json"
OVERLAY_DIR = "overlay"
# The Cityscapes colours of the 19 training classes (rainkit.models.espnet.CITYSCAPES_CLASSES order), then unlabelled.
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 0),
)


def colour_overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the Cityscapes colour of each label over float RGB in [0, 1]; unlabelled pixels (19) keep the image."""
    palette = np.asarray(CITYSCAPES_PALETTE, np.float32) / 255.0
    colours = palette[labels.astype(np.int64) % len(palette)]
    blended = (1.0 - alpha) * rgb + alpha * colours
    unlabelled = labels == len(CITYSCAPES_PALETTE) - 1
    blended[unlabelled] = rgb[unlabelled]
    return blended


def segment_paths(
    inputs: list[str],
    output: str | Path,
    *,
    weights: str = "espnet.cityscapes",
    device: str = "auto",
    width: int | None = None,
    overlay: bool = False,
    recursive: bool = False,
    overwrite: bool = False,
    shard: Shard | str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
) -> BatchResult:
    """Write `output/<name>.png` label maps (sub-folders of folder inputs kept) and, with `overlay`, colour
    overlays into `output/overlay/`; `width` segments at that width (labels resized back). A folder made with
    other weights or width is refused unless `overwrite`. The result's settings are the folder record."""
    import cv2

    from rainkit.models.espnet import CITYSCAPES_CLASSES, load_segmenter

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RainkitError(f"output {output} exists and is not a folder")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    jobs = shard.take(plan_jobs(inputs, output, recursive=recursive, fmt="png"))
    segmenter = load_segmenter(weights, device=device, width=width)
    described = segmenter.describe()
    classes = segmenter.model.classes
    record = {"rainkit_version": __version__, "model": "espnet", "weights": described["weights"],
              "weights_sha256": described["weights_sha256"], "width": width,
              "classes": list(CITYSCAPES_CLASSES) if classes == len(CITYSCAPES_CLASSES) else classes,
              "format": "8-bit PNG of class ids, named like the images"}
    record_path = output / RECORD_NAME
    if record_path.exists() and not overwrite:
        previous = json.loads(record_path.read_text())
        changed = {k: (previous.get(k), record[k]) for k in ("weights_sha256", "width") if previous.get(k) != record[k]}
        if changed:
            raise RainkitError(f"{record_path}: this folder holds label maps made with other settings {changed}; "
                               f"use another output folder or overwrite")
    atomic_write_json(record_path, record)

    def overlay_output(job: Job) -> Path:
        return output / OVERLAY_DIR / job.output.relative_to(output)

    def outputs_of(job: Job) -> list[Path]:
        return [job.output] + ([overlay_output(job)] if overlay else [])

    def segment_one(job: Job) -> ItemResult:
        # Quantised to 8 bits first, as `rainkit train tpsence --segmenter` reads its images, so both give the
        # same maps.
        rgb = to_uint8(read_image(job.source).rgb).astype(np.float32) / 255.0
        labels = segmenter.segment(rgb)
        ok, png = cv2.imencode(".png", labels)
        if not ok:
            raise InputError(f"{job.output}: could not encode the label map")
        if overlay:
            write_image(overlay_output(job), colour_overlay(rgb, labels))
        atomic_write_bytes(job.output, png.tobytes())
        return ItemResult(job.label, str(job.output), "done", width=rgb.shape[1], height=rgb.shape[0])

    result = run_batch(jobs, segment_one, outputs_of=outputs_of, overwrite=overwrite, settings=record,
                       on_start=on_start, on_progress=on_progress)
    if not shard.whole:
        result.settings["shard"] = str(shard)
    return result
