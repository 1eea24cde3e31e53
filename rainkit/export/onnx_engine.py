"""A deraining engine on onnxruntime (CPU): the same interface as `rainkit.derain.engine.Derainer`, so
`rainkit.derain.batch.derain_files` runs it unchanged (`rainkit derain --backend onnxruntime`).

Where the graph comes from:

* `weights` naming an `.onnx` file exported by rainkit (`rainkit export`): that file, described by the
  card rainkit stores in its metadata;
* anything else (a registered name, a checkpoint path, or None for the default weights): the weights
  are exported on first use into rainkit's cache, `<cache>/onnx/<arch>-<weights sha256>-opset<N>-
  rainkit<version>-fp32.onnx` with its card beside it, written atomically; later runs reuse it once
  its sha256 matches the card's. A missing, changed or half-written entry is exported again.

The graph is the whole-image network, so this engine always runs whole images: SAPNet's channel
attention pools over the image it sees, and rainkit's tiler, which carries whole-image statistics
across tiles, has no counterpart in the graph. `tile` is therefore 0 and a positive tile is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rainkit._version import __version__
from rainkit.errors import DeviceError, ParameterError, RainkitError, WeightsError, first_line
from rainkit.export.onnx import (METADATA_KEY, OPSET, build_onnx, card_path, cpu_session, require_onnx,
                                 write_export)
from rainkit.io.batch import sha256_bytes

PROVIDER = "CPUExecutionProvider"
# Peak memory of a whole-image run on the CPU provider, per pixel, for 32 feature channels: measured
# 1230-1430 bytes (SAPNet and PReNet, 240x160 to 962x642); it scales with the width.
_BYTES_PER_PIXEL_WIDTH32 = 1450
# The share of available memory a whole image may take before it is refused.
_MEMORY_SHARE = 0.8


def onnx_cache_dir() -> Path:
    """Beside the weights cache: `<RAINKIT_CACHE or ~/.cache/rainkit>/onnx`."""
    from rainkit.hub.weights import cache_dir

    return cache_dir().parent / "onnx"


def cached_onnx_path(arch: str, weights_sha256: str, opset: int = OPSET) -> Path:
    return onnx_cache_dir() / f"{arch}-{weights_sha256}-opset{opset}-rainkit{__version__}-fp32.onnx"


@dataclass
class OnnxDerainer:
    """A deraining graph on onnxruntime's CPU provider. Build it with `load_onnx_derainer`."""

    session: object  # onnxruntime.InferenceSession
    model_name: str
    onnx_path: Path
    onnx_sha256: str
    card: dict
    exported_now: bool = False  # True when this load exported the weights into the cache
    tile: int = 0  # always whole images (module doc)
    halo: int = 0
    memory_budget: int | None = None  # bytes an image may take; None: a share of the available memory
    last_tile: int = field(default=0, init=False)

    @property
    def weights_name(self) -> str:
        return self.card.get("weights", "")

    @property
    def weights_sha256(self) -> str:
        return self.card.get("weights_sha256", "")

    @property
    def precision(self) -> str:
        return self.card.get("dtype", "fp32")

    @property
    def input_name(self) -> str:
        return self.card["inputs"][0]["name"]

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # onnxruntime's own error types share no base class with RuntimeError
            raise RainkitError(f"onnxruntime failed on a {x.shape[3]}x{x.shape[2]} image ({first_line(exc)})") from None

    def _check_memory(self, height: int, width: int) -> None:
        """Refuse an image whose whole-image run would not fit, before onnxruntime tries (and the system's
        OOM killer ends the batch)."""
        need = height * width * _BYTES_PER_PIXEL_WIDTH32 * self.card.get("arch_kwargs", {}).get("width", 32) // 32
        budget = self.memory_budget
        if budget is None:
            import torch

            from rainkit.tiling import available_memory_bytes

            budget = int(available_memory_bytes(torch.device("cpu")) * _MEMORY_SHARE)
        if need > budget:
            raise RainkitError(f"a {width}x{height} image needs about {need / 2**30:.1f} GiB as a whole image on "
                               f"onnxruntime, more than the {budget / 2**30:.1f} GiB at hand; --backend torch tiles "
                               f"big images")

    def derain(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Derain an H x W x 3 float32 RGB array in [0, 1], as a whole image; returns H x W x 3 float32,
        not clamped. `on_tile` is never called (there are no tiles)."""
        self._check_memory(*rgb.shape[:2])
        return self._run(rgb.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "weights": self.weights_name,
            "weights_sha256": self.weights_sha256,
            "device": "cpu",
            "precision": self.precision,
            "backend": "onnxruntime",
            "onnx": str(self.onnx_path),
            "onnx_sha256": self.onnx_sha256,
            "provider": PROVIDER,
        }


def _read_card(path: Path) -> dict | None:
    try:
        card = json.loads(card_path(path).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _cached_graph(arch: str, weights: str | None, opset: int) -> tuple[Path, bytes, dict, bool]:
    """The cached graph for these weights, exported first when the cache has no intact entry."""
    from rainkit.hub import default_weights_for, get_arch, resolve_weights

    spec = get_arch(arch)
    if weights is None:
        entry = default_weights_for(spec.name)
        # No default: let the export raise load_model's message, which says what to pass.
        weights = entry.name if entry else None
    resolved = resolve_weights(weights) if weights is not None else None
    if resolved is not None:
        path = cached_onnx_path(spec.name, resolved.sha256, opset)
        card = _read_card(path)
        if card and card.get("weights_sha256") == resolved.sha256 and path.is_file():
            data = path.read_bytes()
            if sha256_bytes(data) == card.get("onnx_sha256"):
                # The same weights may come by another name or path than at export: say how they came now.
                weights_name = resolved.entry.name if resolved.entry else str(resolved.path)
                return path, data, {**card, "weights": weights_name}, False
    exported = build_onnx(spec.name, weights, opset=opset)
    path = cached_onnx_path(spec.name, exported.card["weights_sha256"], opset)
    result = write_export(exported, path)
    return path, exported.data, result.card, True


def _given_graph(path: Path) -> tuple[Path, bytes, dict]:
    """An `.onnx` file given as weights, with the card rainkit stored in its metadata."""
    import onnx

    if not path.is_file():
        raise WeightsError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        detail = str(exc).strip()[:160] or type(exc).__name__
        raise WeightsError(f"{path}: not a readable ONNX file ({detail})") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    try:
        card = json.loads(props[METADATA_KEY])
    except (KeyError, ValueError):
        raise WeightsError(f"{path}: not an ONNX file exported by rainkit (no card in its metadata); "
                           f"export one with `rainkit export`") from None
    return path, data, {**card, "onnx_sha256": sha256_bytes(data)}


def load_onnx_derainer(model: str = "sapnet", weights: str | None = None, device: str = "auto",
                       precision: str = "fp32", tile: int | None = None, opset: int = OPSET) -> OnnxDerainer:
    """A deraining engine on onnxruntime's CPU provider: `load_onnx_derainer("sapnet").derain(rgb)`.

    `weights` is an `.onnx` file exported by rainkit, or weights as `load_derainer` takes them (exported
    into rainkit's cache on first use, see the module doc). Runs fp32 whole images on the CPU."""
    require_onnx()
    from rainkit.hub import get_arch

    if get_arch(model).task != "derain":
        raise RainkitError(f"model '{model}' is not a deraining network")
    if device not in ("auto", "cpu"):
        raise DeviceError(f"the onnxruntime backend runs on the CPU ({PROVIDER}), not '{device}': "
                          f"use --device cpu, or --backend torch")
    if precision != "fp32":
        raise ParameterError("precision", f"the onnxruntime backend runs fp32 (an fp16 graph runs slower than fp32 "
                                          f"on its CPU provider), not {precision}")
    if tile:
        raise ParameterError("tile", "the onnxruntime backend runs whole images (the graph's channel attention pools "
                                     "over the image it is given); leave --tile out or use --backend torch")
    if weights is not None and str(weights).endswith(".onnx"):
        path, data, card = _given_graph(Path(weights).expanduser())
        exported_now = False
    else:
        path, data, card, exported_now = _cached_graph(model, weights, opset)
    if card.get("arch") != model.split(".", 1)[0]:
        raise WeightsError(f"{path}: the graph is '{card.get('arch')}', not '{model}'")
    if card.get("task") != "derain":
        raise WeightsError(f"{path}: '{card.get('arch')}' is not a deraining network")
    session = cpu_session(data, str(path))
    return OnnxDerainer(session, model, path, sha256_bytes(data), card, exported_now=exported_now)
