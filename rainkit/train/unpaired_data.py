"""Unpaired training data for TPSeNCE: clear and rainy images, each with a semantic label map.

Images are decoded and scaled once (CUT's `scale_width_and_crop`: width to `load_size`, keeping
the aspect ratio, but never below the crop), then every sample draws from a generator seeded by
(run seed, epoch, sample index): which rainy image pairs with the clear one (CUT pairs them at
random), where both crops sit and whether each is flipped. The label maps are scaled with nearest
neighbour and cropped and flipped with their image, so the mPA of a pair compares the two crops
the networks see, as integer labels (the released code compares bilinearly resized colour-coded
maps, channel by channel).

A run resumed at any step, or split over any number of processes, sees the same samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rainkit.errors import DatasetError
from rainkit.losses.tpsence import mean_pixel_agreement


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one sample; `stream` separates independent uses (crops, patch ids, ...)."""
    return np.random.default_rng([seed, epoch, index, stream])


def _scale_for(height: int, width: int, load_size: int, crop: int) -> float:
    scale = load_size / width if load_size else 1.0
    return max(scale, crop / height, crop / width) if min(height * scale, width * scale) < crop else scale


def _rescale(image: np.ndarray, label: np.ndarray | None, load_size: int, crop: int):
    import cv2

    height, width = image.shape[:2]
    scale = _scale_for(height, width, load_size, crop)
    if abs(scale - 1.0) < 1e-9:
        return image, label
    size = (max(crop, int(round(width * scale))), max(crop, int(round(height * scale))))
    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    if label is not None:
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label


