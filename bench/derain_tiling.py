"""Tiling accuracy and large-image memory.

1. A 1024x768 crop of a real photo derained with `--tile 256` and with `--tile 0`: PSNR between
   the two outputs (8-bit PNGs, as users get them) and the time each took.
2. A 4032x3024 photo derained on the CPU with default settings in a child process: its peak
   resident memory (ru_maxrss) and time.

    python bench/derain_tiling.py [--model sapnet] [--skip-large]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
WEIGHTS = {"sapnet": "weights/sapnet-official/net_latest.pth", "prenet": "weights/prenet-official/rain100h/net_latest.pth"}
PHOTO = "data/weather/rain/roadcond_jondalton_wet/wet31.jpg"  # a real 1280x800 rainy road photo


def rainkit(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rainkit", "derain", *args], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sapnet", choices=sorted(WEIGHTS))
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    weights = str(SHARED / WEIGHTS[args.model])
    photo = cv2.imread(str(SHARED / PHOTO))
    if photo is None or not Path(weights).exists():
        sys.exit(f"needs {SHARED / PHOTO} and {weights} (set RAINKIT_SHARED)")
    common = ["--model", args.model, "--weights", weights, "--device", "cpu", "--no-sidecar"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crop = tmp / "crop.png"
        cv2.imwrite(str(crop), photo[:768, :1024])
        t_whole = rainkit(str(crop), "-o", str(tmp / "whole"), "--tile", "0", *common)
        t_tiled = rainkit(str(crop), "-o", str(tmp / "tiled"), "--tile", "256", *common)
        a = cv2.imread(str(tmp / "whole" / "crop.png")).astype(np.float64)
        b = cv2.imread(str(tmp / "tiled" / "crop.png")).astype(np.float64)
        mse = np.mean((a - b) ** 2)
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        print(f"1024x768 {args.model}: --tile 256 vs --tile 0 PSNR {psnr:.2f} dB "
              f"(max diff {int(np.abs(a - b).max())} levels); whole {t_whole:.1f} s, tiled {t_tiled:.1f} s")
        if args.skip_large:
            return
        big = tmp / "big.jpg"
        cv2.imwrite(str(big), cv2.resize(photo, (4032, 3024), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 92])
        seconds = rainkit(str(big), "-o", str(tmp / "big"), *common)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = cv2.imread(str(tmp / "big" / "big.png"))
        print(f"4032x3024 {args.model} default settings: peak RSS {peak_kib / 1024**2:.2f} GiB, {seconds:.0f} s, "
              f"output {out.shape[1]}x{out.shape[0]}")


if __name__ == "__main__":
    main()
