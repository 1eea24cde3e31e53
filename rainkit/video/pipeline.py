"""Videos through a per-frame function (deraining, weather), with PyAV (FFmpeg's libraries in a wheel).

What a user gets:

* the same frame count, timestamps (so a variable frame rate is kept), size, display rotation and colour
  range as the input; audio and subtitle streams copied packet for packet; H.264 by default (`codec`,
  `crf`), or a PNG sequence (`frames_dir`);
* decoding runs beside the model (a thread, with a bounded queue of frames ahead), and each chunk is encoded
  as soon as its last frame is made (milliseconds a frame against the model's hundreds), so a video runs at
  the model's speed;
* resumable: the video is processed in chunks of `chunk_frames` frames; each chunk is encoded on its own
  (starting with a key frame) into a part file that is renamed into place when the chunk is done. A killed
  run continues at the first missing chunk, and because every run, interrupted or not, writes the same
  parts and joins them the same way, the final file is identical to an uninterrupted run's;
* a truncated or corrupt input: what decodes is processed and written, and the result says at which frame
  decoding stopped (the caller reports it as a failure).

Nothing here knows about models: `process_video(source, output, fn)` calls `fn(rgb_uint8, index)` for
every frame in display orientation and expects an RGB uint8 frame of the same size back.
"""

from __future__ import annotations

import bisect
import heapq
import json
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from rainkit.errors import InputError, RainkitError
from rainkit.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18
DEFAULT_CHUNK_FRAMES = 120
QUEUE_FRAMES = 8
PARTS_SUFFIX = ".rainkit-parts"


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


def video_output_suffix(source: Path) -> str:
    """The container of an output video: the input's where it holds H.264 with any audio (mp4, mov, mkv),
    else Matroska, which takes every audio and subtitle codec the input may carry."""
    suffix = source.suffix.lower()
    return suffix if suffix in (".mp4", ".mov", ".mkv", ".m4v") else ".mkv"


def _require_av():
    try:
        import av
    except ImportError:
        raise RainkitError("video needs PyAV: pip install av (or pip install 'rainkit[video]')") from None
    return av


# --- what is in a video ----------------------------------------------------------------------------

@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    frames: int  # counted from the packets, not the header's estimate
    fps: float  # average, for display; the timestamps are what is kept
    duration: float  # seconds, from the first to the end of the last frame
    rotation: int  # display rotation in degrees, counter-clockwise
    color_range: int
    pix_fmt: str
    codec: str
    other_streams: list[str] = field(default_factory=list)  # e.g. ["audio:aac", "subtitle:mov_text"]


def _open(path: Path):
    av = _require_av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).split(":")[-1].strip() or type(exc).__name__
        raise InputError(f"{path}: not a readable video ({reason})") from None
    if not container.streams.video:
        found = ", ".join(s.type for s in container.streams) or "no stream at all"
        container.close()
        raise InputError(f"{path}: no video stream ({found})")
    return container


# A file whose header promises this much more than its last video frame was cut short.
CUT_SHORT_SECONDS = 0.5


def _frame_times(container, stream) -> tuple[list[int], str | None]:
    """The presentation timestamps of every frame, in display order, from the packets (no decoding), and why
    the packets end early when they do (a damaged or cut file), else None."""
    import av

    times = []
    problem = None
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size:
                times.append(packet.pts)
    except av.error.FFmpegError as exc:
        problem = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
    times.sort()
    if problem is None and times:
        promised = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)
        rate = float(stream.guessed_rate or stream.average_rate or 25)
        found = float((times[-1] - times[0]) * stream.time_base) + 1.0 / rate
        if promised > found + CUT_SHORT_SECONDS:
            problem = f"the file ends at {found:.2f} s of the {promised:.2f} s its header gives"
    return times, problem


@dataclass
class _Probe:
    """What one pass over a video's packets tells: its properties, every frame's timestamp in display order, why
    the packets end early (or None), and the stream's time base and frame rate."""

    info: VideoInfo
    times: list[int]
    cut: str | None
    time_base: Fraction
    rate: Fraction


def _probe(path: Path) -> _Probe:
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.error.FFmpegError):
            raise InputError(f"{path}: the video stream has no decodable frame") from None
        rotation = int(round(first.rotation or 0)) % 360
        container.seek(0)
        times, cut = _frame_times(container, stream)
        rate = stream.guessed_rate or stream.average_rate or Fraction(25)
        duration = float((times[-1] - times[0]) * stream.time_base) + 1.0 / float(rate) if times else 0.0
        info = VideoInfo(str(path), context.width, context.height, len(times), float(rate),
                         duration, rotation, int(context.color_range or 0), context.pix_fmt or "yuv420p",
                         context.name, [f"{s.type}:{s.codec_context.name if s.codec_context else '?'}"
                                        for s in container.streams if s.type != "video"])
        return _Probe(info, times, cut, stream.time_base, rate)


