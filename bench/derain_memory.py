"""Peak memory of a whole-image deraining forward pass, per megapixel.

Each variant runs in a fresh process under `/usr/bin/time -v` (its "Maximum resident set size")
on the same real photo scaled to `--width` x `--height`, CPU, fp32:

  idle        load the model and the image, no forward pass: the baseline subtracted below
  whole       rainkit's whole-image path (`--tile 0`: inference mode, in-place, channels-last)
  reference   the official code's way (NCHW, separate gate convolutions, torch.no_grad())
  tiled       rainkit's automatic choice for this image on this machine (tiles when the whole
              image's estimate does not fit the memory budget)
  baseline    `whole` with the rainkit of another checkout (`--baseline-checkout DIR`, e.g. the
              main branch), to compare a change against the current path in the same run

Prints, per variant, peak RSS, the forward pass's share (peak - idle) in GB per megapixel, the
time, the ratio of each peak share to `whole`'s, and the largest difference from `whole`'s output
in 8-bit grey levels. Run it once: a 1600x1000 image takes a few minutes on 2 cores. With
RAINKIT_NO_MALLOC_TUNING=1 the share shows what is live rather than what the tuned heap keeps
for reuse (measured 0.62 GiB/MP for `whole` that way, against 1.16 with the tuning).

    python bench/derain_memory.py [--model sapnet] [--width 1600 --height 1000] [--baseline-checkout ../main]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
WEIGHTS = {"sapnet": "weights/sapnet-official/net_latest.pth", "prenet": "weights/prenet-official/rain100h/net_latest.pth"}
PHOTO = "data/weather/rain/roadcond_jondalton_wet/wet31.jpg"  # a real 1280x800 rainy road photo


def worker(args) -> None:
    import cv2
    import numpy as np
    import torch

    from rainkit.derain import load_derainer

    photo = cv2.imread(str(SHARED / PHOTO))[:, :, ::-1]
    rgb = np.ascontiguousarray(cv2.resize(photo, (args.width, args.height), interpolation=cv2.INTER_CUBIC),
                               dtype=np.float32) / 255.0
    tile = None if args.variant == "tiled" else 0
    derainer = load_derainer(args.model, str(SHARED / WEIGHTS[args.model]), device="cpu", tile=tile)
    start = time.perf_counter()
    if args.variant == "idle":
        out = rgb
    elif args.variant == "reference":
        model = derainer.model.to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            out = model.forward_reference(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].numpy()
        out = out.transpose(1, 2, 0)
    else:
        out = derainer.derain(rgb)
    seconds = time.perf_counter() - start
    np.save(args.output, np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8))
    print(json.dumps({"seconds": seconds, "tile": derainer.last_tile}))


def run(label: str, variant: str, args, folder: Path, checkout: Path) -> dict:
    output = folder / f"{label}.npy"
    command = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()), "--worker", variant,
               "--model", args.model, "--width", str(args.width), "--height", str(args.height), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(checkout)})
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-2000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "peak": peak_kib * 1024, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sapnet", choices=sorted(WEIGHTS))
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--baseline-checkout", type=Path, help="another checkout whose whole-image path to compare")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.variant = args.worker
        worker(args)
        return
    import numpy as np

    if not (SHARED / PHOTO).exists() or not (SHARED / WEIGHTS[args.model]).exists():
        sys.exit(f"needs {SHARED / PHOTO} and {SHARED / WEIGHTS[args.model]} (set RAINKIT_SHARED)")
    megapixels = args.width * args.height / 1e6
    variants = [("idle", REPO), ("whole", REPO), ("reference", REPO), ("tiled", REPO)]
    if args.baseline_checkout:
        variants.append(("baseline", args.baseline_checkout.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for variant, checkout in variants:
            results[variant] = run(variant, "whole" if variant == "baseline" else variant, args, Path(tmp), checkout)
        idle = results["idle"]["peak"]
        whole_share = results["whole"]["peak"] - idle
        whole_out = np.load(results["whole"]["output"]).astype(int)
        print(f"{args.model}, {args.width}x{args.height} ({megapixels:.2f} MP), CPU fp32; idle process {idle / 2**30:.2f} GiB")
        for variant, result in results.items():
            if variant == "idle":
                continue
            share = result["peak"] - idle
            levels = int(np.abs(np.load(result["output"]).astype(int) - whole_out).max())
            tile = f", tile {result['tile']}" if result["tile"] else ""
            print(f"  {variant:9s} peak {result['peak'] / 2**30:5.2f} GiB, forward {share / 2**30 / megapixels:.3f} GiB/MP "
                  f"({share / whole_share:.2f}x whole), {result['seconds']:.1f} s{tile}, max diff {levels} levels")


if __name__ == "__main__":
    main()
