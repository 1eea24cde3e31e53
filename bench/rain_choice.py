"""Where the light/heavy choice of `rainkit derain --rain auto` should switch, from images no training step saw.

The clear photos that the training runs of rainkit's SAPNet weights kept back for validation (`weather/clear`,
seed 0, 5% by name hash: the same split for `sapnet.rainkit` stage 3 and its heavy companion) are resized to at
most 400 px (so the light model's strength pass is its output), rained with each physics preset (`--presets`, an
intensity drawn per image from the preset's training range), and derained by both models. For every image: its
rain strength (`Derainer.rain_strength`, the light model) and the PSNR on Y of each model's 8-bit output.
Prints the two models' mean PSNR per preset and per strength band, and the threshold that maximises the mean PSNR
over all images when images above it go to the heavy model. No test set (Rain100L/H, GT-RAIN, coco128) is used.

    python bench/rain_choice.py [--light sapnet.rainkit] [--heavy sapnet.rainkit-heavy | PATH]
                                [--presets light,heavy,downpour] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
INTENSITY = {"light": (0.1, 0.8)}  # the light model's training range; the heavy presets' is 0.3-0.8
SIDE = 400


def validation_photos(limit: int | None) -> list[Path]:
    from rainkit.data.images import IMAGE_SUFFIXES
    from rainkit.data.splits import is_validation

    folder = SHARED / "data" / "weather" / "clear"
    if not folder.is_dir():
        sys.exit(f"{folder}: missing (set RAINKIT_SHARED)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = [p for p in files if is_validation(f"clear/{p.relative_to(folder).as_posix()}", 0, 0.05)]
    return chosen[:limit] if limit else chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--light", default="sapnet.rainkit")
    parser.add_argument("--heavy", default="sapnet.rainkit-heavy")
    parser.add_argument("--presets", default="light,heavy,downpour")
    parser.add_argument("--limit", type=int, default=None, help="the first N validation photos only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch

    from rainkit.data.images import read_image, to_uint8
    from rainkit.derain.engine import Derainer
    from rainkit.metrics.fullref import psnr, rgb_to_y
    from rainkit.synth.physics import image_seed, synthesize

    light = Derainer.load("sapnet", args.light, device="cpu")
    heavy = Derainer.load("sapnet", args.heavy, device="cpu")
    photos = validation_photos(args.limit)
    rows = []
    for photo in photos:
        rgb = read_image(photo).rgb
        scale = SIDE / max(rgb.shape[:2])
        if scale < 1:
            rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        clean_y = rgb_to_y(to_uint8(rgb))
        for preset in args.presets.split(","):
            seed = image_seed(0, f"{preset}:{photo.name}")
            low, high = INTENSITY.get(preset, (0.3, 0.8))
            intensity = float(np.random.default_rng(seed).uniform(low, high))
            rainy = synthesize(rgb, "rain", preset=preset, intensity=intensity, seed=seed)
            x = torch.from_numpy(np.ascontiguousarray(rainy.transpose(2, 0, 1)))[None]
            strength, light_out = light.rain_strength(x)  # the engine runs it in inference mode
            light_rgb = light_out[0].numpy().transpose(1, 2, 0) if light_out is not None else light.derain(rainy)
            heavy_rgb = heavy.derain(rainy)
            scores = {name: psnr(rgb_to_y(to_uint8(np.clip(out, 0, 1))), clean_y)
                      for name, out in (("input", rainy), ("light", light_rgb), ("heavy", heavy_rgb))}
            rows.append({"photo": photo.name, "preset": preset, "intensity": intensity, "strength": strength, **scores})
            print(f"{photo.name:28s} {preset:9s} {intensity:.2f}  strength {strength:.4f}  input {scores['input']:6.2f}"
                  f"  light {scores['light']:6.2f}  heavy {scores['heavy']:6.2f}", flush=True)

    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    print(f"\n{len(photos)} validation photos; mean PSNR Y (input / light / heavy)")
    for preset in args.presets.split(","):
        sel = [r for r in rows if r["preset"] == preset]
        print(f"  {preset:9s} {mean([r['input'] for r in sel]):6.2f} / {mean([r['light'] for r in sel]):6.2f} / "
              f"{mean([r['heavy'] for r in sel]):6.2f}   strength {min(r['strength'] for r in sel):.3f}-"
              f"{max(r['strength'] for r in sel):.3f}")
    bands = [0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 1.0]
    for low, high in zip(bands[:-1], bands[1:]):
        sel = [r for r in rows if low <= r["strength"] < high]
        if sel:
            print(f"  strength {low:.2f}-{high:.2f}: {len(sel):3d} images, light {mean([r['light'] for r in sel]):6.2f}"
                  f"  heavy {mean([r['heavy'] for r in sel]):6.2f}")
    candidates = sorted({0.0} | {r["strength"] for r in rows} | {1.0})
    best = max(candidates, key=lambda t: mean([r["heavy"] if r["strength"] > t else r["light"] for r in rows]))
    chosen = mean([r["heavy"] if r["strength"] > best else r["light"] for r in rows])
    print(f"best threshold {best:.4f}: mean {chosen:.2f} dB (light alone {mean([r['light'] for r in rows]):.2f}, "
          f"heavy alone {mean([r['heavy'] for r in rows]):.2f}); {sum(r['strength'] > best for r in rows)} of "
          f"{len(rows)} images heavy")
    if args.json:
        args.json.write_text(json.dumps({"light": args.light, "heavy": args.heavy, "threshold": best, "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
