"""`rainkit detect` as one call: what deraining buys an object detector.

Each image is seen in up to three conditions: `rainy` (the input, or the clean input with
synthetic rain when `add_rain` is given), `derained` (the rainy image through a deraining
model) and `clean` (the clean reference, when there is one). Every condition goes through the
same detector, and is scored against one reference:

* ground-truth labels (YOLO txt folder or COCO JSON) when given: mAP50 and mAP50-95 per
  condition, computed as Ultralytics' `val` does (see `rainkit.detect.metrics`);
* otherwise the detections on the clean image (at the user's confidence threshold) serve as the
  reference for the rainy and derained ones; without a clean image, the derained detections
  serve for the rainy ones. The result says which.

The share of the clean -> rainy drop that deraining recovers is (derained - rainy) / (clean - rainy).

The images run through rainkit's batch layer (`rainkit.io.batch`): a bad image never stops the study,
it ends `failed` with a one-line reason, the others are scored, and `DetectResult.ok` tells the caller
whether anything failed. Result types live in `rainkit.detect.results`, inputs in `rainkit.detect.inputs`,
pictures in `rainkit.detect.drawing`.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from rainkit.data.images import read_image, to_uint8, write_image
from rainkit.detect.detector import VAL_CONF, NMSSettings
from rainkit.detect.drawing import draw_panel, side_by_side, write_chart
from rainkit.detect.inputs import Entry, attach_clean, collect_entries, find_by_key, resolve_classes
from rainkit.detect.metrics import Detections, GroundTruth, MapAccumulator, image_recall
from rainkit.detect.results import CONDITIONS, ConditionSummary, DetectResult, ImageRecord
from rainkit.errors import InputError, ParameterError
from rainkit.io.batch import Job, run_batch

PANEL_ORDER = ("rainy", "derained", "clean")
PICKS = ("disagree", "first")
TPSENCE_MESSAGE = "no TPSeNCE weights for rain yet; use a physics preset (light, heavy, storm, downpour or real)"


class DetectorLike(Protocol):
    names: dict[int, str]

    def detect(self, rgb: np.ndarray, passes: Sequence[NMSSettings]) -> list[Detections]: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class DetectSettings:
    """What a detection study does, apart from its inputs and the loaded models.

    `labels` is a YOLO label folder or a COCO JSON file; `clean` a folder of clean images with the
    inputs' names; `dataset` a registered paired set (e.g. "rain100l") instead of inputs; `add_rain` a
    physics preset that makes the rainy images from clean inputs (seeded by `seed` and each name).
    `detector` names the YOLO weights (a path or an Ultralytics name). Videos are studied every
    `vid_stride`-th frame; with `add_rain`, their rain moves across frames as `rainkit generate` makes it. The mAP path always uses Ultralytics
    val's settings (confidence 0.001, multi-label NMS at IoU `iou`, 300 boxes); `conf` and `iou` govern
    the detections counted, drawn and used as a reference. With `output`, writes `map.png` and annotated
    side-by-side images of `save_images` images (`pick`: the ones where the conditions disagree most, or
    the first), and with `save_conditions` the rainy and derained images themselves.
    """

    labels: str | Path | None = None
    clean: str | Path | None = None
    dataset: str | None = None
    data_root: str | Path | None = None
    add_rain: str | None = None
    seed: int = 0
    detector: str | Path | None = None
    imgsz: int | None = None
    derain: bool = True
    derain_model: str = "sapnet"
    derain_weights: str | None = None
    derained_dir: str | Path | None = None
    device: str = "auto"
    precision: str = "fp32"
    tile: int | None = None
    max_memory: int | str | None = None  # deraining: cap the process's memory ("3G"); large images are tiled under it
    conf: float = 0.25
    iou: float = 0.7
    classes: Sequence[str | int] | str | None = None
    recursive: bool = False
    vid_stride: int = 1
    limit: int | None = None
    output: str | Path | None = None
    save_images: int = 8
    pick: str = "disagree"
    save_conditions: bool = False

    def validate(self, has_inputs: bool) -> str | None:
        """Check the settings (each error names its parameter); returns the rain preset, if any."""
        if not 0.0 < self.conf <= 1.0:
            raise ParameterError("conf", f"must be within (0, 1], got {self.conf}")
        if not 0.0 < self.iou <= 1.0:
            raise ParameterError("iou", f"must be within (0, 1], got {self.iou}")
        if self.pick not in PICKS:
            raise ParameterError("pick", f"must be one of {', '.join(PICKS)}, got '{self.pick}'")
        if self.save_images < 0:
            raise ParameterError("save_images", f"must be 0 or more, got {self.save_images}")
        if self.limit is not None and self.limit < 1:
            raise ParameterError("limit", f"must be at least 1, got {self.limit}")
        preset = None
        if self.add_rain is not None:
            from rainkit.synth.physics import PRESETS

            preset = self.add_rain.strip().lower()
            if preset == "tpsence":
                raise ParameterError("add_rain", TPSENCE_MESSAGE)
            if preset not in PRESETS:
                raise ParameterError("add_rain", f"unknown preset '{self.add_rain}' (use {', '.join(PRESETS)}, "
                                                 f"or tpsence)")
            if self.clean is not None or self.dataset is not None:
                raise ParameterError("add_rain", "makes the rainy images from clean inputs: it cannot be combined "
                                                 "with clean or dataset")
        if self.dataset is not None and has_inputs:
            raise ParameterError("dataset", "give either images or a dataset, not both")
        if self.dataset is None and not has_inputs:
            raise ParameterError("inputs", "no images given (pass image files or folders, or a dataset name)")
        if self.derained_dir is not None and not Path(self.derained_dir).is_dir():
            raise ParameterError("derained_dir", f"{self.derained_dir}: no such folder")
        return preset


def run_detect(
    inputs: Sequence[str] | None = None,
    settings: DetectSettings | None = None,
    *,
    detector: str | Path | DetectorLike | None = None,
    derainer=None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ImageRecord, int, int], None] | None = None,
    **changes,
) -> DetectResult:
    """Detect objects on rainy, derained and clean versions of images and score each condition.

    `inputs` are rainy images (or clean ones with `add_rain`); the study is described by `settings`
    (a `DetectSettings`; keyword arguments named like its fields change single settings). `detector` and
    `derainer` may be loaded objects (a detector spec may be given here as well as in the settings).
    """
    started = time.perf_counter()
    unknown = sorted(set(changes) - {f.name for f in fields(DetectSettings)})
    if unknown:
        raise TypeError(f"run_detect() got unexpected settings {', '.join(unknown)}")
    if isinstance(detector, (str, Path)):
        changes["detector"], detector = detector, None
    settings = replace(settings or DetectSettings(), **changes)
    preset = settings.validate(bool(inputs))

    # Images first (cheap), so a wrong path fails before any model loads.
    dataset_info = None
    if settings.dataset is not None:
        from rainkit.data.datasets import resolve_dataset

        resolved = resolve_dataset(settings.dataset, settings.data_root)
        dataset_info = {"name": resolved.name, "title": resolved.title, "root": str(resolved.root),
                        "pairing": resolved.pairing, "images": len(resolved.pairs)}
        entries = [Entry(p.rainy, None, settings.dataset, key=p.id, clean=p.clean) for p in resolved.pairs]
    else:
        entries = collect_entries(list(inputs or []), recursive=settings.recursive, vid_stride=settings.vid_stride)
        if settings.clean is not None:
            attach_clean(entries, Path(settings.clean).expanduser())
    if settings.limit is not None:
        entries = entries[:settings.limit]
    have_clean = preset is not None or any(e.clean is not None for e in entries)

    # Models.
    derain = settings.derain
    if derain and derainer is None and settings.derained_dir is None:
        from rainkit.derain.engine import load_derainer

        derainer = load_derainer(settings.derain_model, settings.derain_weights, device=settings.device,
                                 precision=settings.precision, tile=settings.tile, max_memory=settings.max_memory)
    if detector is None:
        from rainkit.detect.detector import load_detector

        detector = load_detector(settings.detector, device=settings.device, imgsz=settings.imgsz)
    names = dict(detector.names)
    class_filter = resolve_classes(settings.classes, names)
    label_source = None
    if settings.labels is not None:
        from rainkit.detect.labels import load_labels

        label_source = load_labels(settings.labels, names)

    conf = settings.conf
    if label_source is not None:
        reference, note = "labels", f"ground truth from {label_source.kind} labels ({label_source.path})"
    elif have_clean:
        reference, note = "clean", ("no labels: the detections on the clean images (confidence >= "
                                    f"{conf:g}) serve as the reference; the clean row scores the clean images' "
                                    "full detection lists against it: the ceiling a perfect derainer would reach")
    elif derain:
        reference, note = "derained", ("no labels and no clean images: the detections on the derained images "
                                       f"(confidence >= {conf:g}) serve as the reference for the rainy ones")
    else:
        reference, note = "none", "no labels, no clean images and no deraining: detection counts only"

    map_pass = NMSSettings(conf=VAL_CONF, iou=settings.iou, max_det=300, multi_label=True)
    show_pass = NMSSettings(conf=conf, iou=settings.iou, max_det=300, multi_label=False)
    present = [c for c in CONDITIONS if (c != "clean" or have_clean) and (c != "derained" or derain)]
    study = _Study(settings=settings, preset=preset, detector=detector, derainer=derainer, names=names,
                   class_filter=class_filter, label_source=label_source, reference=reference, map_pass=map_pass,
                   show_pass=show_pass, summaries={c: ConditionSummary(c, is_reference=(c == reference))
                                                   for c in present},
                   scored={c: MapAccumulator() for c in present} if reference != "none" else {},
                   out_dir=Path(settings.output).expanduser() if settings.output is not None else None)

    record = {
        "inputs": list(inputs or []),
        "dataset": dataset_info,
        "clean": str(settings.clean) if settings.clean is not None else None,
        "labels": label_source.describe() if label_source is not None else None,
        "add_rain": {"method": "physics", "preset": preset, "seed": settings.seed} if preset else None,
        "detector": detector.describe(),
        "derain": (derainer.describe() if derainer is not None and hasattr(derainer, "describe")
                   else ({"derained_dir": str(settings.derained_dir)} if settings.derained_dir is not None else None)),
        "tile": (settings.tile if settings.tile is not None else "auto") if derainer is not None else None,
        "map_nms": {"conf": map_pass.conf, "iou": map_pass.iou, "max_det": map_pass.max_det, "multi_label": True},
        "display_nms": {"conf": show_pass.conf, "iou": show_pass.iou, "max_det": show_pass.max_det,
                        "multi_label": False},
        "classes": [names[c] for c in class_filter] if class_filter else None,
        "iou_thresholds": "0.50:0.05:0.95",
    }
    try:
        batch = run_batch(entries, study.run_one, outputs_of=None, failure=study.failed, on_start=on_start,
                          on_progress=on_progress)
    finally:
        study.close()

    for name, accumulator in study.scored.items():
        study.summaries[name].map = accumulator.result() if accumulator.images else None
    result = DetectResult(batch.items, study.summaries, reference, note, names, record)
    if study.out_dir is not None:
        result.outputs = study.write_outputs(result)
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class _Study:
    """The state one detection study carries from image to image: models, references, accumulators and the
    images kept for annotation."""

    settings: DetectSettings
    preset: str | None
    detector: DetectorLike
    derainer: object
    names: dict[int, str]
    class_filter: tuple[int, ...] | None
    label_source: object
    reference: str
    map_pass: NMSSettings
    show_pass: NMSSettings
    summaries: dict[str, ConditionSummary]
    scored: dict[str, MapAccumulator]
    out_dir: Path | None

    def __post_init__(self) -> None:
        self.readers: dict[Path, object] = {}  # video path -> FrameReader
        self.weather: dict[str, object] = {}  # video key -> MovingWeather
        self.index = 0
        self.keep: list[tuple[float, int, str, np.ndarray]] = []  # heap of (score, -index, key, side-by-side image)
        self.annotated_first: list[str] = []

    def read(self, path: Path, entry: Entry) -> np.ndarray:
        """An image file, or the entry's frame of a video: RGB uint8."""
        if entry.frame is None:
            return _as_u8(read_image(path).rgb)
        from rainkit.video.pipeline import FrameReader

        reader = self.readers.get(path)
        if reader is None:
            reader = self.readers[path] = FrameReader(path)
        return reader.read(entry.frame)

    def rain(self, clean: np.ndarray, entry: Entry) -> np.ndarray:
        from rainkit.synth.physics import image_seed, synthesize

        rgb = clean.astype(np.float32) / 255.0
        if entry.frame is None:
            return _as_u8(synthesize(rgb, "rain", preset=self.preset, seed=image_seed(self.settings.seed, entry.key)))
        from rainkit.synth.motion import MovingWeather

        weather = self.weather.get(entry.video_key)
        if weather is None:
            weather = self.weather[entry.video_key] = MovingWeather(
                rgb.shape[:2], "rain", preset=self.preset, seed=image_seed(self.settings.seed, entry.video_key))
        return _as_u8(weather.frame(rgb, entry.frame))

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()

    @staticmethod
    def failed(job: Job, error: str, seconds: float) -> ImageRecord:
        return ImageRecord(job.label, "failed", key=job.key, clean=str(job.clean) if job.clean else None,
                           error=error, seconds=seconds)

    def run_one(self, entry: Entry) -> ImageRecord:
        """Detect on every condition of one image, then (only once all of them succeeded, so every condition
        sees the same images) write its pictures and add it to the scores."""
        self.index += 1
        settings = self.settings
        record = ImageRecord(entry.label, "failed", key=entry.key, clean=str(entry.clean) if entry.clean else None)
        images = self._conditions(entry, record)
        height, width = images["rainy"].shape[:2]
        record.width, record.height = width, height
        found: dict[str, tuple[Detections, Detections]] = {}
        for name, rgb in images.items():
            for_map, shown = self.detector.detect(rgb, (self.map_pass, self.show_pass))
            found[name] = (for_map.only(self.class_filter), shown.only(self.class_filter))
        truth = None
        if self.reference == "labels":
            # Labels describe the clean image: named after it where there is a separate clean file.
            source = Path(entry.clean) if entry.clean is not None else Path(entry.source)
            key = entry.key if entry.clean is None or source.stem == Path(entry.key).name else source.stem
            truth = self.label_source.for_image(key, width, height, file_name=source.name).only(self.class_filter)
        elif self.reference in found:
            truth = GroundTruth.from_detections(found[self.reference][1])

        record.targets = len(truth) if truth is not None else None
        for name, (_, shown) in found.items():
            record.detections[name] = len(shown)
            record.mean_conf[name] = round(float(shown.conf.mean()), 4) if len(shown) else None
            record.boxes[name] = _boxes_json(shown)
            if truth is not None:
                record.recall50[name] = image_recall(shown, truth)
        recalls = [r for r in record.recall50.values() if r is not None]
        counts = list(record.detections.values())
        spread = (max(recalls) - min(recalls)) if recalls else 0.0
        count_spread = (max(counts) - min(counts)) / max(1, max(counts)) if counts else 0.0
        record.disagreement = round(spread + 0.01 * count_spread, 6)
        picture = self._write_pictures(entry, images, found, truth, record)

        for name, (for_map, shown) in found.items():
            summary = self.summaries[name]
            summary.images += 1
            summary.detections += len(shown)
            summary.conf_sum += float(shown.conf.sum())
            if truth is not None and name in self.scored:
                if len(for_map) > max(300, len(truth)):  # val raises max_det to the largest label count
                    for_map = for_map.sorted().select(np.arange(len(for_map)) < max(300, len(truth)))
                self.scored[name].add(for_map, truth)
        if picture is not None:
            item = (record.disagreement, -self.index, entry.key, picture)
            if len(self.keep) < settings.save_images:
                heapq.heappush(self.keep, item)
            elif item[:2] > self.keep[0][:2]:
                heapq.heapreplace(self.keep, item)
        record.status = "done"
        return record

    def _write_pictures(self, entry: Entry, images, found, truth, record: ImageRecord) -> np.ndarray | None:
        """Write what goes out with the image itself; returns its side-by-side picture when it is a candidate
        for the 'disagree' pick (written at the end, once the most disagreeing images are known)."""
        settings = self.settings
        if self.out_dir is None:
            return None
        if settings.save_conditions:
            for name in ("rainy", "derained"):
                if name in images:
                    write_image(self.out_dir / name / f"{entry.key}.png", images[name])
        wanted = settings.save_images > 0 and (settings.pick == "disagree"
                                               or len(self.annotated_first) < settings.save_images)
        if not wanted:
            return None
        panels = []
        for name in PANEL_ORDER:
            if name in images:
                shown = found[name][1]
                title = f"{name}: {len(shown)} objects" + (" (reference)" if name == self.reference else "")
                if truth is not None and record.recall50.get(name) is not None and name != self.reference:
                    title += f", recall {record.recall50[name]:.0%}"
                panels.append(draw_panel(images[name], shown, self.names, title))
        picture = side_by_side(panels)
        if settings.pick == "first":
            target = self.out_dir / "annotated" / (entry.key.replace("/", "__") + ".jpg")
            write_image(target, picture, quality=90)
            self.annotated_first.append(str(target))
            return None
        return picture

    def write_outputs(self, result: DetectResult) -> dict:
        annotated = list(self.annotated_first)
        for _, _, key, image in sorted(self.keep, key=lambda t: (-t[0], -t[1])):
            target = self.out_dir / "annotated" / (key.replace("/", "__") + ".jpg")
            write_image(target, image, quality=90)
            annotated.append(str(target))
        chart = write_chart(result, self.out_dir / "map.png")
        outputs = {"folder": str(self.out_dir), "chart": str(chart) if chart else None, "annotated": annotated}
        if self.settings.save_conditions:
            outputs["conditions"] = {c: str(self.out_dir / c) for c in ("rainy", "derained") if c in self.summaries}
        return outputs


    def _conditions(self, entry: Entry, record: ImageRecord) -> dict[str, np.ndarray]:
        """The uint8 RGB images of every condition of one entry."""
        settings = self.settings
        rainy = self.read(entry.source, entry)
        images: dict[str, np.ndarray] = {}
        if self.preset is not None:
            images["clean"] = rainy
            images["rainy"] = self.rain(rainy, entry)
        else:
            images["rainy"] = rainy
            if entry.clean is not None:
                clean = self.read(entry.clean, entry)
                if clean.shape != rainy.shape:
                    raise InputError(f"{entry.source}: the clean image {entry.clean} is {clean.shape[1]}x{clean.shape[0]}, "
                                     f"the rainy one {rainy.shape[1]}x{rainy.shape[0]}")
                images["clean"] = clean
        if settings.derain:
            if settings.derained_dir is not None:
                from rainkit.video.pipeline import VIDEO_SUFFIXES

                folder = Path(settings.derained_dir)
                path = (find_by_key(folder, entry.video_key, VIDEO_SUFFIXES) if entry.frame is not None
                        else find_by_key(folder, entry.key))
                if path is None:
                    raise InputError(f"{entry.source}: no derained {'video' if entry.frame is not None else 'image'} "
                                     f"named '{Path(entry.video_key or entry.key).name}' in {folder}")
                derained = self.read(path, entry)
                if derained.shape != rainy.shape:
                    raise InputError(f"{path}: size differs from the rainy image {entry.source}")
            else:
                tick = time.perf_counter()
                derained = _as_u8(self.derainer.derain(images["rainy"].astype(np.float32) / 255.0))
                record.derain_seconds = round(time.perf_counter() - tick, 3)
            images["derained"] = derained
        return images


def _as_u8(rgb: np.ndarray) -> np.ndarray:
    return to_uint8(rgb, "round")


def _boxes_json(detections: Detections) -> list:
    return [[round(float(v), 2) for v in box] + [round(float(c), 4), int(k)]
            for box, c, k in zip(detections.boxes, detections.conf, detections.cls)]
