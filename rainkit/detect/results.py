"""What `rainkit detect` returns: one record per image, one summary per condition, and the whole result with its
JSON and CSV forms."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

from rainkit._version import __version__
from rainkit.detect.metrics import MapResult, recovered_share

CONDITIONS = ("clean", "rainy", "derained")


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
