"""What deraining costs per megapixel as photos grow (issue 19), in one run, each variant in a fresh process.

A real rainy photo (`../shared/data/weather/rain/roadcond_jondalton_wet/wet31.jpg`, or a synthetic one when
../shared is absent) is resized to each size and derained with the official SAPNet weights (rainkit's own when the
official file is absent), after a small warm-up; the time is the best of `--repeat` runs. Variants per size:

  default      rainkit's automatic plan (whole up to 2 MP when it fits, else the single pass when it fits, else
               the two-pass tiler's tiles)
  whole        `tile=0`
  single-pass  `tiling="single-pass"`: the exact single-pass tiler (`--tile`, default rainkit's 512 px)
  two-pass     `tiling="two-pass"` in the tiles the two-pass tiler takes for an image too large to run whole
               (its default 1.2 GB of working memory: 807 px for fp32), or `--tile`
  cap          `max_memory=--cap` (default 3G): under a cap on the whole process

Prints seconds and seconds per megapixel of wall time and of CPU time (user + system, all threads), the ratio of
the `--measure`d s/MP to the first size's first variant's, the plan and tile used (and the single pass's maps kept
in a temporary file, where they did not fit) and peak RSS (`ru_maxrss` of the fresh process). Large sizes take
minutes on 2 cores: `--sizes` picks which. On a machine that other work keeps busy, wall times mostly measure the others: `--threads 1 --measure cpu` compares the work itself (one
thread: no time spent spinning at the barriers of a parallel convolution while the other core is taken).

    python bench/derain_scaling.py [--sizes 0.15,1,2,4,12] [--variants default,whole,single-pass,two-pass,cap]
                                   [--cap 3G] [--precision fp32] [--tile N] [--repeat 1] [--threads N]
                                   [--measure wall|cpu]
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
SIZES = {"0.15": (481, 321), "1": (1216, 832), "2": (1728, 1152), "4": (2432, 1664), "12": (4032, 3024)}


def worker(args) -> None:
    import resource
    import time

    import cv2
    import numpy as np

    import torch

    from rainkit.derain import load_derainer
    from rainkit.tiling import tile_for_budget

    width, height = SIZES[args.size]
    if PHOTO.is_file():
        image = cv2.imread(str(PHOTO))[:, :, ::-1]
    else:
        rng = np.random.default_rng(0)
        image = cv2.resize((rng.random((40, 60, 3)) * 255).astype(np.uint8), (1280, 800))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    weights = str(OFFICIAL) if OFFICIAL.is_file() else "sapnet.rainkit"
    options = {"default": {}, "whole": {"tile": 0}, "cap": {"max_memory": args.cap},
               "single-pass": {"tiling": "single-pass", "tile": args.tile},
               "two-pass": {"tiling": "two-pass", "tile": args.tile}}[args.variant]
    derainer = load_derainer("sapnet", weights, device="cpu", precision=args.precision, **options)
    if args.variant == "two-pass" and args.tile is None:  # the tiles of an image too large to run whole
        derainer.tile = tile_for_budget(10 ** 5, 10 ** 5, None, None, torch.device("cpu"), derainer.bytes_per_pixel(),
                                        derainer.tile_margin())
    if args.threads:
        torch.set_num_threads(args.threads)
    derainer.derain(image[:64, :64])

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    runs = []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        derainer.derain(image)
        runs.append((time.perf_counter() - start, cpu_seconds() - start_cpu))
    print(json.dumps({"seconds": min(wall for wall, _ in runs), "cpu_seconds": min(cpu for _, cpu in runs),
                      "plan": derainer.last_plan, "tile": derainer.last_tile,
                      "spilled_gib": derainer.last_spill[1] / 2 ** 30 if derainer.last_plan == "single-pass" else 0,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.15,1,2,4,12")
    parser.add_argument("--variants", default="default,whole,single-pass,two-pass,cap")
    parser.add_argument("--cap", default="3G")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--tile", type=int, default=None, help="the tile side of the single-pass and two-pass variants")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--measure", choices=("wall", "cpu"), default="wall", help="the time the ratio compares")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    reference = None
    threads = f"{args.threads} thread(s)" if args.threads else "torch's threads"
    print(f"SAPNet {args.precision} on {os.cpu_count()} CPU cores, {threads}; ratio = {args.measure} s/MP over the "
          f"first size's first variant's")
    for size in args.sizes.split(","):
        width, height = SIZES[size]
        megapixels = width * height / 1e6
        for variant in args.variants.split(","):
            tile = ["--tile", str(args.tile)] if args.tile else []
            run = subprocess.run([sys.executable, __file__, "--worker", "--size", size, "--variant", variant,
                                  "--cap", args.cap, "--precision", args.precision, "--repeat", str(args.repeat),
                                  "--threads", str(args.threads), *tile],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if run.returncode != 0:
                print(f"{width}x{height} {variant}: failed: {run.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(run.stdout.strip().splitlines()[-1])
            per_mp = result["seconds"] / megapixels
            cpu_per_mp = result["cpu_seconds"] / megapixels
            measured = per_mp if args.measure == "wall" else cpu_per_mp
            if reference is None:
                reference = measured
            label = variant + (f" {args.cap}" if variant == "cap" else "")
            plan = result["plan"] + (f" {result['tile']} px" if result["tile"] else "")
            if result["spilled_gib"]:
                plan += f", {result['spilled_gib']:.2f} GiB in a file"
            print(f"{width}x{height} ({megapixels:5.2f} MP) {label:11s} {result['seconds']:7.1f} s {per_mp:6.2f} s/MP  "
                  f"cpu {result['cpu_seconds']:7.1f} s {cpu_per_mp:6.2f} s/MP  {measured / reference:5.2f}x  "
                  f"{plan:18s}  peak {result['peak_gib']:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
