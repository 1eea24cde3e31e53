"""What deraining costs per megapixel as photos grow (issue 19), in one run, each variant in a fresh process.

A real rainy photo (`../shared/data/weather/rain/roadcond_jondalton_wet/wet31.jpg`, or a synthetic one when
../shared is absent) is resized to each size and derained once with the official SAPNet weights (rainkit's own
when the official file is absent), after a small warm-up. Variants per size:

  default      rainkit's automatic choice (whole when the estimate fits the CPU budget, else tiles)
  whole        `tile=0`
  cap          `max_memory=--cap` (default 3G): tiles under a cap on the whole process

Prints seconds, seconds per megapixel, the ratio to the smallest size's default figure, the tile used and peak
RSS (`ru_maxrss` of the fresh process). Large sizes take minutes on 2 cores: `--sizes` picks which.

    python bench/derain_scaling.py [--sizes 0.15,1,4,12] [--variants default,whole,cap] [--cap 3G] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
PHOTO = SHARED / "data/weather/rain/roadcond_jondalton_wet/wet31.jpg"
OFFICIAL = SHARED / "weights/sapnet-official/net_latest.pth"
SIZES = {"0.15": (481, 321), "1": (1216, 832), "4": (2432, 1664), "12": (4032, 3024)}


def worker(args) -> None:
    import resource
    import time

    import cv2
    import numpy as np

    from rainkit.derain import load_derainer

    width, height = SIZES[args.size]
    if PHOTO.is_file():
        image = cv2.imread(str(PHOTO))[:, :, ::-1]
    else:
        rng = np.random.default_rng(0)
        image = cv2.resize((rng.random((40, 60, 3)) * 255).astype(np.uint8), (1280, 800))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    weights = str(OFFICIAL) if OFFICIAL.is_file() else "sapnet.rainkit"
    options = {"default": {}, "whole": {"tile": 0}, "cap": {"max_memory": args.cap}}[args.variant]
    derainer = load_derainer("sapnet", weights, device="cpu", precision=args.precision, **options)
    derainer.derain(image[:64, :64])
    start = time.perf_counter()
    derainer.derain(image)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tile": derainer.last_tile,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.15,1,4,12")
    parser.add_argument("--variants", default="default,whole,cap")
    parser.add_argument("--cap", default="3G")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    reference = None
    print(f"SAPNet {args.precision} on 2 CPU cores; ratio = s/MP over the smallest size's default s/MP")
    for size in args.sizes.split(","):
        width, height = SIZES[size]
        megapixels = width * height / 1e6
        for variant in args.variants.split(","):
            run = subprocess.run([sys.executable, __file__, "--worker", "--size", size, "--variant", variant,
                                  "--cap", args.cap, "--precision", args.precision], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if run.returncode != 0:
                print(f"{width}x{height} {variant}: failed: {run.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(run.stdout.strip().splitlines()[-1])
            per_mp = result["seconds"] / megapixels
            if reference is None and variant == "default":
                reference = per_mp
            ratio = f"{per_mp / reference:.2f}x" if reference else "-"
            label = variant + (f" {args.cap}" if variant == "cap" else "")
            print(f"{width}x{height} ({megapixels:5.2f} MP) {label:10s} {result['seconds']:7.1f} s  {per_mp:6.2f} s/MP  "
                  f"{ratio:>6s}  tile {result['tile'] or 'whole':>5}  peak {result['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
