"""An Ultralytics YOLO detector, kept quiet and off the network.

Ultralytics reads its settings at import time: where its settings file lives, whether it may
check the network, install packages, send usage events, and how much it prints. `quiet_ultralytics`
sets those through the environment before the first import, so that its settings file lives in
rainkit's cache (`$RAINKIT_CACHE/ultralytics`, or `~/.cache/rainkit/ultralytics`) rather than in
`~/.config`, its runs and datasets folders point there too, it never checks connectivity or
sends events, never pip-installs anything, and prints only errors. A user who set any of these
variables keeps their value.

The model runs through Ultralytics' `AutoBackend`, so every format `YOLO()` loads works here
(`.pt`, ONNX, OpenVINO, TensorRT, ...). Pre-processing is the one `yolo val` uses (long side
resized to the input size, then letterboxed with grey 114), and one forward pass can be
post-processed several ways: the mAP pass uses val's settings (confidence 0.001, multi-label
NMS, up to 300 boxes), the detections shown and counted use the user's thresholds.

The default detector is named, not shipped: Ultralytics publishes it, and rainkit downloads it
into its cache on first use. Offline, without a local copy, the error names what to pass.
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rainkit.detect.metrics import Detections
from rainkit.engine import InferenceEngine
from rainkit.errors import ParameterError, RainkitError, WeightsError, first_line

DEFAULT_DETECTOR = "yolo11n.pt"  # Ultralytics YOLO11 nano, COCO (80 classes); AGPL-3.0
EXPORT_SUFFIXES = ("_openvino_model", "_saved_model", "_ncnn_model", "_paddle_model", "_mnn_model", "_imx_model",
                   "_rknn_model", "_web_model", "_edgetpu_model", "_executorch_model")

_quieted = False


def ultralytics_dir() -> Path:
    """Where Ultralytics keeps its settings (and where rainkit keeps downloaded detectors)."""
    from rainkit.hub.weights import cache_dir

    return cache_dir().parent / "ultralytics"


def quiet_ultralytics() -> None:
    """Configure Ultralytics through its environment before its first import (see the module doc)."""
    global _quieted
    if _quieted:
        return
    root = ultralytics_dir()
    env = {
        "YOLO_CONFIG_DIR": str(root),  # settings.json goes to <root>/Ultralytics/
        "YOLO_OFFLINE": "1",  # no DNS probes, hence no usage events and no update checks
        "YOLO_VERBOSE": "False",
        "YOLO_AUTOINSTALL": "False",  # never pip-install a missing backend: say what is missing instead
    }
    already = "ultralytics" in sys.modules
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # Only ever touch the settings file rainkit itself owns: no runs/, datasets/ or weights/ folders beside the
    # user's working folder (Ultralytics' defaults), no telemetry.
    wanted = {"sync": False, "runs_dir": str(root / "runs"), "datasets_dir": str(root / "datasets"),
              "weights_dir": str(root / "weights")}
    settings_file = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics" / "settings.json"
    if not already and settings_file.is_relative_to(root) and not settings_file.exists():
        # Written before the import, so the folders Ultralytics derives at import time are these too; it fills in
        # the rest of its schema itself.
        try:
            settings_file.parent.mkdir(parents=True, exist_ok=True)
            settings_file.write_text(json.dumps(wanted, indent=2) + "\n")
        except OSError:
            pass
    from rainkit.extras import require

    uu = require("ultralytics.utils", extra="detect", for_what="YOLO detectors")

    settings = getattr(uu, "SETTINGS", None)
    if settings is not None and not already and Path(getattr(settings, "file", "")).is_relative_to(root):
        try:
            changes = {k: v for k, v in wanted.items() if k in settings and settings.get(k) != v}
            if changes:
                settings.update(changes)
        except Exception:  # an unexpected settings schema must not stop detection
            pass
    _quieted = True


def _is_export_dir(path: Path) -> bool:
    return path.is_dir() and path.name.endswith(EXPORT_SUFFIXES)


def resolve_detector(spec: str | os.PathLike | None = None, *, download: bool = True, timeout: float = 60.0) -> Path:
    """A local detector path: the path given, or a named Ultralytics model from rainkit's cache
    (downloaded there on first use). Raises WeightsError with what to pass when none is available."""
    name = str(spec) if spec is not None else DEFAULT_DETECTOR
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not _is_export_dir(path):
            if (path / "metadata.yaml").exists() and any(path.glob("*.xml")):
                raise WeightsError(f"{path}: an OpenVINO export folder must keep its name ending in '_openvino_model' "
                                   "(that is how Ultralytics recognises the format)")
            raise WeightsError(f"{path}: a folder, but not an exported model folder (name ending in "
                               f"{', '.join(EXPORT_SUFFIXES[:3])}, ...)")
        if path.is_file():
            from rainkit.hub.weights import resolve_weights

            resolve_weights(path)  # a file named like a registered detector must be that file
        return path
    if os.sep in name or (os.altsep and os.altsep in name) or name.startswith("."):
        raise ParameterError("detector", f"{name}: no such file or folder")
    cached = ultralytics_dir() / "weights" / name
    entry = _registered_detector(name)
    if cached.exists():
        if entry is not None:
            _verify_download(cached, entry, f"{cached}: ")
        return cached
    if entry is not None:  # fetched with `rainkit weights fetch`, or on RAINKIT_WEIGHTS_PATH
        from rainkit.hub.weights import check_weights, warn_skipped

        status = check_weights(entry)
        if status.state == "verified":
            warn_skipped(status)
            return status.path
    known = _known_assets()
    if known is not None and name not in known:
        raise ParameterError("detector", f"{name}: not a file, and not a model Ultralytics publishes "
                           f"(e.g. {DEFAULT_DETECTOR}, yolov8n.pt); pass a path to local weights")
    offline_hint = (f"no local detector weights: '{name}' is not in {cached.parent} and could not be downloaded "
                    f"(offline?); pass `detector` PATH (a YOLO .pt file or an exported model folder such as "
                    f"yolov8n_int8_openvino_model), or put {name} in {cached.parent}")
    if not download:
        raise WeightsError(offline_hint)
    _download(name, cached, timeout, offline_hint, entry)
    return cached


def _registered_detector(name: str):
    """The registry's entry for a named detector file (e.g. yolo11n.pt), or None for one rainkit does not pin."""
    from rainkit.registry import list_weights

    return next((e for e in list_weights() if e.filename == name), None)


