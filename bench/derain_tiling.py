"""Tiling accuracy and large-image memory.

1. A 1024x768 crop of a real photo derained (Python API, in this process) with tile 256 and
   whole: PSNR between the two outputs as floats and as the 8-bit images `rainkit derain` writes
   (clamped, rounded), their largest difference in grey levels, and the time each took.
2. The same crop derained whole in bf16: the same comparisons with the fp32 output.
3. A 4032x3024 photo derained on the CPU with default settings in a child process: its peak
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


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def compare(label: str, reference: np.ndarray, other: np.ndarray) -> None:
    """Float PSNR (clamped to [0, 1]) and 8-bit PSNR and largest difference of two derained images."""
    from rainkit.data.images import to_uint8

    a, b = np.clip(reference, 0, 1), np.clip(other, 0, 1)
    a8, b8 = to_uint8(reference).astype(int), to_uint8(other).astype(int)
    print(f"{label}: float PSNR {psnr(a, b, 1.0):.2f} dB (max diff {np.abs(a - b).max():.2g}); 8-bit PSNR "
          f"{psnr(a8, b8, 255.0):.2f} dB, max diff {np.abs(a8 - b8).max()} levels, {np.mean(a8 != b8):.1%} of values differ")


def timed(derainer, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = derainer.derain(rgb)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sapnet", choices=sorted(WEIGHTS))
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    weights = str(SHARED / WEIGHTS[args.model])
    photo = cv2.imread(str(SHARED / PHOTO))
    if photo is None or not Path(weights).exists():
        sys.exit(f"needs {SHARED / PHOTO} and {weights} (set RAINKIT_SHARED)")
    sys.path.insert(0, str(REPO))  # this checkout's rainkit, as the CLI children get it
    from rainkit.derain import load_derainer

    crop = np.ascontiguousarray(photo[:768, :1024, ::-1], dtype=np.float32) / 255.0
    whole, t_whole = timed(load_derainer(args.model, weights, device="cpu", tile=0), crop)
    tiled, t_tiled = timed(load_derainer(args.model, weights, device="cpu", tile=256), crop)
    compare(f"1024x768 {args.model}, tile 256 vs whole", whole, tiled)
    bf16, t_bf16 = timed(load_derainer(args.model, weights, device="cpu", precision="bf16", tile=0), crop)
    compare(f"1024x768 {args.model}, bf16 vs fp32 (whole)", whole, bf16)
    print(f"seconds: whole {t_whole:.1f}, tiled {t_tiled:.1f}, bf16 whole {t_bf16:.1f}")
    if args.skip_large:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = ["--model", args.model, "--weights", weights, "--device", "cpu", "--no-sidecar"]
        big = tmp / "big.jpg"
        cv2.imwrite(str(big), cv2.resize(photo, (4032, 3024), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 92])
        seconds = rainkit(str(big), "-o", str(tmp / "big"), *common)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = cv2.imread(str(tmp / "big" / "big.png"))
        print(f"4032x3024 {args.model} default settings: peak RSS {peak_kib / 1024**2:.2f} GiB, {seconds:.0f} s, "
              f"output {out.shape[1]}x{out.shape[0]}")


if __name__ == "__main__":
    main()
