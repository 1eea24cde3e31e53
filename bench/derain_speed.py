"""Deraining throughput: rainkit's default path vs the official code's plain eager forward.

Each variant runs in a fresh process on the same 481x321 Rain100L images, so one cannot warm
caches or allocator state for another:

  reference        the official way: torch.no_grad(), NCHW fp32, whole image, separate gate
                   convolutions, default allocator (RecurrentDerainNet.forward_reference)
  reference+malloc the same with rainkit's glibc allocator tuning, to show what the tuning alone buys
  rainkit          rainkit's default CPU path (Derainer: fast forward, channels-last, tuned allocator)
  rainkit-bf16     the same under CPU bf16 autocast

Prints images/s, the ratio to the reference, the largest absolute difference of the float output
from the reference, and PSNR of each output against the reference's.

    python bench/derain_speed.py [--model sapnet] [--images 4] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
WEIGHTS = {"sapnet": "weights/sapnet-official/net_latest.pth", "prenet": "weights/prenet-official/rain100l/net_latest.pth"}


def worker(args) -> None:
    import cv2
    import numpy as np
    import torch

    from rainkit.derain import load_derainer
    from rainkit.engine import tune_cpu_allocator

    paths = sorted((SHARED / "data/rain100l/rainy").glob("*.png"))[: args.images]
    images = [cv2.imread(str(p))[:, :, ::-1].astype(np.float32) / 255.0 for p in paths]
    images = [im for im in images if im.shape[:2] == (321, 481)]
    tensors = [torch.from_numpy(im.transpose(2, 0, 1).copy())[None] for im in images]
    precision = "bf16" if args.variant == "rainkit-bf16" else "fp32"
    derainer = load_derainer(args.model, str(SHARED / WEIGHTS[args.model]), device=args.device, precision=precision, tile=0)
    device = derainer.device

    if args.variant.startswith("reference"):
        if args.variant == "reference+malloc":
            tune_cpu_allocator()
        model = derainer.model.to(memory_format=torch.contiguous_format)

        def run(x):
            with torch.no_grad():
                out = model.forward_reference(x.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out.cpu()
    else:
        def run(x):
            out = derainer.derain_tensor(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

    run(tensors[0])  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = [run(x) for x in tensors]
        best = min(best, time.perf_counter() - start)
    np.save(args.out, np.stack([o[0].numpy() for o in outputs]))
    print(json.dumps({"variant": args.variant, "seconds": best, "images": len(tensors)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sapnet", choices=sorted(WEIGHTS))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="reference,reference+malloc,rainkit,rainkit-bf16")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return
    if not (SHARED / WEIGHTS[args.model]).exists():
        sys.exit(f"needs {SHARED / WEIGHTS[args.model]} (set RAINKIT_SHARED)")
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            out = Path(tmp) / f"{variant}.npy"
            cmd = [sys.executable, __file__, "--variant", variant, "--out", str(out), "--model", args.model,
                   "--images", str(args.images), "--repeats", str(args.repeats), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr}")
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            results[variant] = (info, np.load(out))
    ref_info, ref_out = results["reference"]
    ref_rate = ref_info["images"] / ref_info["seconds"]
    print(f"{args.model} on {args.device}, {ref_info['images']} Rain100L images 481x321, best of {args.repeats}")
    print(f"{'variant':18s} {'img/s':>7s} {'s/img':>7s} {'ratio':>6s} {'max|diff|':>10s} {'PSNR vs ref':>12s}")
    for variant, (info, out) in results.items():
        rate = info["images"] / info["seconds"]
        diff = float(np.abs(out - ref_out).max())
        mse = float(np.mean((np.clip(out, 0, 1) - np.clip(ref_out, 0, 1)) ** 2))
        psnr = "inf" if mse == 0 else f"{10 * np.log10(1 / mse):.1f} dB"
        print(f"{variant:18s} {rate:7.3f} {1 / rate:7.3f} {rate / ref_rate:6.2f} {diff:10.2e} {psnr:>12s}")


if __name__ == "__main__":
    main()