def _verify_download(path: Path, entry, where: str) -> None:
    from rainkit.hub.weights import sha256_file

    digest = sha256_file(path)
    if digest != entry.sha256:
        raise WeightsError(f"{where}sha256 {digest[:12]}… is not the {entry.sha256[:12]}… registered for "
                           f"'{entry.name}'; delete {path} and run again to download it afresh")


def _known_assets() -> frozenset[str] | None:
    quiet_ultralytics()
    try:
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    except ImportError:  # pragma: no cover - older Ultralytics
        return None
    return frozenset(GITHUB_ASSETS_NAMES)


def _asset_url(name: str) -> str:
    """Where Ultralytics itself fetches a named model: its assets repository, at the release its installed
    version pins (the default of `attempt_download_asset`)."""
    import inspect

    from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters.get("release")
    tag = release.default if release is not None and isinstance(release.default, str) else "v8.3.0"
    return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{tag}/{name}"


def _download(name: str, target: Path, timeout: float, offline_hint: str, entry=None) -> None:
    """Fetch a named detector into the cache; one the registry pins comes from its URL and must match its
    sha256 before it is kept."""
    import hashlib

    from rainkit.io.atomic import atomic_write_bytes

    url = entry.url if entry is not None else _asset_url(name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
            data = response.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        raise WeightsError(offline_hint) from None
    if len(data) < 1024:
        raise WeightsError(f"{url}: the download is not a model ({len(data)} bytes); {offline_hint}")
    if entry is not None and hashlib.sha256(data).hexdigest() != entry.sha256:
        raise WeightsError(f"{url}: the download has sha256 {hashlib.sha256(data).hexdigest()[:12]}…, not the "
                           f"{entry.sha256[:12]}… registered for '{entry.name}'; nothing was saved")
    atomic_write_bytes(target, data)


@dataclass(frozen=True)
class NMSSettings:
    """One way to turn raw outputs into boxes: thresholds, multi-label or not, how many boxes at most."""

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False


# Ultralytics `val` defaults: the mAP path must use these to reproduce its figures.
VAL_CONF = 0.001
VAL_IOU = 0.7
VAL_IMGSZ = 640


def letterbox_params(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """How `yolo val` places an image in the model input (rect off): (resized h, resized w, top, left).

    The long side is scaled to the input's long side (ceil, as Ultralytics' loader does), then
    the image is centred with grey padding.
    """
    long = max(size)
    r = long / max(height, width)
    if r != 1:
        w, h = min(math.ceil(width * r), long), min(math.ceil(height * r), long)
    else:
        w, h = width, height
    # LetterBox(scaleup=False) after that resize: a second scale only when the input is not square.
    r2 = min(size[0] / h, size[1] / w, 1.0)
    if r2 < 1.0:
        w, h = max(round(w * r2), 1), max(round(h * r2), 1)
    dh, dw = (size[0] - h) / 2, (size[1] - w) / 2
    return h, w, round(dh - 0.1), round(dw - 0.1)


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """Resize and pad a uint8 RGB image into `size` (h, w); returns it and (sx, sy, top, left) to map boxes back."""
    import cv2

    height, width = rgb.shape[:2]
    h, w, top, left = letterbox_params(height, width, size)
    resized = rgb if (h, w) == (height, width) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size[0], size[1], 3), 114, np.uint8)
    canvas[top:top + h, left:left + w] = resized
    return canvas, (w / width, h / height, top, left)


