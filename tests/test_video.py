"""Videos in `rainkit derain` and `rainkit generate`: timing, audio and rotation kept, frames equal to the photo
path's, moving weather, resume after an interruption with identical output, damaged files reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is not installed (pip install av)")

from rainkit.cli import main  # noqa: E402
from rainkit.synth.motion import MovingWeather, flicker  # noqa: E402
from rainkit.synth.physics import synthesize  # noqa: E402
from rainkit.video import probe_video  # noqa: E402
from rainkit.video.pipeline import EncodeSettings, process_video  # noqa: E402
import tests.tolerances as TOL  # noqa: E402


def make_clip(path: Path, frames: int = 24, width: int = 48, height: int = 32, fps: int = 10, audio: bool = True,
              rotation: int = 0) -> Path:
    """A small H.264 clip of a textured scene panning sideways, with an AAC tone when `audio`."""
    rng = np.random.default_rng(0)
    base = (rng.random((height, width, 3)) * 200 + 20).astype(np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=8000) if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            for k in range(int(frames / fps * 8000 / 1024) + 1):
                samples = (np.sin((np.arange(1024) + 1024 * k) / 7.0) * 0.2).astype(np.float32)[None].repeat(2, 0)
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = 8000, 1024 * k
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def _derain(tiny: Path, *args: str) -> int:
    return main(["derain", *args, "--weights", str(tiny), "--device", "cpu"])


def test_derained_video_keeps_frames_timing_audio_and_equals_the_photo_path(clip, tmp_path, tiny_sapnet_file):
    out = tmp_path / "out"
    assert _derain(tiny_sapnet_file, str(clip), "-o", str(out), "--codec", "libx264rgb", "--crf", "0") == 0
    source, result = probe_video(clip), probe_video(out / "clip.mp4")
    assert result.frames == source.frames == 24
    assert abs(result.duration - source.duration) <= 1 / source.fps and result.fps == pytest.approx(source.fps)
    assert (result.width, result.height) == (source.width, source.height)
    assert audio_packets(out / "clip.mp4") == audio_packets(clip)
    # Frame k of the output is `rainkit derain` of frame k as a PNG (lossless RGB output: exactly).
    import cv2

    stills = tmp_path / "stills"
    stills.mkdir()
    for k, rgb in enumerate(frames_of(clip)):
        cv2.imwrite(str(stills / f"{k:03d}.png"), rgb[:, :, ::-1])
    assert _derain(tiny_sapnet_file, str(stills), "-o", str(tmp_path / "photos")) == 0
    photos = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((tmp_path / "photos").glob("*.png"))]
    video = frames_of(out / "clip.mp4")
    same = np.mean([np.mean(a == b) for a, b in zip(video, photos)])
    assert len(video) == len(photos) and same >= 0.999
    record = json.loads((out / "clip.mp4.json").read_text())
    assert record["complete"] and record["frames"] == 24 and record["output_sha256"] == sha(out / "clip.mp4")


def test_frames_option_writes_the_photo_path_png_sequence(clip, tmp_path, tiny_sapnet_file):
    assert _derain(tiny_sapnet_file, str(clip), "-o", str(tmp_path / "out"), "--frames", str(tmp_path / "seq")) == 0
    pngs = sorted((tmp_path / "seq" / "clip").glob("*.png"))
    assert len(pngs) == 24 and (tmp_path / "seq" / "clip.json").is_file()
    assert _derain(tiny_sapnet_file, str(clip), "-o", str(tmp_path / "out"), "--frames", str(tmp_path / "seq"),
                   "--json", str(tmp_path / "r.json")) == 0
    assert json.loads((tmp_path / "r.json").read_text())["items"][0]["status"] == "skipped"


def test_generated_rain_moves_between_frames_and_is_reproducible(clip, tmp_path):
    for name in ("a", "b"):
        assert main(["generate", str(clip), str(tmp_path / name), "--method", "physics", "--preset", "heavy",
                     "--seed", "2"]) == 0
    assert sha(tmp_path / "a" / "clip.mp4") == sha(tmp_path / "b" / "clip.mp4")
    assert probe_video(tmp_path / "a" / "clip.mp4").frames == 24
    assert audio_packets(tmp_path / "a" / "clip.mp4") == audio_packets(clip)
    weather = MovingWeather((64, 80), "rain", preset="heavy", seed=2, fall_speed=24)
    first, second = weather.layer(0), weather.layer(1)
    assert not np.array_equal(first, second)
    # Each layer is the one before shifted along its fall direction: the field moves, it is not redrawn.
    shifted = sum(np.roll(layer.field, (round(layer.dy), round(layer.dx)), axis=(0, 1)) for layer in weather.layers)
    np.testing.assert_allclose(second, shifted, atol=TOL.FP32)


def test_moving_rain_flickers_less_than_independent_frames():
    scene = np.full((96, 128, 3), 0.4, np.float32)
    weather = MovingWeather(scene.shape[:2], "rain", preset="heavy", seed=0)
    moving = [weather.frame(scene, t) - scene for t in range(6)]
    independent = [synthesize(scene, "rain", preset="heavy", seed=t) - scene for t in range(6)]
    assert flicker(moving) < flicker(independent)
    still = MovingWeather(scene.shape[:2], "rain", preset="heavy", seed=0, fall_speed=0)
    assert flicker([still.frame(scene, t) for t in range(3)]) == 0.0


def test_an_interrupted_video_resumes_from_its_last_chunk_with_identical_output(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", frames=40)
    settings = EncodeSettings(chunk_frames=8)

    def invert(rgb, index):
        return 255 - rgb

    def invert_until_killed(rgb, index):
        if index == 21:
            raise KeyboardInterrupt
        return 255 - rgb

    whole = process_video(clip, tmp_path / "whole.mp4", invert, settings=settings)
    assert whole.complete and whole.frames_written == 40
    with pytest.raises(KeyboardInterrupt):
        process_video(clip, tmp_path / "resumed.mp4", invert_until_killed, settings=settings)
    assert not (tmp_path / "resumed.mp4").exists()
    resumed = process_video(clip, tmp_path / "resumed.mp4", invert, settings=settings)
    assert resumed.resumed_from_frame == 16  # chunks 0-7 and 8-15 were finished before the interruption
    assert sha(tmp_path / "resumed.mp4") == sha(tmp_path / "whole.mp4")
    assert not (tmp_path / ".resumed.mp4.rainkit-parts").exists()


def test_a_rotated_clip_keeps_its_rotation(tmp_path):
    clip = make_clip(tmp_path / "turned.mp4", frames=6, audio=False, rotation=90)
    assert probe_video(clip).rotation == 90
    assert main(["generate", str(clip), str(tmp_path / "out"), "--method", "physics"]) == 0
    result = probe_video(tmp_path / "out" / "turned.mp4")
    assert result.rotation == 90 and (result.width, result.height) == (48, 32)


def test_damaged_videos_fail_in_one_line_and_keep_what_decodes(tmp_path, capsys):
    whole = make_clip(tmp_path / "whole.mkv", frames=40)
    data = whole.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    (tmp_path / "in" / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    with av.open(str(tmp_path / "in" / "sound.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        chunk.sample_rate, chunk.pts = 8000, 0
        for packet in list(stream.encode(chunk)) + list(stream.encode()):
            out.mux(packet)
    make_clip(tmp_path / "in" / "fine.mp4", frames=5)
    assert main(["generate", str(tmp_path / "in"), str(tmp_path / "out"), "--method", "physics"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cut.mkv: the video is damaged or cut short" in err
    assert "junk.mp4: not a readable video" in err
    assert "sound.mp4: no video stream (audio)" in err
    kept = probe_video(tmp_path / "out" / "cut.mkv")
    assert 0 < kept.frames < 40
    assert probe_video(tmp_path / "out" / "fine.mp4").frames == 5


def test_a_folder_may_mix_photos_and_videos(tmp_path, tiny_sapnet_file):
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "clip.mov", frames=4, audio=False)
    cv2.imwrite(str(folder / "photo.png"), np.full((20, 24, 3), 90, np.uint8))
    assert _derain(tiny_sapnet_file, str(folder), "-o", str(tmp_path / "out")) == 0
    assert (tmp_path / "out" / "photo.png").is_file()
    assert probe_video(tmp_path / "out" / "clip.mov").frames == 4


KILLABLE = """
import sys, time
from rainkit.video.pipeline import EncodeSettings, process_video

