"""Does `rainkit detect` score like Ultralytics' own `val`? The clean-image mAP on a labelled set, both ways.

Builds a throw-away copy of the dataset layout in a temporary folder (image symlinks, label
copies and a dataset YAML: Ultralytics writes a label cache beside the labels, which must never
land in ../shared or the repository), runs `YOLO(weights, task="detect").val(...)` with val's
defaults (conf 0.001, IoU 0.7, imgsz 640, batch 1), then rainkit's mAP path on the same images and
labels without deraining, and prints both with the differences.

    python bench/detect_val_check.py [--images DIR] [--labels DIR] [--detector PATH] [--limit N]

Defaults: coco128 and the YOLOv8n OpenVINO INT8 export from ../shared (or $RAINKIT_SHARED).
Measured on coco128 (128 images): val mAP50 0.61933 / mAP50-95 0.45728; rainkit 0.61932 / 0.45714.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "data/coco128/images/train2017")
    parser.add_argument("--labels", type=Path, default=SHARED / "data/coco128/labels/train2017")
    parser.add_argument("--detector", type=Path, default=SHARED / "weights/yolov8n_int8_openvino_model")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for path in (args.images, args.labels, args.detector):
        if not path.exists():
            print(f"{path} not found (set RAINKIT_SHARED or pass the paths)", file=sys.stderr)
            return 2

    from rainkit.detect import load_detector, run_detect
    from rainkit.detect.detector import quiet_ultralytics

    quiet_ultralytics()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    detector = load_detector(args.detector, device=args.device)
    with tempfile.TemporaryDirectory(prefix="rainkit-val-check-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "labels").mkdir()
        for image in images:
            (root / "images" / image.name).symlink_to(image.resolve())
            label = args.labels / f"{image.stem}.txt"
            if label.exists():
                (root / "labels" / label.name).write_bytes(label.read_bytes())
        import yaml

        data = root / "data.yaml"
        data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": detector.names}))
        from ultralytics import YOLO

        metrics = YOLO(str(args.detector), task="detect").val(
            data=str(data), imgsz=640, batch=1, conf=0.001, iou=0.7, device=args.device, plots=False,
            project=str(root / "runs"), verbose=False)
        ours = run_detect([str(root / "images")], labels=root / "labels", detector=detector, derain=False)
    mine = ours.conditions["rainy"].map
    report = {
        "images": len(images),
        "ultralytics_val": {"map50": metrics.box.map50, "map50_95": metrics.box.map},
        "rainkit": {"map50": mine.map50, "map50_95": mine.map50_95},
        "difference": {"map50": mine.map50 - metrics.box.map50, "map50_95": mine.map50_95 - metrics.box.map},
    }
    print(json.dumps(report, indent=2))
    return 0 if max(abs(v) for v in report["difference"].values()) <= 0.005 else 1


if __name__ == "__main__":
    sys.exit(main())
