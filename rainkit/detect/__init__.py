"""What deraining buys object detection: YOLO on clean, rainy and derained images, scored like `yolo val`.

`run_detect(inputs, DetectSettings(...))` is the whole `rainkit detect` command as one call; `load_detector` wraps an
Ultralytics model (any format it loads) without its chatter, settings files or network checks;
`rainkit.detect.metrics` holds the matching and mAP arithmetic in plain numpy.

Ultralytics is AGPL-3.0: rainkit calls it as an installed library and ships none of its code or weights.
"""

from rainkit.detect.metrics import (Detections, GroundTruth, MapAccumulator, MapResult, ap_per_class, box_iou,
                                    compute_ap, match_detections, recovered_share)
from rainkit.detect.results import DetectResult, ImageRecord
from rainkit.detect.runner import DetectSettings, run_detect

__all__ = [
    "DEFAULT_DETECTOR", "DetectResult", "DetectSettings", "Detections", "GroundTruth", "ImageRecord", "MapAccumulator", "MapResult",
    "NMSSettings", "YoloDetector", "ap_per_class", "box_iou", "compute_ap", "load_detector", "match_detections",
    "recovered_share", "run_detect",
]

from rainkit.detect.detector import DEFAULT_DETECTOR, NMSSettings, YoloDetector, load_detector  # noqa: E402
