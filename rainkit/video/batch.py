"""Video jobs on rainkit's batch layer: one video is one job; its sidecar records what made it and whether it
is complete, which is what a resumed batch trusts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.errors import InputError, ParameterError
from rainkit.io.atomic import atomic_write_json
from rainkit.io.batch import ItemResult, Job, sidecar_path
from rainkit.video.pipeline import (DEFAULT_CHUNK_FRAMES, DEFAULT_CODEC, DEFAULT_CRF, EncodeSettings, is_video_name,
                                    probe_video, process_video)


@dataclass(frozen=True)
class VideoOptions:
    """How videos are written: `codec` (an FFmpeg encoder; libx264rgb with crf 0 is lossless RGB) and `crf`,
    or, with `frames_dir`, PNG sequences in `frames_dir/<name>/` instead of videos."""

    codec: str = DEFAULT_CODEC
    crf: int | None = DEFAULT_CRF
    frames_dir: str | Path | None = None
    chunk_frames: int = DEFAULT_CHUNK_FRAMES

    def validate(self) -> None:
        if self.crf is not None and not 0 <= self.crf <= 51:
            raise ParameterError("crf", f"must be within 0..51, got {self.crf}")
        if self.chunk_frames < 1:
            raise ParameterError("chunk_frames", f"must be at least 1, got {self.chunk_frames}")
        from rainkit.video.pipeline import _require_av

        av = _require_av()
        if self.codec not in av.codecs_available:
            raise ParameterError("codec", f"unknown encoder '{self.codec}' (e.g. libx264, libx264rgb, mpeg4)")

    def encode_settings(self) -> EncodeSettings:
        return EncodeSettings(self.codec, self.crf, self.chunk_frames)

    def describe(self) -> dict:
        if self.frames_dir is not None:
            return {"video_output": "png frames"}
        return {"video_codec": self.codec, "video_crf": self.crf, "video_chunk_frames": self.chunk_frames}


def video_output_of(job: Job, options: VideoOptions) -> Path:
    return Path(options.frames_dir) / job.key if options.frames_dir is not None else job.output


def check_output(path: Path) -> None:
    """Raise InputError unless `path` is a finished output: a video (or frame folder) whose sidecar says it
    is complete; an image is checked by decoding it."""
    from rainkit.data.images import read_image

    if not (is_video_name(path) or path.is_dir()):
        read_image(path)
        return
    try:
        record = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or "complete" not in record:
        raise InputError(f"{path}: no record of a finished run beside it")
    if not record["complete"]:
        raise InputError(f"{path}: made from a source whose decoding stopped at frame {record.get('frames_written')}")
    if path.is_dir():
        if len(list(path.glob("*.png"))) != record.get("frames"):
            raise InputError(f"{path}: holds fewer frames than its record")
    else:
        probe_video(path)


def run_video_job(job: Job, frame_fn: Callable[[np.ndarray, int], np.ndarray], options: VideoOptions, *,
                  record: dict, run_key: str, on_frame: Callable[[int, int], None] | None = None) -> ItemResult:
    """Process one video job; writes the output and its sidecar, and raises InputError (after writing what
    decoded) when the source stopped decoding early."""
    output = video_output_of(job, options)
    result = process_video(job.source, output, frame_fn, settings=options.encode_settings(),
                           frames_dir=output if options.frames_dir is not None else None, run_key=run_key,
                           on_frame=on_frame)
    sidecar = {
        "input": str(job.source),
        "output": str(output),
        **record,
        **options.describe(),
        "frames": result.frames,
        "frames_written": result.frames_written,
        "complete": result.complete,
        "stopped": result.stopped,
        "resumed_from_frame": result.resumed_from_frame,
        "video": {k: result.info[k] for k in ("width", "height", "fps", "duration", "rotation", "color_range",
                                              "pix_fmt", "codec", "other_streams")},
        "seconds": round(result.seconds, 3),
        "rainkit_version": __version__,
    }
    if result.complete and output.is_file():
        from rainkit.hub.weights import sha256_file

        sidecar["output_sha256"] = sha256_file(output)
    atomic_write_json(sidecar_path(output), sidecar)
    if not result.complete:
        raise InputError(result.stopped)
    return ItemResult(job.label, str(output), "done", seconds=result.seconds, width=result.info["width"],
                      height=result.info["height"], frames=result.frames)
