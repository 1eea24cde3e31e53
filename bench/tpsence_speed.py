"""TPSeNCE generation speed: rainkit's WeatherGenerator vs the plain eager forward of the same generator.

Each variant runs in a fresh process on the same image and the same weights (a generator with
fixed random weights, saved once in rainkit's format: speed does not depend on training):

  eager          the way CUT's test.py runs it: torch.no_grad(), NCHW fp32, model(x) on the image
                 reflect-padded to a multiple of 4
  rainkit        load_generator(...).generate(): whole image (padded to a multiple of 4), inference mode
  rainkit-tiled  the same with --tile (two-pass tiling with whole-image instance-norm statistics)
  rainkit-bf16   the whole image with `--precision bf16` (autocast; on CPUs with bf16 units), not bit-exact

Prints seconds per image, the ratio to eager, and the largest absolute difference of the [0, 1]
output from eager's.

    python bench/tpsence_speed.py [--image PATH] [--size 480x360] [--tile 256] [--repeats 2]
                                  [--ngf 64] [--blocks 9] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _tpsence_bench import DEFAULT_IMAGE, random_generator, run_variant


def _image(args):
    import numpy as np

    width, height = (int(v) for v in args.size.split("x"))
    if Path(args.image).is_file():
        import cv2

        from rainkit.data.images import read_image

        rgb = read_image(args.image).rgb
        if rgb.shape[:2] != (height, width):
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return rgb
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 37.0 + c) * np.cos(yy / 29.0 - c) for c in range(3)], axis=2)
    return np.clip(base + 0.03 * rng.standard_normal((height, width, 3)), 0, 1).astype(np.float32)


def worker(args) -> None:
    import numpy as np
    import torch

    from rainkit.synth.tpsence import load_generator, pad_to_multiple

    image = _image(args)
    tile = args.tile if args.variant == "rainkit-tiled" else 0
    precision = "bf16" if args.variant == "rainkit-bf16" else "fp32"
    generator = load_generator(args.weights, args.device, precision, tile=tile)
    device = generator.device
    if args.variant == "eager":
        model = generator.model.to(memory_format=torch.contiguous_format)
        height, width = image.shape[:2]

        def run():
            x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
            with torch.no_grad():
                out = model(pad_to_multiple(x).to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return ((out[0, :, :height, :width].cpu() + 1) / 2).clamp(0, 1).numpy().transpose(1, 2, 0)
    else:
        def run():
            out = generator.generate(image)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

    out = run()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    np.save(args.output, out)
    print(json.dumps({"seconds": min(times), "tile": generator.last_tile}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--size", default="480x360", help="WIDTHxHEIGHT the image is brought to")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        weights = random_generator(Path(tmp), args.ngf, args.blocks)
        results = {}
        for variant in ("eager", "rainkit", "rainkit-tiled", "rainkit-bf16"):
            output = Path(tmp) / f"{variant}.npy"
            info = run_variant(__file__, variant, ["--weights", weights, "--output", str(output), "--image", args.image,
                                                   "--size", args.size, "--tile", str(args.tile), "--repeats",
                                                   str(args.repeats), "--device", args.device])
            results[variant] = (info, np.load(output))
        base = results["eager"][0]["seconds"]
        print(f"TPSeNCE generator ngf={args.ngf} blocks={args.blocks}, {args.size} image, device {args.device}, "
              f"threads {torch.get_num_threads()}")
        print(f"{'variant':<15}{'s/image':>10}{'ratio to eager':>16}{'tile':>6}{'max |diff|':>12}")
        for variant, (info, out) in results.items():
            diff = float(np.abs(out - results["eager"][1]).max())
            print(f"{variant:<15}{info['seconds']:>10.3f}{info['seconds'] / base:>16.2f}{info['tile']:>6}{diff:>12.2e}")


if __name__ == "__main__":
    main()