class UnpairedDataset:
    """`len(dataset)` samples per epoch; sample i uses clear image i mod #clear and a random rainy image."""

    def __init__(self, clear: Sequence[np.ndarray], target: Sequence[np.ndarray],
                 clear_labels: Sequence[np.ndarray] | None, target_labels: Sequence[np.ndarray] | None, *,
                 crop: int, load_size: int = 0, flip: bool = True, seed: int = 0, samples_per_epoch: int = 0,
                 clear_names: Sequence[str] | None = None, target_names: Sequence[str] | None = None):
        if not clear or not target:
            raise DatasetError(f"TPSeNCE needs clear and rainy images (got {len(clear)} clear, {len(target)} rainy)")
        self.crop = crop
        self.flip = flip
        self.seed = seed
        self.has_labels = clear_labels is not None and target_labels is not None
        self.clear, self.clear_labels = self._prepare(clear, clear_labels, load_size, clear_names, "clear")
        self.target, self.target_labels = self._prepare(target, target_labels, load_size, target_names, "rainy")
        self.size = samples_per_epoch or max(len(self.clear), len(self.target))

    def _prepare(self, images, labels, load_size, names, what):
        if labels is not None and len(labels) != len(images):
            raise DatasetError(f"{len(labels)} label maps for {len(images)} {what} images")
        out_images, out_labels = [], []
        for i, image in enumerate(images):
            name = names[i] if names else f"{what} image {i}"
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise DatasetError(f"{name}: expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
            label = None
            if labels is not None:
                label = np.asarray(labels[i])
                if label.shape != image.shape[:2]:
                    raise DatasetError(f"{name}: label map {label.shape[1]}x{label.shape[0]} does not match the "
                                       f"image {image.shape[1]}x{image.shape[0]}")
                label = label.astype(np.uint8)
            image, label = _rescale(image, label, load_size, self.crop)
            out_images.append(image)
            out_labels.append(label)
        return out_images, (out_labels if labels is not None else None)

    def __len__(self) -> int:
        return self.size

    def _crop(self, rng, image, label):
        height, width = image.shape[:2]
        y0 = int(rng.integers(0, height - self.crop + 1))
        x0 = int(rng.integers(0, width - self.crop + 1))
        flip = bool(self.flip and rng.random() < 0.5)
        patch = image[y0:y0 + self.crop, x0:x0 + self.crop]
        lab = label[y0:y0 + self.crop, x0:x0 + self.crop] if label is not None else None
        if flip:
            patch = patch[:, ::-1]
            lab = lab[:, ::-1] if lab is not None else None
        return patch, lab

    def sample(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(clear, rainy) uint8 crops and the pair's mPA (NaN without label maps)."""
        rng = sample_rng(self.seed, epoch, index)
        ci = index % len(self.clear)
        ti = int(rng.integers(0, len(self.target)))
        x, x_lab = self._crop(rng, self.clear[ci], self.clear_labels[ci] if self.has_labels else None)
        y, y_lab = self._crop(rng, self.target[ti], self.target_labels[ti] if self.has_labels else None)
        mpa = mean_pixel_agreement(x_lab, y_lab) if self.has_labels else float("nan")
        return np.ascontiguousarray(x), np.ascontiguousarray(y), mpa

    def batch(self, indices, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clear and rainy batches (B, 3, crop, crop) in [-1, 1] and the (B,) mPA of each pair."""
        samples = [self.sample(int(i), epoch) for i in indices]

        def stack(arrays):
            batch = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
            return torch.from_numpy(np.ascontiguousarray(batch))

        mpa = torch.tensor([s[2] for s in samples], dtype=torch.float32)
        return stack([s[0] for s in samples]), stack([s[1] for s in samples]), mpa


def load_image_folder(folder: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Every image under `folder` (recursively, sorted) as uint8 RGB, with its path relative to the folder."""
    from rainkit.data.images import IMAGE_SUFFIXES, read_image, to_uint8

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    return [to_uint8(read_image(p).rgb) for p in files], [str(p.relative_to(folder)) for p in files]


def segment_images(images: Sequence[np.ndarray], segmenter, on_image: Callable[[int, int], None] | None = None
                   ) -> list[np.ndarray]:
    """Label maps (H x W uint8) of uint8 RGB images with a `rainkit.models.espnet.Segmenter`."""
    labels = []
    for i, image in enumerate(images):
        labels.append(segmenter.segment(image.astype(np.float32) / 255.0))
        if on_image:
            on_image(i + 1, len(images))
    return labels


def load_labels_cached(images: Sequence[np.ndarray], names: Sequence[str], segmenter, cache_dir: str | Path | None,
                       on_image: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Label maps of `images`; with `cache_dir`, each map is read from / written to
    `cache_dir/<name>.png` (8-bit PNG of the label ids), so a folder is segmented once."""
    import cv2

    from rainkit.io.atomic import atomic_write_bytes

    if cache_dir is None:
        return segment_images(images, segmenter, on_image)
    cache = Path(cache_dir)
    labels = []
    for i, (image, name) in enumerate(zip(images, names)):
        path = cache / f"{name}.png"
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if label is None or label.shape != image.shape[:2]:
            label = segmenter.segment(image.astype(np.float32) / 255.0)
            atomic_write_bytes(path, cv2.imencode(".png", label)[1].tobytes())
        labels.append(label)
        if on_image:
            on_image(i + 1, len(images))
    return labels


def prepare_unpaired_data(clear_dir: str | Path, rainy_dir: str | Path, segmenter=None,
                          label_cache: str | Path | None = None,
                          on_image: Callable[[str, int, int], None] | None = None):
    """Read two image folders and, with a segmenter (e.g. `rainkit.models.espnet.load_segmenter()`),
    their label maps. Returns (clear, rainy, clear_labels, rainy_labels, description) ready for
    `train_tpsence`; the labels are None without a segmenter."""
    clear, clear_names = load_image_folder(clear_dir)
    rainy, rainy_names = load_image_folder(rainy_dir)
    clear_labels = rainy_labels = None
    if segmenter is not None:
        def progress(what):
            return (lambda done, total: on_image(what, done, total)) if on_image else None

        cache = Path(label_cache) if label_cache else None
        clear_labels = load_labels_cached(clear, clear_names, segmenter, cache / "clear" if cache else None,
                                          progress("clear"))
        rainy_labels = load_labels_cached(rainy, rainy_names, segmenter, cache / "rainy" if cache else None,
                                          progress("rainy"))
    description = {"clear": str(clear_dir), "rainy": str(rainy_dir), "clear_images": len(clear),
                   "rainy_images": len(rainy), "labels": "ESPNet (Cityscapes)" if segmenter is not None else None}
    return clear, rainy, clear_labels, rainy_labels, description
