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

Like `rainkit derain`, a bad image never stops the batch: it ends `failed` with a one-line reason,
the others are scored, and `DetectResult.ok` tells the caller whether anything failed.
"""

from __future__ import annotations

import glob
import heapq
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from rainkit._version import __version__
from rainkit.data.images import IMAGE_SUFFIXES, read_image, to_uint8
from rainkit.io.atomic import atomic_write_bytes
from rainkit.detect.detector import VAL_CONF, NMSSettings
from rainkit.detect.metrics import (Detections, GroundTruth, MapAccumulator, MapResult, image_recall,
                                    recovered_share)
from rainkit.errors import InputError, RainkitError, WeightsError

CONDITIONS = ("clean", "rainy", "derained")
PANEL_ORDER = ("rainy", "derained", "clean")
PICKS = ("disagree", "first")
TPSENCE_MESSAGE = "no TPSeNCE weights for rain yet; use a physics preset (light, heavy or storm)"


class DetectorLike(Protocol):
    names: dict[int, str]

    def detect(self, rgb: np.ndarray, passes: Sequence[NMSSettings]) -> list[Detections]: ...

    def describe(self) -> dict: ...


@dataclass
class Entry:
    """One image to study: its key (relative name without suffix), input file and clean reference."""

    key: str
    input: Path | None
    clean: Path | None = None
    error: str | None = None
    spec: str = ""


@dataclass
class ImageRecord:
    input: str
    status: str  # "done" or "failed"
    key: str = ""
    clean: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0
    derain_seconds: float = 0.0
    targets: int | None = None  # reference objects (labels, or reference detections)
    detections: dict[str, int] = field(default_factory=dict)  # at the user's confidence threshold
    mean_conf: dict[str, float | None] = field(default_factory=dict)
    recall50: dict[str, float | None] = field(default_factory=dict)  # of the reference objects, IoU 0.5
    disagreement: float = 0.0
    boxes: dict[str, list] = field(default_factory=dict)  # condition -> [[x1, y1, x2, y2, conf, class], ...]


@dataclass
class ConditionSummary:
    name: str
    images: int = 0
    detections: int = 0
    conf_sum: float = 0.0
    map: MapResult | None = None  # None: not scored (it is the reference, or there is none)
    is_reference: bool = False

    @property
    def mean_conf(self) -> float | None:
        return self.conf_sum / self.detections if self.detections else None

    def to_json(self, names: dict[int, str]) -> dict:
        return {
            "images": self.images,
            "detections": self.detections,
            "detections_per_image": round(self.detections / self.images, 4) if self.images else None,
            "mean_conf": round(self.mean_conf, 6) if self.mean_conf is not None else None,
            "is_reference": self.is_reference,
            **({"map50": None, "map50_95": None} if self.map is None else self.map.to_json(names)),
        }


@dataclass
class DetectResult:
    items: list[ImageRecord]
    conditions: dict[str, ConditionSummary]
    reference: str  # "labels", "clean", "derained" or "none"
    reference_note: str
    names: dict[int, str]
    settings: dict
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> list[ImageRecord]:
        return [item for item in self.items if item.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def map_of(self, condition: str, metric: str = "map50_95") -> float | None:
        summary = self.conditions.get(condition)
        if summary is None or summary.map is None:
            return None
        return getattr(summary.map, metric)

    @property
    def recovered(self) -> dict[str, float | None]:
        """Share of the clean -> rainy mAP drop won back by deraining, for mAP50 and mAP50-95."""
        if self.reference == "derained" or "derained" not in self.conditions:
            return {"map50": None, "map50_95": None}
        return {m: recovered_share(self.map_of("clean", m), self.map_of("rainy", m), self.map_of("derained", m))
                for m in ("map50", "map50_95")}

    def to_json(self, with_boxes: bool = True) -> dict:
        items = []
        for item in self.items:
            row = asdict(item)
            if not with_boxes:
                row.pop("boxes")
            items.append(row)
        recovered = self.recovered
        return {
            "rainkit_version": __version__,
            "settings": self.settings,
            "reference": self.reference,
            "reference_note": self.reference_note,
            "seconds": round(self.seconds, 3),
            "counts": {s: self.count(s) for s in ("done", "failed")},
            "conditions": {name: c.to_json(self.names) for name, c in self.conditions.items()},
            "recovered_share": {k: (round(v, 6) if v is not None else None) for k, v in recovered.items()},
            "outputs": self.outputs,
            "items": items,
        }

    def to_csv(self) -> str:
        """One row per condition (class 'all') and per condition and class with targets."""
        import csv

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["condition", "class", "class_id", "images", "instances", "map50", "map50_95",
                         "detections", "mean_conf", "reference"])
        def fmt(v: float | None) -> str:
            return "" if v is None else f"{v:.6f}"

        for name, c in self.conditions.items():
            scored = c.map is not None
            writer.writerow([name, "all", "", c.images, c.map.instances if scored else "",
                             fmt(c.map.map50 if scored else None), fmt(c.map.map50_95 if scored else None),
                             c.detections, fmt(c.mean_conf), self.reference])
            if scored:
                for cls, row in sorted(c.map.per_class.items()):
                    writer.writerow([name, self.names.get(cls, str(cls)), cls, "", row["instances"],
                                     fmt(row["ap50"]), fmt(row["ap50_95"]), "", "", self.reference])
        return buffer.getvalue()


# --- inputs ----------------------------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_entries(specs: Sequence[str], *, recursive: bool = False) -> list[Entry]:
    """Expand files, folders and globs into entries keyed by name (relative to a given folder)."""
    entries: list[Entry] = []
    seen: dict[str, Path] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        found: list[tuple[Path, str]] = []
        if path.is_dir():
            files = sorted(p for p in path.glob("**/*" if recursive else "*") if p.is_file() and _is_image(p))
            if not files:
                entries.append(Entry("", None, error=f"{spec}: no images in folder"
                                     + ("" if recursive else " (use --recursive for sub-folders)"), spec=spec))
            found = [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.exists() or path.is_symlink():
            found = [(path, path.stem)]
        elif any(ch in spec for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive) if Path(m).is_file())
            if not matches:
                entries.append(Entry("", None, error=f"{spec}: no files match", spec=spec))
            found = [(m, m.stem) for m in matches]
        else:
            entries.append(Entry("", None, error=f"{spec}: no such file or folder", spec=spec))
        for file, key in found:
            if key in seen and seen[key].resolve() != file.resolve():
                entries.append(Entry(key, file, error=f"{file}: another input has the same name ({seen[key]}); "
                                     "names key labels, clean references and rain seeds, so rename one", spec=spec))
                continue
            if key in seen:
                continue
            seen[key] = file
            entries.append(Entry(key, file, spec=spec))
    return entries


def _find_by_key(folder: Path, key: str) -> Path | None:
    for stem in dict.fromkeys((key, Path(key).name)):
        base = folder / stem
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            candidate = base.with_name(base.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def attach_clean(entries: list[Entry], clean_dir: Path) -> None:
    """Give each entry the clean image of the same name in `clean_dir` (an entry without one fails)."""
    if not clean_dir.is_dir():
        raise RainkitError(f"--clean {clean_dir}: no such folder")
    for entry in entries:
        if entry.error or entry.input is None:
            continue
        entry.clean = _find_by_key(clean_dir, entry.key)
        if entry.clean is None:
            entry.error = f"{entry.input}: no clean image named '{Path(entry.key).name}' in {clean_dir}"


def _resolve_classes(classes, names: dict[int, str]) -> tuple[int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [c for c in classes.split(",")]
    by_name = {" ".join(n.lower().split()): i for i, n in names.items()}
    out = []
    for item in classes:
        text = str(item).strip()
        if not text:
            continue
        if text.lstrip("-").isdigit():
            index = int(text)
            if index not in names:
                raise RainkitError(f"--classes: class index {index} is not one of the detector's 0..{max(names)}")
            out.append(index)
        elif " ".join(text.lower().replace("_", " ").split()) in by_name:
            out.append(by_name[" ".join(text.lower().replace("_", " ").split())])
        else:
            sample = ", ".join(list(names.values())[:6])
            raise RainkitError(f"--classes: '{text}' is not a class of the detector (e.g. {sample}, ...)")
    if not out:
        raise RainkitError("--classes: no class given")
    return tuple(sorted(set(out)))


# --- drawing -------------------------------------------------------------------------------------

def _colour(cls: int) -> tuple[int, int, int]:
    palette = [(255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
               (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
               (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
               (255, 149, 200), (255, 55, 199)]
    return palette[int(cls) % len(palette)]


def draw_panel(rgb: np.ndarray, detections: Detections, names: dict[int, str], title: str) -> np.ndarray:
    """An RGB uint8 copy of `rgb` with boxes, labels and a title strip."""
    import cv2

    image = np.ascontiguousarray(rgb.copy())
    height, width = image.shape[:2]
    scale = max(0.35, min(1.0, max(height, width) / 1000))
    thick = max(2, int(round(3 * scale)))
    for box, conf, cls in zip(detections.boxes, detections.conf, detections.cls):
        x1, y1, x2, y2 = (int(round(v)) for v in np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1]))
        colour = _colour(cls)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thick)
        text = f"{names.get(int(cls), str(int(cls)))} {conf:.2f}"
        font = max(0.45, 0.6 * scale)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(image, (x1, ty - th - base), (x1 + tw + 2, ty + 1), colour, -1)
        cv2.putText(image, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                    cv2.LINE_AA)
    strip = np.full((28, width, 3), 32, np.uint8)
    cv2.putText(strip, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], 0)


def side_by_side(panels: list[np.ndarray], gap: int = 6) -> np.ndarray:
    import cv2

    height = max(p.shape[0] for p in panels)
    fitted = [p if p.shape[0] == height else cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height))
              for p in panels]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    row: list[np.ndarray] = []
    for panel in fitted:
        row.extend([panel, spacer])
    return np.concatenate(row[:-1], 1)


def write_chart(result: DetectResult, path: Path) -> Path | None:
    """A bar chart PNG of mAP50 and mAP50-95 per condition; None when nothing was scored."""
    scored = [(name, result.map_of(name, "map50"), result.map_of(name, "map50_95"))
              for name in CONDITIONS if name in result.conditions]
    scored = [row for row in scored if row[1] is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    x = np.arange(len(scored))
    bars50 = axes.bar(x - 0.19, [r[1] for r in scored], 0.38, label="mAP50", color="#4878d0")
    bars = axes.bar(x + 0.19, [r[2] for r in scored], 0.38, label="mAP50-95", color="#ee854a")
    for group in (bars50, bars):
        axes.bar_label(group, fmt="%.3f", fontsize=8, padding=2)
    axes.set_xticks(x, [r[0] + (" (reference)" if result.conditions[r[0]].is_reference else "") for r in scored])
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("mAP")
    share = result.recovered.get("map50_95")
    subtitle = f"\nderaining recovers {share:.0%} of the clean → rainy mAP50-95 drop" if share is not None else ""
    detector_name = Path(str(result.settings.get("detector", {}).get("detector", "detector")).rstrip("/")).name
    axes.set_title(f"{detector_name}, scored against {result.reference}{subtitle}", fontsize=9)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --- the run ---------------------------------------------------------------------------------------

def _as_u8(rgb: np.ndarray) -> np.ndarray:
    return to_uint8(rgb, "round")


def _boxes_json(detections: Detections) -> list:
    return [[round(float(v), 2) for v in box] + [round(float(c), 4), int(k)]
            for box, c, k in zip(detections.boxes, detections.conf, detections.cls)]


def run_detect(
    inputs: Sequence[str] | None = None,
    *,
    labels: str | Path | None = None,
    clean: str | Path | None = None,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    add_rain: str | None = None,
    seed: int = 0,
    detector: str | Path | DetectorLike | None = None,
    imgsz: int | None = None,
    derain: bool = True,
    derain_model: str = "sapnet",
    derain_weights: str | None = None,
    derainer=None,
    derained_dir: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    tile: int | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    classes: Sequence[str | int] | str | None = None,
    recursive: bool = False,
    limit: int | None = None,
    output: str | Path | None = None,
    save_images: int = 8,
    pick: str = "disagree",
    save_conditions: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ImageRecord, int, int], None] | None = None,
) -> DetectResult:
    """Detect objects on rainy, derained and clean versions of images and score each condition.

    `inputs` are rainy images (or clean ones with `add_rain`); `clean` a folder of clean images
    with the same names; `dataset` a registered paired set (e.g. "rain100l") instead of inputs.
    `labels` is a YOLO label folder or a COCO JSON file. `detector` is a name, a path or a loaded
    detector object. The mAP path always uses Ultralytics val's settings (confidence 0.001,
    multi-label NMS at IoU `iou`, 300 boxes); `conf` and `iou` govern the detections counted,
    drawn and used as a reference. With `output`, writes `map.png` and annotated side-by-side
    images of `save_images` images (`pick`: the ones where the conditions disagree most, or the
    first), and with `save_conditions` the rainy and derained images themselves.
    """
    started = time.perf_counter()
    if not 0.0 < conf <= 1.0:
        raise RainkitError(f"--conf must be within (0, 1], got {conf}")
    if not 0.0 < iou <= 1.0:
        raise RainkitError(f"--iou must be within (0, 1], got {iou}")
    if pick not in PICKS:
        raise RainkitError(f"--pick must be one of {', '.join(PICKS)}, got '{pick}'")
    if save_images < 0:
        raise RainkitError(f"--save-images must be 0 or more, got {save_images}")
    if limit is not None and limit < 1:
        raise RainkitError(f"--limit must be at least 1, got {limit}")
    preset = None
    if add_rain is not None:
        from rainkit.synth.physics import PRESETS

        preset = add_rain.strip().lower()
        if preset == "tpsence":
            raise RainkitError(TPSENCE_MESSAGE)
        if preset not in PRESETS:
            raise RainkitError(f"--add-rain: unknown preset '{add_rain}' (use {', '.join(PRESETS)}, or tpsence)")
        if clean is not None or dataset is not None:
            raise RainkitError("--add-rain makes the rainy images from clean inputs: it cannot be combined with "
                               "--clean or --dataset")
    if dataset is not None and inputs:
        raise RainkitError("give either images or --dataset, not both")
    if dataset is None and not inputs:
        raise RainkitError("no images given (pass image files or folders, or --dataset NAME)")
    if derained_dir is not None and not Path(derained_dir).is_dir():
        raise RainkitError(f"--derained {derained_dir}: no such folder")

    # Images first (cheap), so a wrong path fails before any model loads.
    dataset_info = None
    if dataset is not None:
        from rainkit.data.datasets import resolve_dataset

        resolved = resolve_dataset(dataset, data_root)
        dataset_info = {"name": resolved.name, "title": resolved.title, "root": str(resolved.root),
                        "pairing": resolved.pairing, "images": len(resolved.pairs)}
        entries = [Entry(p.id, p.rainy, p.clean, spec=dataset) for p in resolved.pairs]
    else:
        entries = collect_entries(list(inputs or []), recursive=recursive)
        if clean is not None:
            attach_clean(entries, Path(clean).expanduser())
    if limit is not None:
        entries = entries[:limit]
    have_clean = add_rain is not None or any(e.clean is not None for e in entries)

    # Models.
    if derain and derainer is None and derained_dir is None:
        from rainkit.derain.engine import load_derainer

        try:
            derainer = load_derainer(derain_model, derain_weights, device=device, precision=precision, tile=tile)
        except WeightsError as exc:  # the message names derain's option; here it is --derain-weights
            raise type(exc)(str(exc).replace("--weights", "--derain-weights")) from None
    if isinstance(detector, (str, Path)) or detector is None:
        from rainkit.detect.detector import load_detector

        detector = load_detector(detector, device=device, imgsz=imgsz)
    names = dict(detector.names)
    class_filter = _resolve_classes(classes, names)
    label_source = None
    if labels is not None:
        from rainkit.detect.labels import load_labels

        label_source = load_labels(labels, names)

    has_derained = derain
    if label_source is not None:
        reference, note = "labels", f"ground truth from {label_source.kind} labels ({label_source.path})"
    elif have_clean:
        reference, note = "clean", ("no labels: the detections on the clean images (confidence >= "
                                    f"{conf:g}) serve as the reference; the clean row scores the clean images' "
                                    "full detection lists against it: the ceiling a perfect derainer would reach")
    elif has_derained:
        reference, note = "derained", ("no labels and no clean images: the detections on the derained images "
                                       f"(confidence >= {conf:g}) serve as the reference for the rainy ones")
    else:
        reference, note = "none", "no labels, no clean images and no deraining: detection counts only"

    map_pass = NMSSettings(conf=VAL_CONF, iou=iou, max_det=300, multi_label=True)
    show_pass = NMSSettings(conf=conf, iou=iou, max_det=300, multi_label=False)
    present = [c for c in CONDITIONS if (c != "clean" or have_clean) and (c != "derained" or has_derained)]
    summaries = {c: ConditionSummary(c, is_reference=(c == reference)) for c in present}
    scored = {c: MapAccumulator() for c in present} if reference != "none" else {}
    out_dir = Path(output).expanduser() if output is not None else None
    keep: list[tuple[float, int, str, np.ndarray]] = []  # heap of (score, -index, key, side-by-side image)
    annotated_first: list[str] = []

    settings = {
        "inputs": list(inputs or []),
        "dataset": dataset_info,
        "clean": str(clean) if clean is not None else None,
        "labels": label_source.describe() if label_source is not None else None,
        "add_rain": {"method": "physics", "preset": preset, "seed": seed} if preset else None,
        "detector": detector.describe(),
        "derain": (derainer.describe() if derainer is not None and hasattr(derainer, "describe")
                   else ({"derained_dir": str(derained_dir)} if derained_dir is not None else None)),
        "tile": (tile if tile is not None else "auto") if derainer is not None else None,
        "map_nms": {"conf": map_pass.conf, "iou": map_pass.iou, "max_det": map_pass.max_det, "multi_label": True},
        "display_nms": {"conf": show_pass.conf, "iou": show_pass.iou, "max_det": show_pass.max_det, "multi_label": False},
        "classes": [names[c] for c in class_filter] if class_filter else None,
        "iou_thresholds": "0.50:0.05:0.95",
    }

    if on_start:
        on_start(len(entries))
    records: list[ImageRecord] = []
    for index, entry in enumerate(entries, start=1):
        record = _run_one(entry, index, detector=detector, derainer=derainer, derained_dir=derained_dir,
                          derain=derain, preset=preset, seed=seed, label_source=label_source, reference=reference,
                          class_filter=class_filter, map_pass=map_pass, show_pass=show_pass, summaries=summaries,
                          scored=scored, names=names, out_dir=out_dir, save_conditions=save_conditions,
                          save_images=save_images, pick=pick, keep=keep, annotated_first=annotated_first)
        records.append(record)
        if on_progress:
            on_progress(record, index, len(entries))

    for name, accumulator in scored.items():
        summaries[name].map = accumulator.result() if accumulator.images else None
    result = DetectResult(records, summaries, reference, note, names, settings)
    if out_dir is not None:
        annotated = list(annotated_first)
        if pick == "disagree" and keep:
            from rainkit.data.images import write_image

            for score, _, key, image in sorted(keep, key=lambda t: (-t[0], -t[1])):
                target = out_dir / "annotated" / (key.replace("/", "__") + ".jpg")
                write_image(target, image, quality=90)
                annotated.append(str(target))
        chart = write_chart(result, out_dir / "map.png")
        result.outputs = {"folder": str(out_dir), "chart": str(chart) if chart else None, "annotated": annotated}
        if save_conditions:
            result.outputs["conditions"] = {c: str(out_dir / c) for c in ("rainy", "derained") if c in summaries}
    result.seconds = time.perf_counter() - started
    return result


def _run_one(entry: Entry, index: int, *, detector, derainer, derained_dir, derain, preset, seed, label_source,
             reference, class_filter, map_pass, show_pass, summaries, scored, names, out_dir, save_conditions,
             save_images, pick, keep, annotated_first) -> ImageRecord:
    label = str(entry.input) if entry.input is not None else entry.spec
    record = ImageRecord(label, "failed", key=entry.key, clean=str(entry.clean) if entry.clean else None)
    if entry.error:
        record.error = entry.error
        return record
    started = time.perf_counter()
    try:
        images = _conditions(entry, record, derainer=derainer, derained_dir=derained_dir, derain=derain,
                             preset=preset, seed=seed)
        height, width = images["rainy"].shape[:2]
        record.width, record.height = width, height
        found: dict[str, tuple[Detections, Detections]] = {}
        for name, rgb in images.items():
            for_map, shown = detector.detect(rgb, (map_pass, show_pass))
            found[name] = (for_map.only(class_filter), shown.only(class_filter))
        truth = None
        if reference == "labels":
            # Labels describe the clean image: named after it where there is a separate clean file.
            source = Path(entry.clean) if entry.clean is not None else Path(entry.input)
            key = entry.key if entry.clean is None or source.stem == Path(entry.key).name else source.stem
            truth = label_source.for_image(key, width, height, file_name=source.name).only(class_filter)
        elif reference in found:
            truth = GroundTruth.from_detections(found[reference][1])
    except InputError as exc:
        record.error = str(exc)
        record.seconds = time.perf_counter() - started
        return record
    except RainkitError as exc:
        record.error = f"{label}: {exc}"
        record.seconds = time.perf_counter() - started
        return record
    except (OSError, RuntimeError, MemoryError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        record.error = f"{label}: {type(exc).__name__}: {message[:200]}"
        record.seconds = time.perf_counter() - started
        return record

    # Scoring only starts once every condition of the image succeeded, so all conditions see the same images.
    record.targets = len(truth) if truth is not None else None
    for name, (for_map, shown) in found.items():
        summary = summaries[name]
        summary.images += 1
        summary.detections += len(shown)
        summary.conf_sum += float(shown.conf.sum())
        record.detections[name] = len(shown)
        record.mean_conf[name] = round(float(shown.conf.mean()), 4) if len(shown) else None
        record.boxes[name] = _boxes_json(shown)
        if truth is not None:
            record.recall50[name] = image_recall(shown, truth)
            if name in scored:
                if len(for_map) > max(300, len(truth)):  # val raises max_det to the largest label count
                    for_map = for_map.sorted().select(np.arange(len(for_map)) < max(300, len(truth)))
                scored[name].add(for_map, truth)
    recalls = [r for r in record.recall50.values() if r is not None]
    counts = list(record.detections.values())
    spread = (max(recalls) - min(recalls)) if recalls else 0.0
    count_spread = (max(counts) - min(counts)) / max(1, max(counts)) if counts else 0.0
    record.disagreement = round(spread + 0.01 * count_spread, 6)
    record.status = "done"
    record.seconds = time.perf_counter() - started

    if out_dir is not None:
        if save_conditions:
            from rainkit.data.images import write_image

            for name in ("rainy", "derained"):
                if name in images:
                    write_image(out_dir / name / f"{entry.key}.png", images[name])
        wanted = save_images > 0 and (pick == "disagree" or len(annotated_first) < save_images)
        if wanted:
            panels = []
            for name in PANEL_ORDER:
                if name in images:
                    shown = found[name][1]
                    title = f"{name}: {len(shown)} objects" + (" (reference)" if name == reference else "")
                    if truth is not None and record.recall50.get(name) is not None and name != reference:
                        title += f", recall {record.recall50[name]:.0%}"
                    panels.append(draw_panel(images[name], shown, names, title))
            picture = side_by_side(panels)
            if pick == "first":
                from rainkit.data.images import write_image

                target = out_dir / "annotated" / (entry.key.replace("/", "__") + ".jpg")
                write_image(target, picture, quality=90)
                annotated_first.append(str(target))
            else:
                item = (record.disagreement, -index, entry.key, picture)
                if len(keep) < save_images:
                    heapq.heappush(keep, item)
                elif item[:2] > keep[0][:2]:
                    heapq.heapreplace(keep, item)
    return record


def _conditions(entry: Entry, record: ImageRecord, *, derainer, derained_dir, derain, preset, seed) -> dict[str, np.ndarray]:
    """The uint8 RGB images of every condition of one entry."""
    image = read_image(entry.input)
    images: dict[str, np.ndarray] = {}
    if preset is not None:
        from rainkit.synth.physics import image_seed, synthesize

        images["clean"] = _as_u8(image.rgb)
        images["rainy"] = _as_u8(synthesize(image.rgb, "rain", preset=preset, seed=image_seed(seed, entry.key)))
    else:
        images["rainy"] = _as_u8(image.rgb)
        if entry.clean is not None:
            clean = _as_u8(read_image(entry.clean).rgb)
            if clean.shape != images["rainy"].shape:
                raise InputError(f"{entry.input}: the clean image {entry.clean} is {clean.shape[1]}x{clean.shape[0]}, "
                                 f"the rainy one {images['rainy'].shape[1]}x{images['rainy'].shape[0]}")
            images["clean"] = clean
    if derain:
        if derained_dir is not None:
            path = _find_by_key(Path(derained_dir), entry.key)
            if path is None:
                raise InputError(f"{entry.input}: no derained image named '{Path(entry.key).name}' in {derained_dir}")
            derained = _as_u8(read_image(path).rgb)
            if derained.shape != images["rainy"].shape:
                raise InputError(f"{path}: size differs from the rainy image {entry.input}")
        else:
            tick = time.perf_counter()
            derained = _as_u8(derainer.derain(images["rainy"].astype(np.float32) / 255.0))
            record.derain_seconds = round(time.perf_counter() - tick, 3)
        images["derained"] = derained
    return images
