"""What a change to a derainer's training or weights must report, in one run: synthetic, heavy and real rain.

For each model (the rainy input `none`, and `sapnet=WEIGHTS` entries as `rainkit benchmark --model` takes them):
- `gtrain`: the real-rain webcam frames with each scene's clean frame, PSNR/SSIM on Y, per scene and overall;
- `rain100h`: the Rain100H sample; `rain100l`: Rain100L (100 images; `--rain100l-limit N` for a quick look);
- `heldout`: NIQE and BRISQUE of the held-out real rainy photos (`rainkit.data.splits`: 15% of
  `weather/rain` by name hash, which no training step of rainkit's weights saw);
- `--sheet PATH`: a contact sheet of 8 held-out real rainy photos, one row each: the input, then each model (PNG, or
  JPEG for a .jpg path);
- `detect`: the coco128 study (`--add-rain heavy --seed 0`, YOLOv8n INT8): mAP50-95 and the share of the
  clean-to-rainy drop that deraining recovers (one study per model; about 6 minutes each on 2 cores).

    python bench/derainer_quality.py --model none --model sapnet=sapnet.official \
        --model sapnet=sapnet.rainkit --sets gtrain,rain100h,rain100l,heldout,detect --json quality.json

Reads `../shared` (or `$RAINKIT_SHARED`); prints one table per set and writes every figure to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

SETS = ("gtrain", "rain100h", "rain100l", "heldout", "detect")


def shared_root() -> Path:
    root = Path(os.environ.get("RAINKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    if not (root / "data").is_dir():
        sys.exit(f"{root}: the shared data folder is missing (set RAINKIT_SHARED)")
    return root


def held_out_rain(root: Path):
    from rainkit.data.datasets import Dataset, Pair, _size_counts, list_images
    from rainkit.data.splits import split_held_out

    folder = root / "data" / "weather" / "rain"
    files = [p for source in sorted(folder.iterdir()) if source.is_dir() for p in list_images(source)]
    _, held = split_held_out(files, folder)
    pairs = [Pair(f"{p.parent.name}/{p.stem}", p, None) for p in held]
    return Dataset("heldout-rain", "held-out real rain (15% of weather/rain by name hash)", folder, folder, None,
                   "images", "none", pairs, _size_counts(pairs))


def score(dataset, models, metrics, label: str) -> dict:
    from rainkit.benchmark.runner import run_benchmark

    started = time.perf_counter()
    result = run_benchmark(dataset, models, metrics, device="cpu")
    figures = {}
    for model in result.models:
        scenes: dict[str, dict[str, list[float]]] = {}
        for image in model.images:
            scene = image.id.split("-R-")[0] if label == "gtrain" else "all"
            for metric, value in image.scores.items():
                if value is not None:
                    scenes.setdefault(scene, {}).setdefault(metric, []).append(value)
        entry = {"mean": {m: model.mean(m) for m in metrics}, "images": len(model.images)}
        if label == "gtrain":
            entry["scenes"] = {s: {m: sum(v) / len(v) for m, v in values.items()} for s, values in sorted(scenes.items())}
        figures[model.label] = entry
    print(f"\n{label}: {dataset.title}, {len(dataset)} images ({time.perf_counter() - started:.0f} s)")
    for name, entry in figures.items():
        means = "  ".join(f"{m} {entry['mean'][m]:.4f}" for m in metrics if entry["mean"][m] is not None)
        print(f"  {name:40s} {means}")
        for scene, values in entry.get("scenes", {}).items():
            print(f"      {scene:36s} " + "  ".join(f"{m} {v:.4f}" for m, v in values.items()))
    return figures


def detect_study(root: Path, model: str) -> dict:
    from rainkit.detect.runner import DetectSettings, run_detect

    weights = model.split("=", 1)[1] if "=" in model else None  # a bare architecture: its default weights
    started = time.perf_counter()
    settings = DetectSettings(labels=root / "data" / "coco128" / "labels" / "train2017", add_rain="heavy", seed=0,
                              detector=root / "weights" / "yolov8n_int8_openvino_model", derain_weights=weights,
                              device="cpu", save_images=0)
    result = run_detect([str(root / "data" / "coco128" / "images" / "train2017")], settings)
    figures = {c: result.map_of(c) for c in ("clean", "rainy", "derained")}
    figures["recovered"] = result.recovered["map50_95"]
    print(f"  detect {model}: clean {figures['clean']:.3f} rainy {figures['rainy']:.3f} derained "
          f"{figures['derained']:.3f}, recovered {figures['recovered']:.1%} ({time.perf_counter() - started:.0f} s)")
    return figures


def contact_sheet(root: Path, models: list[str], path: Path, rows: int = 8, width: int = 320) -> None:
    """`rows` held-out real rainy photos (the first by name hash, so the choice is fixed), each model beside the input."""
    import numpy as np

    from rainkit.benchmark.runner import write_contact_sheet
    from rainkit.data.images import read_image, to_uint8
    from rainkit.data.splits import hash_fraction
    from rainkit.derain.engine import load_derainer

    pairs = sorted(held_out_rain(root).pairs, key=lambda p: hash_fraction(f"sheet:{p.id}"))[:rows]
    photos = [read_image(p.rainy).rgb for p in pairs]
    columns = [("rainy input", [to_uint8(photo) for photo in photos])]
    for model in models:
        if model == "none":
            continue
        arch, weights = model.split("=", 1)
        derainer = load_derainer(arch, weights, device="cpu")
        columns.append((weights if len(weights) < 40 else Path(weights).name,
                        [to_uint8(np.clip(derainer.derain(photo), 0, 1)) for photo in photos]))
    write_contact_sheet(path, [[(pairs[row].id if not i else label, images[row])
                                for i, (label, images) in enumerate(columns)] for row in range(len(photos))], width)
    print(f"\ncontact sheet: {path} ({len(photos)} held-out photos: {', '.join(p.id for p in pairs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="none, or sapnet=WEIGHTS (repeat)")
    parser.add_argument("--sets", default="gtrain,rain100h,rain100l,heldout")
    parser.add_argument("--rain100l-limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sheet", type=Path, default=None, help="write a contact sheet of held-out real rain here")
    args = parser.parse_args()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        sys.exit(f"unknown set(s) {', '.join(unknown)} (use {', '.join(SETS)})")

    from rainkit.data.datasets import resolve_dataset

    root = shared_root()
    report: dict = {"models": args.model}
    paired = ["psnr_y", "ssim_y"]
    if "gtrain" in sets:
        report["gtrain"] = score(resolve_dataset(str(root / "data" / "real-rain-gtrain")), args.model, paired, "gtrain")
    if "rain100h" in sets:
        report["rain100h"] = score(resolve_dataset(str(root / "data" / "rain100h-sample")), args.model, paired,
                                   "rain100h")
    if "rain100l" in sets:
        report["rain100l"] = score(resolve_dataset(str(root / "data" / "rain100l")).subset(args.rain100l_limit),
                                   args.model, paired, "rain100l")
    if "heldout" in sets:
        report["heldout"] = score(held_out_rain(root), args.model, ["niqe", "brisque"], "heldout")
    if "detect" in sets:
        print("\ndetect: coco128, --add-rain heavy --seed 0, YOLOv8n INT8")
        report["detect"] = {m: detect_study(root, m) for m in args.model if m != "none"}
    if args.sheet:
        contact_sheet(root, args.model, args.sheet)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
