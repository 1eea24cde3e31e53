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

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rainkit.errors import DatasetError
from rainkit.losses.tpsence import mean_pixel_agreement
from rainkit.train.data import listing


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


def load_image_folder(folder: str | Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Every readable image under `folder` (recursively, sorted) as uint8 RGB, with its path relative to
    the folder, and a one-line reason for each image that cannot be read (those are skipped; a folder
    with no readable image is an error)."""
    from rainkit.data.images import IMAGE_SUFFIXES, read_image, to_uint8
    from rainkit.errors import InputError

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    images, names, skipped = [], [], []
    for path in files:
        try:
            images.append(to_uint8(read_image(path).rgb))
        except InputError as exc:
            skipped.append(str(exc))
            continue
        names.append(str(path.relative_to(folder)))
    if not images:
        raise DatasetError(f"{folder}: none of its {len(files)} images can be read ({listing(skipped, 3)})")
    return images, names, skipped


def read_label_folder(folder: str | Path, names: Sequence[str], images: Sequence[np.ndarray],
                      parameter: str = "seg_clear") -> list[np.ndarray]:
    """The label map of every image: `folder/<image path without suffix>.png` (or `<image name>.png`),
    an 8-bit single-channel PNG of class ids at the image's size. Anything missing or mismatched
    fails with one error, naming `parameter` (in backticks) and listing every offending image."""
    import cv2

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"`{parameter}` {folder}: label-map folder not found")
    labels, missing, wrong_size, unreadable = [], [], [], []
    for name, image in zip(names, images):
        rel = Path(name)
        path = next((p for p in (folder / rel.with_suffix(".png"), folder / f"{name}.png") if p.is_file()), None)
        if path is None:
            missing.append(str(rel.with_suffix(".png")))
            continue
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            unreadable.append(f"{path.name} (not a readable PNG)")
            continue
        if label.ndim == 3:
            if label.shape[2] >= 3 and (np.array_equal(label[:, :, 0], label[:, :, 1])
                                        and np.array_equal(label[:, :, 0], label[:, :, 2])):
                label = label[:, :, 0]
            else:
                unreadable.append(f"{path.name} (a colour image, not single-channel class ids: an overlay?)")
                continue
        if label.dtype != np.uint8:
            if label.max() > 255:
                unreadable.append(f"{path.name} (class ids above 255)")
                continue
            label = label.astype(np.uint8)
        if label.shape != image.shape[:2]:
            wrong_size.append(f"{name} (image {image.shape[1]}x{image.shape[0]}, map {label.shape[1]}x{label.shape[0]})")
            continue
        labels.append(label)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(names)} images have no label map (expected {listing(missing)})")
    if wrong_size:
        problems.append(f"{len(wrong_size)} label maps differ in size from their image: {listing(wrong_size)}")
    if unreadable:
        problems.append(f"{len(unreadable)} label maps cannot be used: {listing(unreadable)}")
    if problems:
        raise DatasetError(f"`{parameter}` {folder}: " + "; ".join(problems) +
                           " — label maps are PNGs of class ids named like the images (`rainkit segment` writes them)")
    return labels


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


@dataclass
class UnpairedData:
    """Decoded images and label maps (None without) ready for `train_tpsence`, and what was skipped."""

    clear: list[np.ndarray]
    target: list[np.ndarray]
    clear_labels: list[np.ndarray] | None
    target_labels: list[np.ndarray] | None
    description: dict
    clear_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one "path: reason" line per unreadable image


def prepare_unpaired_data(clear_dir: str | Path, rainy_dir: str | Path, segmenter=None,
                          label_cache: str | Path | None = None,
                          on_image: Callable[[str, int, int], None] | None = None) -> UnpairedData:
    """Read two image folders (skipping unreadable images) and, with a segmenter (e.g. a
    `rainkit.models.espnet.Segmenter`), their label maps, cached under `label_cache`."""
    clear, clear_names, clear_skipped = load_image_folder(clear_dir)
    rainy, rainy_names, rainy_skipped = load_image_folder(rainy_dir)
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
    skipped = clear_skipped + rainy_skipped
    if skipped:
        description["skipped_unreadable"] = len(skipped)
    return UnpairedData(clear, rainy, clear_labels, rainy_labels, description, clear_names, rainy_names, skipped)


SEGMENTERS = ("espnet",)


@dataclass
class UnpairedSources:
    """The data arguments of a TPSeNCE run: two folders, and label maps from folders or a segmenter."""

    clear: str | None = None
    target: str | None = None
    domain: str = "rain"
    seg_clear: str | None = None
    seg_target: str | None = None
    segmenter: str | None = None
    segmenter_weights: str = "espnet.cityscapes"

    def to_run_data(self) -> dict:
        """As kept in the run folder: folders made absolute, so a resume works from any directory."""
        data = dataclasses.asdict(self)
        for key in ("clear", "target", "seg_clear", "seg_target"):
            if data[key]:
                data[key] = str(Path(data[key]).expanduser().resolve())
        return data


def resume_unpaired_sources(run_dir: str | Path, given: UnpairedSources) -> UnpairedSources:
    """The data arguments of a resumed run: the run's own (its `data.json`) where none are given."""
    from rainkit.train.config import DATA_FILE

    path = Path(run_dir) / DATA_FILE
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: the run's data arguments cannot be read ({exc})") from None
    sources = dataclasses.replace(given, clear=given.clear or saved.get("clear"),
                                  target=given.target or saved.get("target"), domain=saved.get("domain", given.domain))
    if given.seg_clear is None and given.segmenter is None:
        for key in ("seg_clear", "seg_target", "segmenter", "segmenter_weights"):
            setattr(sources, key, saved.get(key, getattr(given, key)))
    return sources


def prepare_unpaired_run(sources: UnpairedSources, config,
                         on_image: Callable[[str, int, int], None] | None = None) -> UnpairedData:
    """The images and label maps of a TPSeNCE run (a `TPSeNCEConfig`): label maps from the folders
    `seg_clear`/`seg_target`, or computed by `segmenter` (cached in the run folder, on this process's
    device), or none for plain PatchNCE. Errors name the parameters at fault in backticks."""
    if not sources.clear or not sources.target:
        raise DatasetError("`clear` and `target`: give both image folders")
    if sources.segmenter is not None and sources.segmenter not in SEGMENTERS:
        raise DatasetError(f"`segmenter` {sources.segmenter}: unknown ({', '.join(SEGMENTERS)})")
    if config.sence and config.lambda_nce > 0 and not (sources.seg_clear or sources.segmenter):
        raise DatasetError("SeNCE needs semantic label maps: give `seg_clear` DIR and `seg_target` DIR (PNG label "
                           "maps named like the images, e.g. from `rainkit segment`) or `segmenter=espnet`, "
                           "or `sence=false` for plain PatchNCE")
    if sources.segmenter:
        from rainkit.hub import load_model
        from rainkit.models.espnet import Segmenter
        from rainkit.train.distributed import process_device

        device = process_device(config.device)  # under torchrun each process segments on its own GPU (cached)
        model, resolved = load_model("espnet", sources.segmenter_weights, device=device)
        cache = Path(config.out) / "labels" / f"espnet-{resolved.sha256[:12]}"
        data = prepare_unpaired_data(sources.clear, sources.target, Segmenter(model, device), label_cache=cache,
                                     on_image=on_image)
        weights_name = resolved.entry.name if resolved.entry else str(resolved.path)
        data.description["labels"] = f"ESPNet {weights_name} (sha256 {resolved.sha256[:12]}), cached in {cache}"
    else:
        data = prepare_unpaired_data(sources.clear, sources.target)
        if sources.seg_clear:
            data.clear_labels = read_label_folder(sources.seg_clear, data.clear_names, data.clear, "seg_clear")
            data.target_labels = read_label_folder(sources.seg_target, data.target_names, data.target, "seg_target")
            data.description["labels"] = f"label maps from {sources.seg_clear} and {sources.seg_target}"
    data.description["domain"] = sources.domain
    if not config.sence or config.lambda_nce <= 0:
        data.description["nce"] = "PatchNCE (sence=false)"
    return data
