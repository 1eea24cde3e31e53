"""Detection ground truth: a folder of YOLO txt files, or a COCO JSON file.

YOLO labels (`class cx cy w h`, normalised to the image) are matched to an image by its path
relative to the input folder, then by its stem: `images/a/b.jpg` takes `labels/a/b.txt` or
`labels/b.txt`. An image without a label file is a background image (no objects), as in
Ultralytics. COCO annotations are matched by `file_name` (its base name); their categories are
mapped to the detector's classes by name, and categories the detector does not know are left out
(and listed in the result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rainkit.detect.metrics import GroundTruth
from rainkit.errors import InputError, RainkitError


def _norm_name(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


@dataclass
class LabelSource:
    """Where ground truth comes from; `for_image` gives one image's targets in pixels."""

    kind: str  # "yolo" or "coco"
    path: Path
    ignored_categories: list[str] = field(default_factory=list)
    _coco: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # file name -> (cls, xyxy pixels)

    def describe(self) -> dict:
        out = {"kind": self.kind, "path": str(self.path)}
        if self.ignored_categories:
            out["ignored_categories"] = list(self.ignored_categories)
        return out

    def for_image(self, key: str, width: int, height: int, file_name: str | None = None) -> GroundTruth:
        """Targets of the image `key` (its path relative to the input folder, without suffix)."""
        if self.kind == "yolo":
            return self._yolo(key, width, height)
        assert self._coco is not None
        name = file_name or Path(key).name
        for candidate in (name, Path(name).name, Path(key).name):
            if candidate in self._coco:
                cls, boxes = self._coco[candidate]
                return GroundTruth(boxes, cls)
        raise InputError(f"{name}: no entry in {self.path} (COCO 'images' has no file_name '{Path(name).name}')")

    def _yolo(self, key: str, width: int, height: int) -> GroundTruth:
        candidates = [self.path / f"{key}.txt", self.path / f"{Path(key).name}.txt"]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            return GroundTruth(np.zeros((0, 4)), np.zeros(0))  # background image
        try:
            text = label.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{label}: cannot be read ({exc})") from None
        rows = [line.split() for line in text.splitlines() if line.strip()]
        if not rows:
            return GroundTruth(np.zeros((0, 4)), np.zeros(0))
        try:
            values = np.array([[float(v) for v in row[:5]] for row in rows if len(row) >= 5], dtype=np.float64)
        except ValueError:
            raise InputError(f"{label}: not a YOLO label file (expected 'class cx cy w h' per line)") from None
        if len(values) != len(rows) or any(len(row) != 5 for row in rows):
            raise InputError(f"{label}: not a YOLO detection label file (expected 5 numbers per line: class cx cy w h)")
        if (values[:, 0] < 0).any() or (values[:, 0] != np.round(values[:, 0])).any():
            raise InputError(f"{label}: class indices must be non-negative integers")
        if (values[:, 1:] < -0.01).any() or (values[:, 1:] > 1.01).any():
            raise InputError(f"{label}: coordinates must be normalised to 0..1 (YOLO format)")
        cx, cy, w, h = values[:, 1] * width, values[:, 2] * height, values[:, 3] * width, values[:, 4] * height
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        return GroundTruth(boxes, values[:, 0].astype(np.int64))


def load_labels(path: str | Path, names: dict[int, str]) -> LabelSource:
    """A YOLO label folder or a COCO JSON file; `names` are the detector's classes (for COCO mapping)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not any(path.rglob("*.txt")):
            raise RainkitError(f"{path}: no YOLO label files (*.txt) in this folder")
        return LabelSource("yolo", path)
    if not path.is_file():
        raise RainkitError(f"{path}: no such label folder or COCO JSON file")
    if path.suffix.lower() != ".json":
        raise RainkitError(f"{path}: labels must be a folder of YOLO .txt files or a COCO .json file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RainkitError(f"{path}: not a readable JSON file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise RainkitError(f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories')")
    by_name = {_norm_name(n): i for i, n in names.items()}
    category_map: dict[int, int] = {}
    ignored = []
    for category in data["categories"]:
        index = by_name.get(_norm_name(str(category.get("name", ""))))
        if index is None:
            ignored.append(str(category.get("name", category.get("id"))))
        else:
            category_map[int(category["id"])] = index
    if not category_map:
        raise RainkitError(f"{path}: none of its categories is a class of the detector "
                           f"(e.g. {', '.join(ignored[:4])}); pass a detector trained on them")
    files = {}
    for image in data["images"]:
        files[int(image["id"])] = Path(str(image["file_name"])).name
    table: dict[str, tuple[list, list]] = {name: ([], []) for name in files.values()}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        index = category_map.get(int(ann["category_id"]))
        name = files.get(int(ann["image_id"]))
        if index is None or name is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        table[name][0].append(index)
        table[name][1].append([x, y, x + w, y + h])
    coco = {name: (np.array(c, np.int64), np.array(b, np.float32).reshape(-1, 4)) for name, (c, b) in table.items()}
    return LabelSource("coco", path, ignored, coco)