def probe_video(path: str | Path) -> VideoInfo:
    return _probe(Path(path)).info


# --- orientation ---------------------------------------------------------------------------------

def _to_display(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Coded frame -> as shown (rotation is counter-clockwise, as FFmpeg's display matrix reads)."""
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation % 360 else rgb


def _to_coded(rgb: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90))) if rotation % 360 else rgb


# --- decoding --------------------------------------------------------------------------------------

@dataclass
class _Decoded:
    index: int
    pts: int
    rgb: np.ndarray


@dataclass
class _DecodeEnd:
    error: str | None = None  # why decoding stopped early, None at the normal end


def _first_index(times: list[int], pts: int | None, start: int) -> int:
    """The display index of the first frame decoded after seeking for frame `start` (the first frame with its
    timestamp: two frames may share one in a damaged file, and a frame without one is taken as `start`)."""
    return start if pts is None else bisect.bisect_left(times, pts)


def _decode(path: Path, times: list[int], start: int, stop: int, out: queue.Queue, cancel: threading.Event) -> None:
    """Decode frames `start`..`stop-1` (by display order) into `out`, then a _DecodeEnd. Frames are counted as
    they come (the decoder gives them in display order), so frames sharing a timestamp are all kept."""
    import av

    error = None
    index = 0 if start == 0 else None
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            if start > 0:
                container.seek(times[start], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if cancel.is_set():
                    return
                if index is None:
                    index = _first_index(times, frame.pts, start)
                if index >= stop:
                    break
                if index >= start:
                    pts = frame.pts if frame.pts is not None else times[index]
                    out.put(_Decoded(index, pts, frame.to_ndarray(format="rgb24")))
                index += 1
            if index is None or index < stop:
                error = "the stream ends early"
    except av.error.FFmpegError as exc:
        error = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
    except InputError as exc:
        error = str(exc)
    out.put(_DecodeEnd(error))


class FrameReader:
    """Frames of one video by index (display order, display orientation, RGB uint8), read forwards: asking
    for frames in increasing order decodes the file once (for `rainkit detect` on every Nth frame)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        probe = _probe(self.path)
        self.info, self.times = probe.info, probe.times
        self._container = None
        self._frames = None
        self._next = 0

    def __len__(self) -> int:
        return len(self.times)

    def read(self, index: int) -> np.ndarray:
        import av

        if not 0 <= index < len(self.times):
            raise InputError(f"{self.path}: no frame {index} (the video has {len(self.times)})")
        if self._container is None or self._next is None or index < self._next:
            self.close()
            self._container = _open(self.path)
            stream = self._container.streams.video[0]
            if index > 0:
                self._container.seek(self.times[index], stream=stream, backward=True, any_frame=False)
            self._frames = self._container.decode(stream)
            self._next = 0 if index == 0 else None
        try:
            for frame in self._frames:
                if self._next is None:
                    self._next = _first_index(self.times, frame.pts, index)
                current = self._next
                self._next += 1
                if current == index:
                    return _to_display(frame.to_ndarray(format="rgb24"), self.info.rotation)
                if current > index:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"{self.path}: frame {index} does not decode ({str(exc).split(':', 1)[-1].strip()})") from None
        raise InputError(f"{self.path}: frame {index} does not decode (the stream ends before it)")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


# --- parts -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodeSettings:
    codec: str = DEFAULT_CODEC
    crf: int | None = DEFAULT_CRF
    chunk_frames: int = DEFAULT_CHUNK_FRAMES


# Bit-exact container writing: no random Matroska segment UID, no library version string, so the same frames
# always give the same bytes.
BITEXACT = {"fflags": "+bitexact"}


def _encoder_options(settings: EncodeSettings) -> dict[str, str]:
    # One encoder thread, so nothing about a chunk's encoding depends on scheduling. The network, not the
    # encoder, sets a video's speed.
    options = {"threads": "1"}
    if settings.crf is not None and settings.codec in ("libx264", "libx264rgb", "libx265", "libvpx-vp9"):
        options["crf"] = str(settings.crf)
    return options


def _encode_part(target: Path, info: VideoInfo, time_base: Fraction, rate, frames: list[tuple[int, np.ndarray]],
                 settings: EncodeSettings) -> None:
    """Encode frames (pts, coded-orientation RGB) into a part file, atomically. No B-frames, so decoding
    and presentation order agree and parts join with increasing timestamps."""
    av = _require_av()
    with atomic_write(target) as handle:
        with av.open(handle, "w", format="matroska", container_options=BITEXACT) as container:
            stream = container.add_stream(settings.codec, rate=rate, options=_encoder_options(settings))
            stream.width, stream.height = info.width, info.height
            if settings.codec == "libx264rgb":
                stream.pix_fmt = "bgr24"
            elif settings.codec in ("libx264", "libx265"):
                stream.pix_fmt = info.pix_fmt if info.pix_fmt in ("yuv420p", "yuv422p", "yuv444p") else "yuv420p"
            stream.time_base = time_base
            context = stream.codec_context
            context.time_base = time_base
            context.max_b_frames = 0
            context.color_range = info.color_range
            for pts, rgb in frames:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = pts
                frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def _join(source: Path, parts: list[Path], target: Path, info: VideoInfo) -> None:
    """Mux the parts' video packets and the source's other streams, in time order, into `target`."""
    av = _require_av()
    opened = [av.open(str(p)) for p in parts]
    try:
        with _open(source) as original, atomic_write(target) as handle:
            with av.open(handle, "w", format=_container_format(target), container_options=BITEXACT) as container:
                video = container.add_stream_from_template(opened[0].streams.video[0])
                if info.rotation:
                    video.set_display_rotation(info.rotation)
                copies = {}
                for stream in original.streams:
                    if stream.type in ("audio", "subtitle"):
                        try:
                            copies[stream.index] = container.add_stream_from_template(stream)
                        except (ValueError, av.error.FFmpegError):
                            continue  # a codec this container cannot hold; mkv holds nearly all
                sources = [_packets(p.demux(p.streams.video[0]), video) for p in opened]
                others = [s for s in original.streams if s.index in copies]
                if others:
                    sources.append(_packets(original.demux(*others), None, copies))
                for _, _, packet, stream in heapq.merge(*sources, key=lambda item: (item[0], item[1])):
                    packet.stream = stream
                    container.mux(packet)
    finally:
        for container in opened:
            container.close()


def _packets(demuxed, stream, by_index: dict | None = None) -> Iterator:
    """(time in seconds, order, packet, output stream) of real packets, in the order the demuxer gives them."""
    import av

    order = 0
    try:
        for packet in demuxed:
            if packet.dts is None or not packet.size:
                continue
            order += 1
            target = stream if stream is not None else by_index[packet.stream.index]
            yield float(packet.dts * packet.time_base), order, packet, target
    except av.error.FFmpegError:
        return


def _container_format(path: Path) -> str:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}.get(path.suffix.lower(), "matroska")


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class VideoResult:
    input: str
    output: str
    frames: int  # frames in the input
    frames_written: int
    seconds: float
    resumed_from_frame: int = 0
    stopped: str | None = None  # why decoding stopped before the end, None when complete
    info: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.stopped is None


FrameFn = Callable[[np.ndarray, int], np.ndarray]


def process_video(source: str | Path, output: str | Path, fn: FrameFn, *, settings: EncodeSettings = EncodeSettings(),
                  frames_dir: str | Path | None = None, run_key: str = "",
                  on_frame: Callable[[int, int], None] | None = None) -> VideoResult:
    """Run `fn` over every frame of `source` and write `output` (or PNGs into `frames_dir`).

    `run_key` names what the frames are made with (model, weights, settings): parts left by a killed run
    are reused only when it matches. `on_frame(done, total)` reports progress.
    """
    source, output = Path(source), Path(output)
    started = time.perf_counter()
    probe = _probe(source)
    info, times, cut, time_base, rate = probe.info, probe.times, probe.cut, probe.time_base, probe.rate
    if info.frames == 0:
        raise InputError(f"{source}: the video stream holds no frames")
    if frames_dir is not None:
        result = _run_frames(source, Path(frames_dir), fn, info, times, on_frame, cut)
    else:
        result = _run_parts(source, output, fn, info, times, time_base, rate, settings, run_key, on_frame, cut)
    result.seconds = time.perf_counter() - started
    result.info = asdict(info)
    return result


def _pipeline(source: Path, times: list[int], start: int, stop: int, fn: FrameFn, rotation: int,
              sink: Callable[[int, int, np.ndarray], None], on_frame, total: int) -> tuple[int, str | None]:
    """Decode (a thread, a bounded queue ahead) -> fn -> sink (this thread). Returns the number of frames sunk
    and why decoding stopped early (or None).

    Encoding stays on this thread: encoding on a third thread, beside the decoder and the network, gave the
    same frames slightly different x264 output now and then (5 distinct files in 30 runs of one clip; one in
    40 this way), and a resumed video must come out byte for byte as an uninterrupted one. Encoding a frame
    costs a few milliseconds against the network's hundreds, so little overlap is lost."""
    decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
    cancel = threading.Event()
    reader = threading.Thread(target=_decode, args=(source, times, start, stop, decoded, cancel), daemon=True)
    reader.start()
    done, stopped = 0, None
    try:
        while True:
            item = decoded.get()
            if isinstance(item, _DecodeEnd):
                stopped = item.error
                break
            rgb = _to_coded(fn(_to_display(item.rgb, rotation), item.index), rotation)
            sink(item.index, item.pts, rgb)
            done += 1
            if on_frame:
                on_frame(start + done, total)
    finally:
        cancel.set()
        while reader.is_alive():  # let a reader blocked on the full queue finish
            try:
                decoded.get(timeout=0.05)
            except queue.Empty:
                pass
    return done, stopped


def _stopped_message(source: Path, written: int, total: int, reason: str | None, cut: str | None) -> str | None:
    """Why the output is not the whole video, or None when it is."""
    if reason is not None:
        return (f"{source}: decoding stopped at frame {written} of {total} ({reason}); the output holds frames "
                f"0-{written - 1}")
    if cut is not None:
        return f"{source}: the video is damaged or cut short ({cut}); the output holds the {written} frames it has"
    return None


def _run_frames(source: Path, folder: Path, fn: FrameFn, info: VideoInfo, times: list[int], on_frame,
                cut: str | None = None) -> VideoResult:
    from rainkit.data.images import read_image

    folder.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(times))))
    names = [folder / f"{i:0{width}d}.png" for i in range(len(times))]
    start = 0
    while start < len(names) and names[start].is_file():  # written atomically, in order: present means complete
        start += 1
    if start:
        try:
            read_image(names[start - 1])
        except InputError:
            start -= 1

    def sink(index: int, pts: int, rgb: np.ndarray) -> None:
        import cv2

        ok, png = cv2.imencode(".png", _to_display(rgb, info.rotation)[:, :, ::-1])
        atomic_write_bytes(names[index], png.tobytes())

    done, stopped = _pipeline(source, times, start, len(times), fn, info.rotation, sink, on_frame, len(times))
    written = start + done
    return VideoResult(str(source), str(folder), len(times), written, 0.0, start,
                       _stopped_message(source, written, len(times), stopped, cut))