def slow_invert(rgb, index):
    time.sleep(0.03)
    return 255 - rgb

process_video(sys.argv[1], sys.argv[2], slow_invert, settings=EncodeSettings(chunk_frames=8))
"""


def test_kill_9_during_a_video_job_then_rerun_gives_the_uninterrupted_file(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    clip = make_clip(tmp_path / "clip.mp4", frames=48)
    script = tmp_path / "job.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run([sys.executable, str(script), str(clip), str(tmp_path / "whole.mp4")], check=True, env=env)
    job = subprocess.Popen([sys.executable, str(script), str(clip), str(tmp_path / "out.mp4")], env=env)
    parts = tmp_path / ".out.mp4.rainkit-parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("part-*.mkv"))) < 2 and job.poll() is None:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "out.mp4").exists(), "the job finished before it could be killed"
    assert len(list(parts.glob("part-*.mkv"))) >= 2
    subprocess.run([sys.executable, str(script), str(clip), str(tmp_path / "out.mp4")], check=True, env=env)
    assert sha(tmp_path / "out.mp4") == sha(tmp_path / "whole.mp4")


def test_detect_studies_every_nth_frame_of_a_video(tmp_path):
    from rainkit.detect.metrics import Detections
    from rainkit.detect.runner import run_detect

    class CountingDetector:
        names = {0: "thing"}

        def __init__(self):
            self.seen = []

        def describe(self):
            return {"detector": "counting", "format": "test", "imgsz": [48, 32]}

        def detect(self, rgb, passes):
            self.seen.append(rgb.copy())
            found = Detections(np.array([[4.0, 4.0, 20.0, 20.0]]), np.array([0.9]), np.array([0]))
            return [found.above(p.conf) for p in passes]

    class Identity:
        def derain(self, rgb):
            return rgb

    clip = make_clip(tmp_path / "clip.mp4", frames=24)
    detector = CountingDetector()
    result = run_detect([str(clip)], add_rain="heavy", seed=1, vid_stride=5, detector=detector, derainer=Identity())
    assert result.ok and [item.key for item in result.items] == [f"clip/{i:06d}" for i in (0, 5, 10, 15, 20)]
    # clean frames are the clip's own frames; rainy ones carry the moving rain `rainkit generate` adds
    frames = frames_of(clip)
    assert np.array_equal(detector.seen[0], frames[0])
    assert not np.array_equal(detector.seen[1], frames[0])
    assert result.map_of("rainy", "map50") is not None