def unletterbox(boxes: np.ndarray, params: tuple[float, float, int, int]) -> np.ndarray:
    """Map xyxy boxes from the model input back to the original image (not clipped, as in val)."""
    sx, sy, top, left = params
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - left) / sx
    out[:, [1, 3]] = (out[:, [1, 3]] - top) / sy
    return out


class YoloDetector(InferenceEngine):
    """A YOLO detection model from any format Ultralytics loads; build it with `load_detector`.

    An `InferenceEngine` for its device and its `describe()` record. The model is Ultralytics'
    `AutoBackend`, read by Ultralytics from `path` (not through rainkit's hub, so `load` is
    `load_detector`'s), and it runs in fp32 on whole letterboxed images: the input size is the
    model's, there is nothing to tile.
    """

    arch = "yolo"

    def __init__(self, path: Path, device: str = "auto", imgsz: int | None = None, spec: str | None = None) -> None:
        quiet_ultralytics()
        import torch

        from rainkit.hub import resolve_device

        from rainkit.extras import require

        AutoBackend = require("ultralytics.nn.autobackend", extra="detect", for_what="YOLO detectors").AutoBackend
        dev = resolve_device(device)
        self.path = Path(path)
        self.spec = spec or str(path)
        try:
            backend = AutoBackend(model=str(path), device=dev, fp16=False, fuse=True, verbose=False)
        except ModuleNotFoundError as exc:
            raise WeightsError(f"{path}: loading this format needs the '{exc.name}' package (pip install {exc.name})") from None
        except Exception as exc:  # Ultralytics raises many types for unreadable models
            message = first_line(exc, None)
            if "openvino" in message.lower() and "require" in message.lower():
                message = "the OpenVINO runtime is missing (pip install openvino)"
            raise WeightsError(f"{path}: cannot load as a YOLO detector: {message[:300]}") from None
        task = getattr(backend, "task", None) or (getattr(backend, "metadata", None) or {}).get("task")
        if task not in (None, "detect"):
            raise WeightsError(f"{path}: a '{task}' model, not an object detector")
        super().__init__(backend, getattr(backend, "device", dev))
        self.names: dict[int, str] = {int(k): str(v) for k, v in dict(self.model.names).items()}
        self.format = str(getattr(self.model, "format", "pt"))
        fixed = getattr(self.model, "imgsz", None) if self.format != "pt" and not getattr(self.model, "dynamic", False) else None
        if fixed:
            fixed = (int(fixed[0]), int(fixed[1])) if isinstance(fixed, (list, tuple)) else (int(fixed), int(fixed))
            if imgsz is not None and max(fixed) != imgsz:
                raise RainkitError(f"{path}: this export takes {fixed[1]}x{fixed[0]} inputs only; pass `imgsz` {max(fixed)}")
            self.imgsz = fixed
        else:
            size = int(imgsz or VAL_IMGSZ)
            stride = int(max(getattr(self.model, "stride", 32) or 32, 1))
            size = max(stride, int(math.ceil(size / stride) * stride))
            self.imgsz = (size, size)
        self.end2end = bool(getattr(self.model, "end2end", False))
        self._torch = torch
        try:  # Ultralytics uses torchvision's NMS only once torchvision is imported, else a fallback that keeps
            import torchvision.ops  # noqa: F401  (other boxes): val has it imported, so must we, to score as val does
        except ImportError:  # pragma: no cover - torchvision is a dependency
            pass
        try:
            from ultralytics.utils.nms import non_max_suppression
        except ImportError:  # pragma: no cover - Ultralytics < 8.3.x kept it in ops
            from ultralytics.utils.ops import non_max_suppression
        self._nms = non_max_suppression

    @classmethod
    def load(cls, detector: str | os.PathLike | None = None, *, device: str = "auto", imgsz: int | None = None,
             download: bool = True) -> "YoloDetector":
        """`load_detector`: resolve (and if needed fetch) a detector, then load it through Ultralytics."""
        path = resolve_detector(detector, download=download)
        return cls(path, device=device, imgsz=imgsz, spec=str(detector) if detector is not None else DEFAULT_DETECTOR)

    def describe(self) -> dict:
        """The detector's own record (kept as `rainkit detect` has always written it): spec, path, format,
        input size, device, class count."""
        return {"detector": self.spec, "detector_path": str(self.path), "format": self.format,
                "imgsz": list(self.imgsz), "device": str(self.device), "classes": len(self.names)}

    def detect(self, rgb: np.ndarray, passes: Sequence[NMSSettings]) -> list[Detections]:
        """Detect objects in an H x W x 3 uint8 RGB image, once per NMS setting in `passes`."""
        torch = self._torch
        image, params = letterbox(np.ascontiguousarray(rgb), self.imgsz)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device).float() / 255.0
        with torch.inference_mode():
            raw = self.model(x)
        outputs = []
        for nms in passes:
            kept = self._nms(raw, nms.conf, nms.iou, multi_label=nms.multi_label, max_det=nms.max_det, nc=0,
                             max_time_img=10.0, end2end=self.end2end)[0]
            kept = kept.float().cpu().numpy()
            outputs.append(Detections(unletterbox(kept[:, :4], params), kept[:, 4], kept[:, 5].round().astype(np.int64)))
        return outputs


def load_detector(detector: str | os.PathLike | None = None, *, device: str = "auto", imgsz: int | None = None,
                  download: bool = True) -> YoloDetector:
    """Resolve (and if needed fetch) a detector and load it: `load_detector("yolov8n_openvino_model/")`."""
    return YoloDetector.load(detector, device=device, imgsz=imgsz, download=download)
