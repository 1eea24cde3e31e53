"""Deraining speed on the CPU: rainkit's torch path vs the onnxruntime backend, on the same image in one run.

  torch        `load_derainer(..., device="cpu", tile=0)`: rainkit's default CPU path for a whole image
               (fast forward, channels-last, tuned allocator)
  onnxruntime  `load_onnx_derainer(...)`: the fp32 ONNX export on onnxruntime's CPUExecutionProvider
               (`rainkit derain --backend onnxruntime`), exported into a temporary cache first
  onnx-fp16    with --fp16: the fp16 export on the same provider

The image is Rain100L's rain-001.png from ../shared (481x321), or a synthetic 481x321 image when
../shared is absent. After one warm-up each, the variants run in turn, `--repeats` times, so load
from other processes falls on all of them alike; the figure is the median. Prints seconds, MP/s, the
ratio to torch and the largest absolute difference of each output to torch's, and the 1-minute load
average before and after (other processes on the cores change the ratio: see the README's Speed section).

    python bench/onnx_speed.py [--model sapnet] [--weights NAME_OR_PATH] [--repeats 7] [--fp16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
DEFAULT_WEIGHTS = {"sapnet": "sapnet.rainkit", "prenet": "prenet.rain100l"}


def load_image():
    import cv2
    import numpy as np

    path = SHARED / "data/rain100l/rainy/rain-001.png"
    if path.is_file():
        return cv2.imread(str(path))[:, :, ::-1].astype(np.float32) / 255.0, str(path)
    yy, xx = np.mgrid[0:321, 0:481].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], axis=2)
    streaks = (rng.random((321, 481)) > 0.99).astype(np.float32)[:, :, None] * 0.4
    return np.clip(base + streaks, 0, 1).astype(np.float32), "synthetic 481x321"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sapnet", choices=sorted(DEFAULT_WEIGHTS))
    parser.add_argument("--weights", default=None, help="default: sapnet.rainkit / prenet.rain100l")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 graph")
    args = parser.parse_args()
    if (SHARED / "weights").is_dir():
        os.environ.setdefault("RAINKIT_WEIGHTS_PATH", str(SHARED / "weights"))
    # A fresh cache: the first-use export is timed, and the user's cache is left alone.
    os.environ["RAINKIT_CACHE"] = tempfile.mkdtemp(prefix="rainkit-onnx-bench-")

    import numpy as np
    import onnxruntime
    import torch

    from rainkit.derain import load_derainer
    from rainkit.export.onnx import export_onnx
    from rainkit.export.onnx_engine import load_onnx_derainer

    load_before = os.getloadavg()[0]
    rgb, source = load_image()
    height, width = rgb.shape[:2]
    weights = args.weights or DEFAULT_WEIGHTS[args.model]
    variants = {"torch": load_derainer(args.model, weights, device="cpu", tile=0)}
    started = time.perf_counter()
    variants["onnxruntime"] = load_onnx_derainer(args.model, weights)
    export_seconds = time.perf_counter() - started
    if args.fp16:
        half = export_onnx(args.model, weights, Path(os.environ["RAINKIT_CACHE"]) / "fp16.onnx", dtype="fp16")
        variants["onnx-fp16"] = load_onnx_derainer(args.model, str(half.onnx_path))

    outputs = {name: engine.derain(rgb) for name, engine in variants.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, engine in variants.items():
            start = time.perf_counter()
            engine.derain(rgb)
            times[name].append(time.perf_counter() - start)

    megapixels = height * width / 1e6
    print(f"{args.model} ({weights}) on {source}, {width}x{height}; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, default "
          f"threads); first-use export {export_seconds:.1f} s; median of {args.repeats}; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    base = statistics.median(times["torch"])
    for name, samples in times.items():
        median = statistics.median(samples)
        difference = float(np.abs(outputs[name] - outputs["torch"]).max())
        print(f"  {name:12s} {median:7.3f} s  {megapixels / median:6.3f} MP/s  speed vs torch {base / median:5.2f}x  "
              f"max |diff| to torch {difference:.1e}")


if __name__ == "__main__":
    main()
