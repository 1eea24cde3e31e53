"""Write the compact TPSeNCE training set that travels to a GPU machine (issue 15's GPU path).

    nice -n 19 python scripts/tpsence_prepare.py [--shared ../shared] [--out .tpsence-data]

From `<shared>/data/weather/clear` and `<shared>/data/weather/rain`, the photos outside rainkit's held-out 15% of
each (`rainkit.data.splits.split_held_out`: no training step may see the others; the generator's contact sheet and
label agreement are measured on the held-out clear photos, the derainers' no-reference scores on the rainy ones), it writes,
into the git-ignored folder `.tpsence-data/` at the repo root, the layout `rainkit train tpsence` reads:

    clear/<source>/<name>.jpg         rain/<source>/<name>.jpg
    labels/clear/<source>/<name>.png  labels/rain/<source>/<name>.png   (ESPNet Cityscapes train ids)
    weights/sapnet-official/net_latest.pth + LICENSE   (the official SAPNet, MIT: the device run's derain checks)
    manifest.json                      (settings, counts, held-out count, bytes)

Each photo is scaled as the trainer would scale it at `load_size = --width` with crops of `--crop`
(CUT's scale-width, never below the crop; `rainkit.train.unpaired_data._scale_for`) but never enlarged: a
photo the trainer would enlarge is kept at its own size and the trainer enlarges it at load, as it would the
original. So the trainer with `load_size=--width crop=--crop` sees these photos as it would see the originals,
less the JPEG re-encoding (`--quality`). Label maps are ESPNet's on the original photo (as `rainkit train
tpsence --segmenter espnet` computes them), scaled with nearest neighbour to the stored size.

Defaults, and why: `--width 256 --crop 256` makes every photo's short side 256, the crop's height: the 391
rainy web photos that are 256x256 (72% of the rainy set) stay at their own pixels. A wider load (CUT's
scale-width to 320, 384, ...) would enlarge them, and an interpolation blur that only the rainy domain has is
a cue the discriminator can pick up and the generator learn as "rain"; it also costs bytes (about 26 MiB of
JPEGs at width 384 against 22 at 256) and makes a crop a smaller part of the scene than generation on a
whole photo sees (instance norm uses the whole input's statistics). What a wider load would give: finer
detail of the larger photos and more crop positions. Quality 85 (4:2:0): about 40 dB against the scaled
photo, below the web photos' own compression; 90 costs 20% more bytes for 2 dB.

Resumable: every file is written atomically and skipped when present; the settings are in the manifest,
and a second run with other settings refuses (delete the folder or give another `--out`). Prints the
folder's size, the repo's tracked files' (`git ls-files`) and their total against the 64 MiB a device call
carries, with the room a later session's `init/` (about 28 MiB: the fp16 generator, D and heads) needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CARRY_LIMIT = 64 * 2**20
INIT_BYTES = 29_600_000  # a later session's init/: fp16 generator (22.8 MB) + D and MLP heads (6.7 MB) + card
SAPNET_OFFICIAL = "weights/sapnet-official"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tracked_bytes(repo: Path) -> int:
    """The repo's tracked files, as `git ls-files | xargs du -b` counts them."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())


def stored_size(height: int, width: int, load: int, crop: int) -> tuple[int, int] | None:
    """(width, height) the photo is stored at, or None to keep its size (the trainer's scale, never above 1)."""
    from rainkit.train.unpaired_data import _scale_for

    scale = _scale_for(height, width, load, crop)
    if scale >= 1.0 - 1e-9:
        return None
    return max(crop, int(round(width * scale))), max(crop, int(round(height * scale)))


