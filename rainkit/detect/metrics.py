"""Box matching and mAP in pure numpy, computed the way Ultralytics' `val` computes them.

For each image, detections (sorted by descending confidence) are matched greedily to the
ground-truth boxes of the same class at each IoU threshold 0.50:0.05:0.95: a detection takes the
unclaimed target it overlaps most, and is a true positive at every threshold that overlap
reaches (`DetectionValidator.match_predictions`). Over the whole set, detections are ranked by
confidence per class, and AP is the area under the monotone precision envelope sampled at 101
recall points (COCO interpolation) and integrated with the trapezoidal rule
(`ultralytics.utils.metrics.compute_ap` / `ap_per_class`). mAP is the mean over the classes that
have at least one target; a class with targets and no detection scores 0.

Nothing here imports torch or Ultralytics, so the arithmetic is testable on hand-made boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10, dtype=np.float32)  # as torch.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0, 1, 101)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU of every box in `a` (N x 4, xyxy) with every box in `b` (M x 4): an N x M float32 array."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return (inter / (area_a[:, None] + area_b[None, :] - inter + eps)).astype(np.float32)


def match_detections(det_boxes: np.ndarray, det_cls: np.ndarray, gt_boxes: np.ndarray, gt_cls: np.ndarray,
                     thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """True-positive flags (D x T) of detections already sorted by descending confidence.

    Greedy one-to-one matching per threshold, same class only: each detection in turn claims the
    still-unclaimed target it overlaps most, and counts as correct where that IoU reaches the
    threshold (Ultralytics' default, non-Hungarian matching).
    """
    det_cls = np.asarray(det_cls).reshape(-1)
    gt_cls = np.asarray(gt_cls).reshape(-1)
    correct = np.zeros((det_cls.shape[0], len(thresholds)), dtype=bool)
    if det_cls.shape[0] == 0 or gt_cls.shape[0] == 0:
        return correct
    iou = box_iou(gt_boxes, det_boxes) * (gt_cls[:, None] == det_cls[None, :])  # targets x detections
    matched = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    columns = np.arange(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, columns] >= thresholds
        matched[k, columns] |= correct[j]
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope at 101 recall points, integrated with the trapezoidal rule."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(_trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 eps: float = 1e-16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP per class and threshold over a whole set.

    Returns (classes with targets, sorted; AP array classes x thresholds; target count per class).
    """
    tp = np.asarray(tp, dtype=np.float64).reshape(len(conf), -1) if len(conf) else np.zeros((0, len(IOU_THRESHOLDS)))
    conf = np.asarray(conf)
    pred_cls = np.asarray(pred_cls)
    # Not a stable sort, on purpose: quantised (INT8) models give many equal confidences, and the order of the
    # ties changes AP. numpy's default sort on the same float32 array in the same image order reproduces
    # Ultralytics' `val` exactly.
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, counts = np.unique(np.asarray(target_cls).astype(int), return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        fpc = (1 - tp[mine]).cumsum(0)
        tpc = tp[mine].cumsum(0)
        recall = tpc / (counts[ci] + eps)
        precision = tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])
    return classes, ap, counts


@dataclass
class Detections:
    """Boxes (N x 4, xyxy pixels of the original image), confidences (N) and class indices (N)."""

    boxes: np.ndarray
    conf: np.ndarray
    cls: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.conf = np.asarray(self.conf, dtype=np.float32).reshape(-1)
        self.cls = np.asarray(self.cls).reshape(-1).astype(np.int64)

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    def select(self, mask: np.ndarray) -> "Detections":
        return Detections(self.boxes[mask], self.conf[mask], self.cls[mask])

    def sorted(self) -> "Detections":
        return self.select(np.argsort(-self.conf, kind="stable"))

    def above(self, conf: float) -> "Detections":
        return self.select(self.conf >= conf)

    def only(self, classes) -> "Detections":
        return self if classes is None else self.select(np.isin(self.cls, list(classes)))


