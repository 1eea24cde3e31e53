"""Does a TPSeNCE generator's rain keep the scene? Label agreement and a contact sheet on held-out clear photos.

For every clear photo that no training step saw (`rainkit.data.splits`: 15% of `weather/clear` by name hash), the
generator's rain (`--weights`, `--work-width` as `rainkit generate` takes them) and the physics synthesizer's
(`--preset`, seeded from the photo's name as `rainkit generate --method physics` seeds it) are segmented with ESPNet
(Cityscapes), and each is scored by its pixel accuracy against the clear photo's own labels: how much of the scene
the weather left recognisable. Also per method: the mean absolute change of the per-channel means (a colour cast
shows there, in grey levels, and so does an even darkening or brightening), of the colour cast alone (the per-channel
means less their average: a grey change leaves it at 0), of the global contrast (standard deviation of the luma, grey levels), and the share
of channel values the weather drove to 0 or 255 that were not there in the clear photo (blown highlights and
crushed shadows: where a residual generator's change leaves the image range).

`--sheet PATH`: 8 of the held-out clear photos (fixed by name hash), one row each: clear | TPSeNCE | physics |
the held-out real rainy photo whose ESPNet layout is closest (the best pixel agreement of 32x24 label grids).

    python bench/tpsence_look.py --weights runs/tpsence-rain/generator.safetensors --work-width 171 \
        --sheet weights/tpsence-rain.sheet.jpg --json look.json

Reads `../shared` (or `$RAINKIT_SHARED`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GRID = (32, 24)  # label grid (width, height) for finding a real rainy photo of a similar layout


def shared_root() -> Path:
    root = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
    if not (root / "data" / "weather").is_dir():
        sys.exit(f"{root}: the shared weather photos are missing (set RAINKIT_SHARED)")
    return root


def held_out(folder: Path) -> list[Path]:
    from rainkit.data.datasets import list_images
    from rainkit.data.splits import split_held_out

    files = [p for source in sorted(folder.iterdir()) if source.is_dir() for p in list_images(source)]
    return split_held_out(files, folder)[1]


def luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def cast(rgb):
    """The image's per-channel means less their average: its colour balance, blind to grey changes."""
    means = rgb.reshape(-1, 3).mean(0)
    return means - means.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="generator: a registered tpsence.* name or a file")
    parser.add_argument("--work-width", type=int, default=0)
    parser.add_argument("--preset", default="heavy", help="physics rain preset to compare with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N held-out photos")
    parser.add_argument("--sheet", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import cv2
    import numpy as np

    from rainkit.benchmark.runner import write_contact_sheet
    from rainkit.data.images import read_image, to_uint8
    from rainkit.data.splits import hash_fraction
    from rainkit.hub import load_model
    from rainkit.io.atomic import atomic_write_json
    from rainkit.models.espnet import Segmenter
    from rainkit.synth.physics import image_seed, synthesize
    from rainkit.synth.tpsence import load_generator

    root = shared_root()
    weather = root / "data" / "weather"
    clear = held_out(weather / "clear")
    if args.limit:
        clear = clear[:args.limit]
    espnet, _ = load_model("espnet", str(root / "weights" / "espnet-cityscapes" / "espnet_p_2_q_8.pth"))
    segmenter = Segmenter(espnet, "cpu")
    generator = load_generator(args.weights, work_width=args.work_width)
    started = time.perf_counter()
    rows, kept = [], {}
    sheet_names = {p.relative_to(weather / "clear").as_posix() for p in
                   sorted(clear, key=lambda p: hash_fraction(f"sheet:{p.relative_to(weather / 'clear').as_posix()}"))
                   [:args.rows]}
    for path in clear:
        name = path.relative_to(weather / "clear").as_posix()
        rgb = read_image(path).rgb
        labels = segmenter.segment(rgb)
        made = {"tpsence": generator.generate(rgb),
                "physics": synthesize(rgb, "rain", preset=args.preset, seed=image_seed(args.seed, Path(name).with_suffix("").as_posix()))}
        row = {"photo": name, "size": [rgb.shape[1], rgb.shape[0]]}
        clipped_before = np.isin(to_uint8(rgb), (0, 255))
        for method, image in made.items():
            written = to_uint8(image)
            image = written.astype(np.float32) / 255.0  # as written to disk
            row[method] = {
                "label_agreement": float((segmenter.segment(image) == labels).mean()),
                "channel_shift": float(np.abs(image.reshape(-1, 3).mean(0) - rgb.reshape(-1, 3).mean(0)).mean() * 255),
                "colour_cast": float(np.abs(cast(image) - cast(rgb)).mean() * 255),
                "contrast_change": float((luma(image).std() - luma(rgb).std()) * 255),
                "clipped_added": float((np.isin(written, (0, 255)) & ~clipped_before).mean()),
            }
            if name in sheet_names:
                kept.setdefault(name, {"clear": rgb, "labels": labels})[method] = image
        rows.append(row)
        print(f"{name}: label agreement tpsence {row['tpsence']['label_agreement']:.3f}, "
              f"physics {row['physics']['label_agreement']:.3f}", flush=True)
    summary = {method: {key: float(np.mean([r[method][key] for r in rows]))
                        for key in ("label_agreement", "channel_shift", "colour_cast", "contrast_change", "clipped_added")}
               for method in ("tpsence", "physics")}
    print(f"\n{len(rows)} held-out clear photos, {time.perf_counter() - started:.0f} s")
    for method, values in summary.items():
        print(f"{method:8s} label agreement {values['label_agreement']:.4f}, channel-mean shift "
              f"{values['channel_shift']:.2f} grey levels (colour cast {values['colour_cast']:.2f}), luma contrast change {values['contrast_change']:+.2f}, "
              f"values newly clipped {values['clipped_added']:.4f}")
    result = {"weights": args.weights, "work_width": args.work_width, "preset": args.preset,
              "generator": generator.describe(), "summary": summary, "photos": rows}

    if args.sheet:
        rain = held_out(weather / "rain")
        grids = []
        for path in rain:
            labels = segmenter.segment(read_image(path).rgb)
            grids.append(cv2.resize(labels, GRID, interpolation=cv2.INTER_NEAREST))
        lines = []
        for name in sorted(kept, key=lambda n: hash_fraction(f"sheet:{n}")):
            item = kept[name]
            grid = cv2.resize(item["labels"], GRID, interpolation=cv2.INTER_NEAREST)
            best = int(np.argmax([(g == grid).mean() for g in grids]))
            real_name = rain[best].relative_to(weather / "rain").as_posix()
            lines.append([(label, to_uint8(image)) for label, image in (
                ("clear " + name, item["clear"]), ("TPSeNCE", item["tpsence"]),
                (f"physics {args.preset}", item["physics"]), ("real rain " + real_name, read_image(rain[best]).rgb))])
            result.setdefault("sheet", []).append({"clear": name, "real": real_name})
        write_contact_sheet(args.sheet, lines, quality=88)
        print(f"contact sheet: {args.sheet}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
