"""Training data for derain networks: paired images or clean images rained on the fly.

Images are decoded once into memory. Every random choice for a sample (which crop, which flip,
which rain) is drawn from a generator seeded by (run seed, epoch, sample index), so a run resumed
at any step sees exactly the batches it would have seen, on any number of ranks.
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from rainkit.data.images import IMAGE_SUFFIXES, read_image
from rainkit.data.splits import is_validation
from rainkit.errors import DatasetError, InputError
from rainkit.synth.physics import PRESETS, REFERENCE_SIDE, RainParams, add_rain, rain_params


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 2**31 - 1]).permutation(size)


def rank_batch(order: np.ndarray, b: int, batch: int, rank_slice: slice) -> np.ndarray:
    """The sample indices of batch `b` of an epoch's `order`, cut to one rank's share of the global batch."""
    return order[b * batch:(b + 1) * batch][rank_slice]


@dataclass
class PatchSource:
    clean: np.ndarray  # H x W x 3 uint8
    rainy: np.ndarray | None  # None: synthesise
    name: str


class PatchDataset:
    """`len(dataset)` samples per epoch: `patches_per_image` random patches of every image."""

    def __init__(self, sources: list[PatchSource], *, patch: int, patches_per_image: int, seed: int,
                 synthesize_preset: str | None = None, intensity: tuple[float, float] = (0.5, 0.5),
                 jitter: float = 0.0, clean_fraction: float = 0.0, scene_fraction: float = 0.0):
        if not sources:
            raise DatasetError("no training images")
        small = [s.name for s in sources if min(s.clean.shape[:2]) < patch]
        if small:
            raise DatasetError(f"{len(small)} training image(s) smaller than the {patch}px patch, e.g. {small[0]}")
        if synthesize_preset is None and any(s.rainy is None for s in sources):
            raise DatasetError("clean-only images need a rain preset to synthesise pairs (`synthesize`)")
        self.sources = sources
        self.patch = patch
        self.per_image = patches_per_image
        self.seed = seed
        self.presets = parse_presets(synthesize_preset)
        if not 0.0 <= intensity[0] <= intensity[1] <= 1.0:
            raise DatasetError(f"rain intensity range must lie within 0..1 and be ordered, got {intensity}")
        self.intensity = intensity
        self.jitter = jitter
        if not 0.0 <= clean_fraction < 1.0:
            raise DatasetError(
                f"the share of rain-free samples must lie in 0..1 (exclusive of 1), got {clean_fraction}")
        self.clean_fraction = clean_fraction
        if not 0.0 <= scene_fraction <= 1.0:
            raise DatasetError(f"the share of whole-scene samples must lie in 0..1, got {scene_fraction}")
        self.scene_fraction = scene_fraction
        # Whole-scene copies: each image scaled so its short side is the patch, so that a patch cut from it
        # holds the whole scene's height, as the image-wide channel attention sees at inference.
        self.scenes = [_scene_copy(s, patch) for s in sources] if scene_fraction > 0 else []

    def rain_for(self, rng: np.random.Generator) -> RainParams:
        """The sample's rain: a preset of the mix at an intensity drawn from the range; with `jitter` > 0
        the streak angle, length and width vary too, so one run covers the spread of real rain."""
        # A single preset draws nothing here, so its runs keep the random stream they always had.
        preset = self.presets[int(rng.integers(len(self.presets)))] if len(self.presets) > 1 else self.presets[0]
        params = rain_params(preset, float(rng.uniform(*self.intensity)))
        if self.jitter <= 0:
            return params
        j = self.jitter
        angle = params.angle + float(rng.uniform(-20, 20)) * j
        length = params.length * float(np.exp(rng.uniform(-0.4, 0.8) * j))
        width = params.width * float(np.exp(rng.uniform(-0.2, 0.5) * j))
        # Faint streaks too: Rain100L-style rain is many dim streaks (mean rise ~0.12 over ~15% of the
        # pixels), which a model trained only on the presets' bright streaks leaves behind.
        brightness = min(1.0, params.brightness * float(np.exp(rng.uniform(-1.2, 0.2) * j)))
        return replace(params, angle=angle, length=length, width=width, brightness=brightness)

    def __len__(self) -> int:
        return len(self.sources) * self.per_image

    def sample(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rainy, clean) float32 patches, H x W x 3 in [0, 1]."""
        rng = sample_rng(self.seed, epoch, index)
        source = self.sources[index % len(self.sources)]
        # Drawn only when asked for, so runs without whole-scene samples keep their random stream.
        if self.scene_fraction > 0 and rng.random() < self.scene_fraction:
            source = self.scenes[index % len(self.sources)]
        height, width = source.clean.shape[:2]
        p = self.patch
        if source.rainy is None:
            # Rain a margin around the patch so streaks enter it from outside, at the full photo's scale.
            margin = p // 2
            y0 = int(rng.integers(0, height - p + 1))
            x0 = int(rng.integers(0, width - p + 1))
            wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
            wy1, wx1 = min(height, y0 + p + margin), min(width, x0 + p + margin)
            window = source.clean[wy0:wy1, wx0:wx1].astype(np.float32) / 255.0
            # Drawn only when asked for, so runs without rain-free samples keep their random stream.
            if self.clean_fraction > 0 and rng.random() < self.clean_fraction:
                rained = window
            else:
                rained = add_rain(window, self.rain_for(rng), rng,
                                  scale=max(min(height, width) / REFERENCE_SIDE, 0.25))
            clean = window[y0 - wy0:y0 - wy0 + p, x0 - wx0:x0 - wx0 + p]
            rainy = rained[y0 - wy0:y0 - wy0 + p, x0 - wx0:x0 - wx0 + p]
        else:
            y0 = int(rng.integers(0, height - p + 1))
            x0 = int(rng.integers(0, width - p + 1))
            clean = source.clean[y0:y0 + p, x0:x0 + p].astype(np.float32) / 255.0
            rainy = source.rainy[y0:y0 + p, x0:x0 + p].astype(np.float32) / 255.0
        if rng.random() < 0.5:
            clean, rainy = clean[:, ::-1], rainy[:, ::-1]
        return np.ascontiguousarray(rainy), np.ascontiguousarray(clean)

    def batch(self, indices, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample(int(i), epoch) for i in indices]
        rainy = torch.from_numpy(np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2).copy())
        clean = torch.from_numpy(np.stack([p[1] for p in pairs]).transpose(0, 3, 1, 2).copy())
        return rainy, clean


