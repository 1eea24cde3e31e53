"""TPSeNCE on a large photo: seams and memory of tiled generation against the whole-image pass.

Two fresh processes generate the same 4000x3000 (default) image with the same generator:

  whole    the plain eager forward of the whole image at once (torch.no_grad(), fp32)
  rainkit  `load_generator(...).generate()` with its automatic plan (the rule `rainkit generate` uses on
           the CPU), i.e. the single pass over tiles with whole-image instance-norm statistics

Each reports its seconds and its peak resident memory (ru_maxrss). The script then compares the
outputs: the error of the tiled image against the whole-image pass in the 4-pixel bands around the
tile seams vs everywhere else, and, without any reference, the mean absolute step between adjacent
pixels across the seams vs across all other rows/columns of the tiled output (a seam would show as a
larger step there than elsewhere).

    python bench/tpsence_large.py [--weights tpsence.rain | PATH] [--size 4000x3000] [--image PATH]
                                  [--ngf 64] [--blocks 9]

Without --weights the generator has fixed random weights, by default of the full paper size (ngf 64,
9 blocks; `--ngf/--blocks` for others): memory and seams do not depend on training.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _tpsence_bench import DEFAULT_IMAGE, bench_image, random_generator, run_variant


def worker(args) -> None:
    import numpy as np
    import torch

    from rainkit.synth.tpsence import load_generator, pad_to_multiple

    image = bench_image(args.image, args.size)
    generator = load_generator(args.weights, "cpu", tile=0 if args.variant == "whole" else None)
    start = time.perf_counter()
    if args.variant == "whole":
        height, width = image.shape[:2]
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
        with torch.no_grad():
            out = generator.model(pad_to_multiple(x))
        out = ((out[0, :, :height, :width] + 1) / 2).clamp(0, 1).numpy().transpose(1, 2, 0)
        tile = 0
    else:
        out = generator.generate(image)
        tile = generator.last_tile
    seconds = time.perf_counter() - start
    np.save(args.output, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "tile": tile, "peak_rss": peak, "ngf": generator.model.config["ngf"]}))


def _seam_lines(height: int, width: int, tile: int) -> tuple[list[int], list[int]]:
    from rainkit.synth.tpsence import ALIGN
    from rainkit.tiling import tile_cores

    padded_h, padded_w = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
    cores = tile_cores(padded_h, padded_w, tile, ALIGN)
    rows = sorted({y0 for y0, _, _, _ in cores if 0 < y0 < height})
    cols = sorted({x0 for _, _, x0, _ in cores if 0 < x0 < width})
    return rows, cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="generator weights (registered name or file); default: random ngf 64")
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="photo resized to --size (else random pixels)")
    parser.add_argument("--ngf", type=int, default=64, help="width of the random generator (without --weights)")
    parser.add_argument("--blocks", type=int, default=9, help="residual blocks of the random generator")
    parser.add_argument("--no-whole", action="store_true",
                        help="skip the whole-image pass (it needs about 11 GiB at ngf 32 and twice that at ngf 64 for "
                             "4000x3000); the seams are then judged by the reference-free step test only")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or random_generator(Path(tmp), args.ngf, args.blocks)
        results = {}
        for variant in ("rainkit",) if args.no_whole else ("rainkit", "whole"):
            output = Path(tmp) / f"{variant}.npy"
            results[variant] = run_variant(__file__, variant, ["--weights", weights, "--output", str(output),
                                                               "--image", args.image, "--size", args.size])
            results[variant]["out"] = np.load(output, mmap_mode="r")
        tiled = results["rainkit"]["out"]
        whole = results["whole"]["out"] if "whole" in results else None
        info = results["rainkit"]
        height, width = tiled.shape[:2]
        print(f"TPSeNCE generator ngf={info['ngf']}, {args.size} image, CPU threads {torch.get_num_threads()}")
        for variant in ("whole", "rainkit"):
            if variant in results:
                r = results[variant]
                print(f"  {variant:<8} {r['seconds']:8.1f} s   peak RSS {r['peak_rss'] / 2**30:6.2f} GiB   "
                      f"tile {r['tile'] or 'none (whole image)'}")
        if whole is not None:
            print(f"  memory: tiled / whole = {info['peak_rss'] / results['whole']['peak_rss']:.2f}")
        if not info["tile"]:
            print("the automatic rule chose no tiling for this size: nothing to compare")
            return
        rows, cols = _seam_lines(height, width, info["tile"])
        print(f"  {len(rows)} horizontal and {len(cols)} vertical seams (single pass, tile {info['tile']})")
        if whole is not None:
            error = np.abs(np.asarray(tiled, dtype=np.float32) - np.asarray(whole, dtype=np.float32)).max(axis=2)
            band = np.zeros((height, width), dtype=bool)
            for r in rows:
                band[max(0, r - 4):r + 4] = True
            for c in cols:
                band[:, max(0, c - 4):c + 4] = True
            print(f"  |tiled - whole|: seam bands mean {error[band].mean():.2e} max {error[band].max():.2e}; "
                  f"elsewhere mean {error[~band].mean():.2e} max {error[~band].max():.2e}")
        t = np.asarray(tiled, dtype=np.float32)
        step_x = np.abs(np.diff(t, axis=1)).mean(axis=(0, 2))  # step between column c and c+1
        step_y = np.abs(np.diff(t, axis=0)).mean(axis=(1, 2))
        seam_x = [step_x[c - 1] for c in cols]
        seam_y = [step_y[r - 1] for r in rows]
        other_x = np.delete(step_x, [c - 1 for c in cols])
        other_y = np.delete(step_y, [r - 1 for r in rows])
        seam_step = float(np.mean(seam_x + seam_y))
        other_step = float(np.mean(np.concatenate([other_x, other_y])))
        print(f"  adjacent-pixel step across seams {seam_step:.5f} vs across other lines {other_step:.5f} "
              f"(ratio {seam_step / other_step:.3f})")


if __name__ == "__main__":
    main()
