"""Video deraining throughput against the photo path on the same frames, and the flicker of moving physics rain.

1. Makes a clip (default 2 s of 640x360 at 15 fps, a real photo panning, with an AAC track), writes its frames
   as PNGs, then runs `derain_paths` on the PNG folder (the photo path: read, derain, encode, write each
   file) and on the clip (decode, derain and encode side by side), with the same model, and prints frames/s
   of each and the ratio video / photo. The issue's target: at least 0.9.
2. Flicker: mean absolute frame-to-frame change of the added rain layer on a static scene, for the moving
   field `rainkit generate` uses on videos and for independent frames (a fresh pattern per frame), per preset.

    python bench/video_speed.py [--seconds 2] [--width 640] [--height 360] [--fps 15] [--weights sapnet.rainkit]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))


def scene(width: int, height: int) -> np.ndarray:
    import cv2

    photo = sorted((SHARED / "data/weather/clear").rglob("*.jpg"))
    if photo:
        image = cv2.imread(str(photo[0]))[:, :, ::-1]
        return cv2.resize(image, (width + 64, height), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    return cv2.resize((rng.random((height // 8, (width + 64) // 8, 3)) * 255).astype(np.uint8), (width + 64, height))


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int) -> int:
    import av

    base = scene(width, height)
    frames = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=16000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i % 64: i % 64 + width]), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for k in range(int(seconds * 16000 / 1024) + 1):
            samples = (np.sin((np.arange(1024) + 1024 * k) / 9.0) * 0.1).astype(np.float32)[None].repeat(2, 0)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 16000, 1024 * k
            for packet in sound.encode(chunk):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return frames


def throughput(args) -> None:
    import av
    import cv2

    from rainkit.derain.batch import derain_paths

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = make_clip(root / "clip.mp4", args.seconds, args.width, args.height, args.fps)
        stills = root / "stills"
        stills.mkdir()
        with av.open(str(root / "clip.mp4")) as container:
            for k, frame in enumerate(container.decode(video=0)):
                cv2.imwrite(str(stills / f"{k:05d}.png"), frame.to_ndarray(format="rgb24")[:, :, ::-1])
        common = dict(weights=args.weights, device="cpu", tile=0, sidecar=False)
        derain_paths([str(stills / "00000.png")], root / "warm", **common)  # load and warm up once
        rates = {}
        for name, inputs, out in (("photo", [str(stills)], root / "photos"), ("video", [str(root / "clip.mp4")], root / "video")):
            start = time.perf_counter()
            result = derain_paths(inputs, out, **common)
            seconds = time.perf_counter() - start
            assert result.ok, [i.error for i in result.failed]
            rates[name] = frames / seconds
            print(f"{name:6s} {frames} frames of {args.width}x{args.height} in {seconds:6.1f} s: {rates[name]:.3f} frames/s")
        print(f"video / photo throughput: {rates['video'] / rates['photo']:.3f}x (target >= 0.9)")


def flicker_table() -> None:
    import cv2

    from rainkit.synth.motion import MovingWeather, flicker
    from rainkit.synth.physics import synthesize

    still = np.full((360, 640, 3), 0.4, np.float32)

    def smooth(layers):  # what the eye reads as brightness flicker: the layer seen through a 9 px blur
        return [cv2.GaussianBlur(layer, (0, 0), 9.0) for layer in layers]

    print("flicker on a static grey scene over 12 frames, in grey levels (0-255):")
    print("  the issue's figure, mean |layer(t+1) - layer(t)|, and the same of the 9-px-blurred layer (brightness)")
    for preset in ("light", "heavy", "storm"):
        weather = MovingWeather(still.shape[:2], "rain", preset=preset, seed=0)
        moving = [weather.frame(still, t) - still for t in range(12)]
        fresh = [synthesize(still, "rain", preset=preset, seed=t) - still for t in range(12)]
        a, b = flicker(moving) * 255, flicker(fresh) * 255
        sa, sb = flicker(smooth(moving)) * 255, flicker(smooth(fresh)) * 255
        print(f"  {preset:5s} moving field {a:6.3f} (brightness {sa:5.3f})   independent frames {b:6.3f} "
              f"(brightness {sb:5.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--weights", default="sapnet.rainkit")
    parser.add_argument("--skip-speed", action="store_true", help="only the flicker table")
    args = parser.parse_args()
    flicker_table()
    if not args.skip_speed:
        throughput(args)


if __name__ == "__main__":
    main()