def prepare(args) -> dict:
    import cv2
    import numpy as np
    import torch

    from rainkit.data.images import IMAGE_SUFFIXES, read_image, to_uint8
    from rainkit.data.splits import split_held_out
    from rainkit.hub import load_model
    from rainkit.hub.weights import sha256_file
    from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
    from rainkit.models.espnet import Segmenter
    from rainkit.registry import get_weights

    torch.set_num_threads(args.threads)
    shared, out = Path(args.shared).resolve(), Path(args.out).resolve()
    weather = shared / "data" / "weather"
    settings = {"width": args.width, "crop": args.crop, "quality": args.quality, "labels": "espnet.cityscapes",
                "held_out": "rainkit.data.splits.split_held_out (15% of weather/clear and of weather/rain by name hash)"}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text()).get("settings")
        if old != settings:
            sys.exit(f"{out} was prepared with {old}, not {settings}: delete it or give another --out")
    out.mkdir(parents=True, exist_ok=True)

    def images(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    clear_all = images(weather / "clear")
    clear, clear_held = split_held_out(clear_all, weather / "clear")
    rain_all = images(weather / "rain")
    rain, held = split_held_out(rain_all, weather / "rain")
    if args.limit:
        clear, rain = clear[:args.limit], rain[:args.limit]
    espnet = shared / "weights" / "espnet-cityscapes" / "espnet_p_2_q_8.pth"
    segmenter = None
    counts = {"written": 0, "skipped": 0}
    started = time.perf_counter()
    total = len(clear) + len(rain)
    for domain, files, root in (("clear", clear, weather / "clear"), ("rain", rain, weather / "rain")):
        for path in files:
            rel = path.relative_to(root)
            image_out = out / domain / rel.with_suffix(".jpg")
            label_out = out / "labels" / domain / rel.with_suffix(".png")
            if image_out.is_file() and label_out.is_file():
                counts["skipped"] += 1
                continue
            if segmenter is None:
                model, _ = load_model("espnet", str(espnet), device="cpu")
                segmenter = Segmenter(model, "cpu")
            rgb = to_uint8(read_image(path).rgb)
            labels = segmenter.segment(rgb.astype(np.float32) / 255.0)  # on the photo itself, as the trainer does
            size = stored_size(rgb.shape[0], rgb.shape[1], args.width, args.crop)
            if size is not None:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, args.quality])
            ok2, png = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            if not (ok and ok2):
                sys.exit(f"{path}: could not encode")
            atomic_write_bytes(label_out, png.tobytes())
            atomic_write_bytes(image_out, jpg.tobytes())  # last: its presence marks the pair done
            counts["written"] += 1
            done = counts["written"] + counts["skipped"]
            if counts["written"] % 50 == 0:
                rate = counts["written"] / (time.perf_counter() - started)
                print(f"  {done}/{total} ({rate:.1f} photos/s)", flush=True)

    # the official SAPNet for the device run's derain checks (MIT; never committed: .tpsence-data is ignored)
    entry = get_weights("sapnet.official")
    source = shared / "weights" / "sapnet-official"
    target = out / SAPNET_OFFICIAL
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "net_latest.pth").is_file() or sha256_file(target / "net_latest.pth") != entry.sha256:
        if sha256_file(source / "net_latest.pth") != entry.sha256:
            sys.exit(f"{source / 'net_latest.pth'}: not the registered sapnet.official (sha256 differs)")
        shutil.copyfile(source / "net_latest.pth", target / "net_latest.pth")
        shutil.copyfile(source / "LICENSE", target / "LICENSE")

    wanted = {d: {p.relative_to(weather / d).with_suffix(".jpg") for p in files}
              for d, files in (("clear", clear), ("rain", rain))}
    stale = [p for d in ("clear", "rain") for p in (out / d).rglob("*.jpg") if p.relative_to(out / d) not in wanted[d]]
    if stale and not args.limit:
        sys.exit(f"{len(stale)} stored photos are not in the training set (held out, or gone): {stale[:3]} — "
                 f"delete {out} and prepare again")
    data = {d: folder_bytes(out / d) for d in ("clear", "rain", "labels", "weights")}
    manifest = {"settings": settings, "clear": len(clear), "rain": len(rain), "rain_held_out": len(held),
                "rain_all": len(rain_all), "clear_held_out": len(clear_held), "clear_all": len(clear_all), "bytes": data, "source": str(weather),
                "layout": {"clear": "clear", "target": "rain", "seg_clear": "labels/clear", "seg_target": "labels/rain",
                           "sapnet_official": f"{SAPNET_OFFICIAL}/net_latest.pth"}}
    atomic_write_json(manifest_path, manifest)
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return {"manifest": manifest, "counts": counts, "out": out}


def report(out: Path) -> None:
    mib = 2**20
    data = folder_bytes(out)
    init = folder_bytes(out / "init") if (out / "init").is_dir() else 0
    tracked = tracked_bytes(REPO)
    total = data + tracked
    print(f"{out}: {data / mib:.1f} MiB ({', '.join(f'{d} {folder_bytes(out / d) / mib:.1f}' for d in ('clear', 'rain', 'labels', 'weights', 'init') if (out / d).is_dir())})")
    print(f"repo tracked files (git ls-files): {tracked / mib:.1f} MiB")
    print(f"travels to the device: {total / mib:.1f} MiB of {CARRY_LIMIT / mib:.0f} MiB"
          + ("" if init else f"; with a later session's init/ (~{INIT_BYTES / mib:.1f} MiB): "
                             f"{(total + INIT_BYTES) / mib:.1f} MiB"))
    if total + (0 if init else INIT_BYTES) > CARRY_LIMIT:
        print("WARNING: over the 64 MiB a device call carries; lower --quality or --width", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("RAINKIT_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--out", default=str(REPO / ".tpsence-data"))
    parser.add_argument("--width", type=int, default=256, help="the trainer's load_size (CUT's scale-width)")
    parser.add_argument("--crop", type=int, default=256, help="the training crop (no photo is stored below it)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for ESPNet (the CPU may be shared)")
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)  # tests: the first N of each
    parser.add_argument("--size-only", action="store_true", help="only report the sizes")
    args = parser.parse_args()
    if not args.size_only:
        result = prepare(args)
        m, c = result["manifest"], result["counts"]
        print(f"{m['clear']} clear and {m['rain']} rainy photos ({m['clear_held_out']} of {m['clear_all']} clear and "
              f"{m['rain_held_out']} of {m['rain_all']} rainy held out, not written): {c['written']} written, {c['skipped']} already there, {c['seconds']} s")
    report(Path(args.out).resolve())


if __name__ == "__main__":
    main()