def _run_parts(source: Path, output: Path, fn: FrameFn, info: VideoInfo, times: list[int], time_base, rate,
               settings: EncodeSettings, run_key: str, on_frame, cut: str | None = None) -> VideoResult:
    parts_dir = output.with_name(f".{output.name}{PARTS_SUFFIX}")
    plan = {"source_frames": len(times), "chunk_frames": settings.chunk_frames, "codec": settings.codec,
            "crf": settings.crf, "run": run_key}
    plan_path = parts_dir / "plan.json"
    if parts_dir.is_dir():
        try:
            previous = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != plan:
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)
    chunks = [(s, min(s + settings.chunk_frames, len(times))) for s in range(0, len(times), settings.chunk_frames)]
    part_paths = [parts_dir / f"part-{k:05d}.mkv" for k in range(len(chunks))]
    first_missing = next((k for k, p in enumerate(part_paths) if not p.is_file()), len(chunks))
    resumed_from = chunks[first_missing][0] if first_missing < len(chunks) else len(times)

    buffer: list[tuple[int, np.ndarray]] = []
    written_parts = list(part_paths[:first_missing])
    position = {"chunk": first_missing}

    def sink(index: int, pts: int, rgb: np.ndarray) -> None:
        buffer.append((pts, rgb))
        chunk = position["chunk"]
        if index == chunks[chunk][1] - 1:
            _encode_part(part_paths[chunk], info, time_base, rate, buffer, settings)
            written_parts.append(part_paths[chunk])
            buffer.clear()
            position["chunk"] = chunk + 1

    stopped = None
    done = 0
    if first_missing < len(chunks):
        done, stopped = _pipeline(source, times, resumed_from, len(times), fn, info.rotation, sink, on_frame,
                                  len(times))
        if buffer:  # decoding stopped inside a chunk: keep what was made, as the last part
            partial = parts_dir / f"part-{position['chunk']:05d}.partial.mkv"
            _encode_part(partial, info, time_base, rate, buffer, settings)
            written_parts.append(partial)
    written = resumed_from + done if first_missing < len(chunks) else len(times)
    if not written_parts:
        raise InputError(f"{source}: no frame could be decoded")
    _join(source, written_parts, output, info)
    if stopped is None:  # finished (a cut-short source included: rerunning it cannot get more frames)
        shutil.rmtree(parts_dir, ignore_errors=True)
    else:
        for path in written_parts:  # a partial part must not pass for a finished chunk on a rerun
            if path.name.endswith(".partial.mkv"):
                path.unlink(missing_ok=True)
    return VideoResult(str(source), str(output), len(times), written, 0.0, resumed_from,
                       _stopped_message(source, written, len(times), stopped, cut))