def _scene_copy(source: PatchSource, patch: int) -> PatchSource:
    height, width = source.clean.shape[:2]
    scale = patch / min(height, width)
    size = (max(patch, int(round(width * scale))), max(patch, int(round(height * scale))))

    def scaled(image):
        return None if image is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    return PatchSource(scaled(source.clean), scaled(source.rainy), source.name)


class EpochBatches(torch.utils.data.Dataset):
    """The batches of one epoch from `first` on, as a map-style dataset, so that DataLoader workers can
    make them ahead of the model. Batch `b` is `order[b*batch:(b+1)*batch]` cut to this rank's share;
    every sample's randomness comes from (seed, epoch, index), so workers change nothing in the result."""

    def __init__(self, dataset: PatchDataset, order: np.ndarray, *, epoch: int, batch: int, first: int,
                 count: int, rank_slice: slice):
        self.dataset, self.order, self.epoch = dataset, order, epoch
        self.batch_size, self.first, self.count, self.rank_slice = batch, first, count, rank_slice

    def __len__(self) -> int:
        return self.count - self.first

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = rank_batch(self.order, self.first + i, self.batch_size, self.rank_slice)
        return self.dataset.batch(indices, self.epoch)


def _single_threaded_worker(_: int) -> None:
    cv2.setNumThreads(1)
    # Ctrl-C and SIGTERM reach the whole process group; the training process handles them (it saves a checkpoint
    # and shuts its workers down), so workers ignore them instead of dying mid-batch with tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resolve_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    # torchrun starts one training process per GPU on a node: they share its cores.
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(12, per_process - 2))


def epoch_loader(batches: EpochBatches, workers: int, pin_memory: bool):
    """Iterate `batches` in order, in this process (workers=0) or prefetched by `workers` processes."""
    if workers <= 0:
        return (batches[i] for i in range(len(batches)))
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=pin_memory, prefetch_factor=4,
                                       worker_init_fn=_single_threaded_worker)


def parse_presets(spec: str | None) -> list[str]:
    """`light`, or a mix such as `light,heavy` (each sample picks one uniformly; repeat a name to
    weight it, e.g. `light,light,heavy`). Unknown names fail here, not mid-epoch."""
    if spec is None:
        return []
    presets = [part.strip() for part in spec.split(",") if part.strip()]
    if not presets:
        raise DatasetError(f"no rain preset in '{spec}'")
    for preset in presets:
        if preset not in PRESETS:
            raise DatasetError(f"unknown rain preset '{preset}' (use {', '.join(PRESETS)}, or a comma-separated mix)")
    return presets


def _to_u8(path: Path) -> np.ndarray:
    from rainkit.data.images import to_uint8

    return to_uint8(read_image(path).rgb)


def listing(items: list[str], limit: int = 8) -> str:
    """`a, b, c, … and N more`: a list short enough for a one-line message."""
    shown = ", ".join(items[:limit])
    return shown + (f", … and {len(items) - limit} more" if len(items) > limit else "")


def load_sources(pairs: list[tuple[Path | None, Path]]) -> tuple[list[PatchSource], list[str]]:
    """Decode (rainy or None, clean) path pairs. A pair with an unreadable image, or whose sizes differ,
    is left out with a one-line reason (the second list), so one bad file costs one pair, not the run."""
    sources, skipped = [], []
    for rainy_path, clean_path in pairs:
        try:
            clean = _to_u8(clean_path)
            rainy = _to_u8(rainy_path) if rainy_path is not None else None
        except InputError as exc:
            skipped.append(str(exc))
            continue
        if rainy is not None and rainy.shape != clean.shape:
            skipped.append(f"{rainy_path}: size {rainy.shape[1]}x{rainy.shape[0]} differs from its clean image "
                           f"{clean_path.name} ({clean.shape[1]}x{clean.shape[0]})")
            continue
        sources.append(PatchSource(clean, rainy, clean_path.name))
    return sources, skipped


