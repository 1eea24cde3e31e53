"""TPSeNCE generation speed: rainkit's WeatherGenerator vs the plain eager forward of the same generator.

Each variant runs in a fresh process on the same image and the same weights (a generator with
fixed random weights, saved once in rainkit's format: speed does not depend on training, and
instance norm keeps a random generator's output image-like enough to compare 8-bit pixels):

  eager          the plain `ResnetGenerator.forward`: fp32, NCHW, torch.inference_mode(), on the image
                 reflect-padded to a multiple of 4 (as CUT's test.py runs it, one image at a time)
  eager-tuned    the same with glibc's heap tuned as rainkit tunes it on the CPU
                 (`rainkit.engine.tune_cpu_allocator`): how much of the difference that is
  rainkit        `load_generator(weights, "cpu").generate(rgb)`, as `rainkit generate --method tpsence`
                 runs it: the automatic plan (on the CPU the single pass in 256 px tiles, float32 buffers)
  fp16-buffers   the single pass with fp16 buffers (`run_single_pass(..., storage=torch.float16)`): the
                 memory it would save, and why the engine keeps float32 buffers for fp32
  rainkit-bf16   `rainkit generate --precision bf16`: autocast bf16 (not expected to keep the pixels)

Every size runs each variant twice in its process (the first run includes oneDNN's setup, the second
does not) and prints both runs' seconds, the faster run's MP/s, its ratio to the
eager forward's faster run, the share of 8-bit pixels (all three channels) identical to the eager
forward's, the largest 8-bit difference and the process's peak RSS.

    python bench/tpsence_speed.py [--sizes 640x480,2304x1728] [--image PATH] [--ngf 64] [--blocks 9]
                                  [--threads N] [--variants eager,eager-tuned,rainkit,fp16-buffers,rainkit-bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _tpsence_bench import DEFAULT_IMAGE, bench_image, random_generator, run_variant

VARIANTS = ("eager", "eager-tuned", "rainkit", "fp16-buffers", "rainkit-bf16")


def worker(args) -> None:
    import numpy as np
    import torch

    from rainkit.data.images import to_uint8
    from rainkit.engine import tune_cpu_allocator
    from rainkit.synth.tpsence import SINGLE_PASS_TILE, load_generator, pad_to_multiple
    from rainkit.tiling import run_single_pass

    if args.threads:
        torch.set_num_threads(args.threads)
    image = bench_image(args.image, args.size)
    height, width = image.shape[:2]
    generator = load_generator(args.weights, "cpu", "bf16" if args.variant == "rainkit-bf16" else "fp32")
    model = generator.model

    def padded() -> torch.Tensor:
        return pad_to_multiple(torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1)

    def to_rgb(out: torch.Tensor) -> np.ndarray:
        return ((out[0, :, :height, :width] + 1) / 2).clamp(0, 1).numpy().transpose(1, 2, 0)

    if args.variant == "eager-tuned":
        tune_cpu_allocator()
    if args.variant.startswith("eager"):
        def run():
            with torch.inference_mode():
                return to_rgb(model(padded()))
    elif args.variant == "fp16-buffers":
        def run():
            with torch.inference_mode():
                return to_rgb(run_single_pass(model.tile_sweeps, {"image": padded()}, tile=SINGLE_PASS_TILE["cpu"],
                                              storage=torch.float16))
    else:
        def run():
            return generator.generate(image)

    times = []
    for _ in range(2):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    np.save(args.output, to_uint8(out))
    plan, tile = {"eager": ("whole", 0), "eager-tuned": ("whole", 0), "fp16-buffers": ("single-pass", SINGLE_PASS_TILE["cpu"])}.get(
        args.variant, (generator.last_plan, generator.last_tile))
    print(json.dumps({"seconds": times, "plan": plan, "tile": tile,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="photo resized to each size (else a pattern)")
    parser.add_argument("--sizes", default="640x480,2304x1728", help="WIDTHxHEIGHT,... the image is brought to")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import numpy as np

    variants = args.variants.split(",")
    if variants[0] != "eager":
        parser.error("the variants start with eager, the reference")
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_generator(Path(tmp), args.ngf, args.blocks)
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            megapixels = width * height / 1e6
            results = {}
            for variant in variants:
                output = Path(tmp) / f"{variant}.npy"
                info = run_variant(__file__, variant, ["--weights", weights, "--output", str(output), "--image",
                                                       args.image, "--size", size, "--threads", str(args.threads)])
                results[variant] = (info, np.load(output))
            eager_info, eager_out = results["eager"]
            base = min(eager_info["seconds"])
            print(f"TPSeNCE generator ngf={args.ngf} blocks={args.blocks}, {size} ({megapixels:.2f} MP), CPU threads "
                  f"{eager_info['threads']}")
            print(f"  {'variant':<14}{'run 1 s':>9}{'run 2 s':>9}{'MP/s':>8}{'vs eager':>10}{'identical':>11}"
                  f"{'max diff':>10}{'peak RSS':>10}  plan")
            for variant, (info, out) in results.items():
                best = min(info["seconds"])
                same = float((out == eager_out).all(axis=2).mean())
                diff = int(np.abs(out.astype(int) - eager_out.astype(int)).max())
                plan = info["plan"] + (f" {info['tile']} px" if info["tile"] else "")
                print(f"  {variant:<14}{info['seconds'][0]:>9.2f}{info['seconds'][1]:>9.2f}{megapixels / best:>8.3f}"
                      f"{base / best:>9.2f}x{same:>11.5f}{diff:>10}{info['peak_rss'] / 2**30:>8.2f} G  {plan}")


if __name__ == "__main__":
    main()