@dataclass
class GroundTruth:
    """Target boxes (M x 4, xyxy pixels) and class indices (M) of one image."""

    boxes: np.ndarray
    cls: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.cls = np.asarray(self.cls).reshape(-1).astype(np.int64)

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    @classmethod
    def from_detections(cls, detections: Detections) -> "GroundTruth":
        return cls(detections.boxes.copy(), detections.cls.copy())

    def only(self, classes) -> "GroundTruth":
        if classes is None:
            return self
        keep = np.isin(self.cls, list(classes))
        return GroundTruth(self.boxes[keep], self.cls[keep])


@dataclass
class MapResult:
    """mAP over a set: overall and per class (only the classes that have targets)."""

    map50: float
    map50_95: float
    images: int
    instances: int
    per_class: dict[int, dict] = field(default_factory=dict)  # class -> {"instances", "ap50", "ap50_95"}

    def to_json(self, names: dict[int, str] | None = None) -> dict:
        names = names or {}
        return {
            "map50": round(self.map50, 6),
            "map50_95": round(self.map50_95, 6),
            "images": self.images,
            "instances": self.instances,
            "per_class": {names.get(c, str(c)): {"class": c, **{k: (round(v, 6) if isinstance(v, float) else v)
                                                              for k, v in row.items()}}
                          for c, row in sorted(self.per_class.items())},
        }


class MapAccumulator:
    """Collects per-image matches; `result()` gives mAP50 and mAP50-95 like Ultralytics' val."""

    def __init__(self) -> None:
        self._tp: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred_cls: list[np.ndarray] = []
        self._target_cls: list[np.ndarray] = []
        self.images = 0

    def add(self, detections: Detections, truth: GroundTruth) -> np.ndarray:
        """Score one image's detections against its targets; returns their true-positive flags (D x 10)."""
        detections = detections.sorted()
        tp = match_detections(detections.boxes, detections.cls, truth.boxes, truth.cls)
        self._tp.append(tp)
        self._conf.append(detections.conf)
        self._pred_cls.append(detections.cls)
        self._target_cls.append(truth.cls)
        self.images += 1
        return tp

    def result(self) -> MapResult:
        def cat(parts: list, shape: tuple) -> np.ndarray:
            return np.concatenate(parts, 0) if parts else np.zeros(shape)

        tp = cat(self._tp, (0, len(IOU_THRESHOLDS)))
        conf = cat(self._conf, (0,))
        pred_cls = cat(self._pred_cls, (0,)).astype(np.int64)
        target_cls = cat(self._target_cls, (0,)).astype(np.int64)
        if not len(target_cls):
            return MapResult(0.0, 0.0, self.images, 0)
        classes, ap, counts = ap_per_class(tp, conf, pred_cls, target_cls)
        per_class = {int(c): {"instances": int(n), "ap50": float(ap[i, 0]), "ap50_95": float(ap[i].mean())}
                     for i, (c, n) in enumerate(zip(classes, counts))}
        return MapResult(float(ap[:, 0].mean()), float(ap.mean()), self.images, int(len(target_cls)), per_class)


def recovered_share(clean: float | None, rainy: float | None, derained: float | None) -> float | None:
    """The share of the clean -> rainy drop that deraining wins back: (derained - rainy) / (clean - rainy).

    None when a figure is missing or rain cost nothing (no drop to recover).
    """
    if clean is None or rainy is None or derained is None:
        return None
    drop = clean - rainy
    if drop <= 1e-9:
        return None
    return (derained - rainy) / drop


def image_recall(detections: Detections, truth: GroundTruth, iou: float = 0.5) -> float | None:
    """Share of an image's targets found (same class, IoU >= `iou`, one-to-one); None without targets."""
    if len(truth) == 0:
        return None
    detections = detections.sorted()
    tp = match_detections(detections.boxes, detections.cls, truth.boxes, truth.cls, np.array([iou], np.float32))
    return float(tp[:, 0].sum()) / len(truth)