def _centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    h, w = min(height, side), min(width, side)
    y0, x0 = (height - h) // 2, (width - w) // 2
    return image[y0:y0 + h, x0:x0 + w]


def _training_pairs(folder: Path, synthesize_preset: str | None) -> list[tuple[Path | None, Path]]:
    from rainkit.data.datasets import detect_layout, pair_files

    if not folder.is_dir():
        raise DatasetError(f"{folder}: training data folder not found")
    if synthesize_preset is not None:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
        return [(None, p) for p in files]
    layout = detect_layout(folder)
    pairs, _ = pair_files(layout.rainy, layout.clean, layout.rainy_dir, layout.clean_dir, None, str(folder))
    return [(p.rainy, p.clean) for p in pairs]


@dataclass
class TrainingData:
    train: PatchDataset
    val_pairs: list[tuple[np.ndarray, np.ndarray]]  # (rainy, clean) uint8
    description: dict
    skipped: list[str] = field(default_factory=list)  # one "path: reason" line per pair left out unread


def prepare_training_data(config) -> TrainingData:
    """The training patches and the validation pairs of a `TrainConfig`.

    Paired folders are used as they are; with `config.synthesize` every image under the folders is
    a clean image rained on the fly. Validation is `config.val` (a paired folder) or a split of the
    training images chosen by name hash, rained once with a fixed seed and centre-cropped to
    `val_max_side` so that scoring an epoch stays cheap on CPUs.
    """
    folders = [Path(p).expanduser() for p in (config.data if isinstance(config.data, list) else [config.data]) if p]
    if not folders:
        raise DatasetError("no training data: give `data` FOLDER (paired, or clean images with `synthesize` PRESET)")
    listed: list[tuple[Path | None, Path]] = []
    split_key: dict[Path, str] = {}  # the split hashes names within each folder, so it is the same from any cwd
    for folder in folders:
        for pair in _training_pairs(folder, config.synthesize):
            listed.append(pair)
            split_key[pair[1]] = f"{folder.resolve().name}/{pair[1].relative_to(folder).as_posix()}"
    if config.val:
        from rainkit.data.datasets import resolve_dataset

        val_set = resolve_dataset(config.val)
        val_listed = [(p.rainy, p.clean) for p in val_set.pairs]
        train_listed = listed
    else:
        val_listed = [pair for pair in listed if is_validation(split_key[pair[1]], config.seed, config.val_fraction)]
        train_listed = [pair for pair in listed if pair not in val_listed]
        if not train_listed:
            raise DatasetError("the validation split left no training images: lower `val_fraction` or give `val`")
    train_sources, skipped = load_sources(train_listed)
    small = [s.name for s in train_sources if min(s.clean.shape[:2]) < config.patch]
    train_sources = [s for s in train_sources if min(s.clean.shape[:2]) >= config.patch]
    if not train_sources:
        reasons = []
        if skipped:
            reasons.append(f"{len(skipped)} cannot be read ({listing(skipped, 3)})")
        if small:
            reasons.append(f"{len(small)} are smaller than the {config.patch}px patch (e.g. {small[0]}; "
                           f"lower `patch`)")
        raise DatasetError(f"no training images: of the {len(train_listed)} listed, " + " and ".join(reasons)
                           if reasons else "no training images found in the data folders")
    val_sources, val_skipped = load_sources(val_listed)
    skipped += val_skipped
    dataset = PatchDataset(train_sources, patch=config.patch, patches_per_image=config.patches_per_image,
                           seed=config.seed, synthesize_preset=config.synthesize,
                           intensity=tuple(config.intensity), jitter=config.jitter,
                           clean_fraction=config.clean_fraction, scene_fraction=config.scene_fraction)
    val_pairs = []
    for source in val_sources:
        clean = _centre_crop(source.clean, config.val_max_side)
        if source.rainy is not None:
            rainy = _centre_crop(source.rainy, config.val_max_side)
        else:
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"val:{config.seed}:{source.name}".encode())
                                                       .digest()[:8], "little"))
            scale = max(min(source.clean.shape[:2]) / REFERENCE_SIDE, 0.25)
            rainy_float = add_rain(clean.astype(np.float32) / 255.0, dataset.rain_for(rng), rng, scale=scale)
            rainy = np.clip(np.round(rainy_float * 255.0), 0, 255).astype(np.uint8)
        val_pairs.append((np.ascontiguousarray(rainy), np.ascontiguousarray(clean)))
    description = {"folders": [str(f) for f in folders], "train_images": len(train_sources),
                   "skipped_small": len(small), "skipped_unreadable": len(skipped), "val_images": len(val_pairs),
                   "validation": config.val or f"{config.val_fraction:.0%} split of the training images by name",
                   "synthesize": config.synthesize, "intensity": list(config.intensity), "jitter": config.jitter}
    return TrainingData(dataset, val_pairs, description, skipped)
