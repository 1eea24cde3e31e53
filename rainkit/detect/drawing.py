"""Pictures of a detection study: boxes drawn on each condition, side-by-side panels, and the mAP chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rainkit.detect.metrics import Detections
from rainkit.detect.results import CONDITIONS, DetectResult
from rainkit.io.atomic import atomic_save_figure


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
    return atomic_save_figure(path, figure, dpi=120)
