"""The Derainer: one loaded deraining model plus how to run it (device, precision, tiling)."""

from __future__ import annotations

import ctypes
import math
import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rainkit.derain.tiling import run_tiled
from rainkit.errors import RainkitError
from rainkit.hub import load_model, resolve_device, resolve_precision
from rainkit.models.recurrent import RecurrentDerainNet

# Context kept around each tile. The theoretical receptive radius of SAPNet is 390 px (six stages
# of 65), but the influence of far pixels decays fast. Measured on a 1024x768 photo with 256 px
# tiles (bench/derain_tiling.py): halo 64 gives 79 dB PSNR to the untiled output with global
# pooling statistics (58 dB with tile-local pooling); halo 128 gives 82 dB at 1.6x the time.
DEFAULT_HALO = 64
DEFAULT_BLEND = 16
# Working memory per pixel during a forward pass, in units of (width x 4 bytes): measured peak for
# the fast fp32 path is about 9 feature maps alive at once; 12 leaves room.
_FEATURE_MAPS_ALIVE = 12

_allocator_tuned = False


def tune_cpu_allocator() -> None:
    """Keep large buffers in glibc's heap instead of fresh mmaps.

    Every intermediate feature map of a megapixel image is tens of MB, which glibc serves with
    mmap and unmaps on free, so each one is page-faulted in again: about a quarter of CPU
    inference time. Disabling mmap for the heap and raising the trim threshold makes freed
    buffers reusable. glibc only; set RAINKIT_NO_MALLOC_TUNING=1 to leave the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("RAINKIT_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_trim_threshold, 1 << 30)
        libc.mallopt(m_mmap_max, 0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass


def _available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def tile_for_budget(height: int, width: int, tile: int | None, memory_budget: int | None, device: torch.device,
                    bytes_per_pixel: int, margin: int) -> int:
    """The user's tile, or the largest square tile whose working memory fits the budget (0 = whole image).

    `margin` is the context each tile carries on a side (halo + blend). Without a given budget: half the
    free GPU memory, or on the CPU 35% of available RAM capped at 1.2 GB (the process also holds the
    image, the output and torch; 1.2 GB keeps a 12 MP photo under 2.5 GB resident)."""
    if tile is not None:
        return tile if 0 < tile < max(height, width) else 0
    budget = memory_budget
    if budget is None:
        available = _available_memory_bytes(device)
        budget = int(available * 0.5) if device.type == "cuda" else min(int(available * 0.35), 1200 << 20)
    if height * width * bytes_per_pixel <= budget:
        return 0
    return max(64, int(math.sqrt(budget / bytes_per_pixel)) - 2 * margin)


@dataclass
class Derainer:
    """A ready-to-run deraining model. Build it with `load_derainer`."""

    model: RecurrentDerainNet
    model_name: str
    weights_path: Path
    weights_sha256: str
    weights_name: str | None
    device: torch.device
    precision_name: str
    tile: int | None  # None: automatic; 0: whole image
    halo: int = DEFAULT_HALO
    blend: int = DEFAULT_BLEND
    memory_budget: int | None = None  # bytes; None: from available memory
    last_tile: int = field(default=0, init=False)

    @property
    def precision(self) -> str:
        return self.precision_name

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _bytes_per_pixel(self) -> int:
        element = 4 if self.precision_name == "fp32" else 2
        return self.model.width * _FEATURE_MAPS_ALIVE * element + 64

    def choose_tile(self, height: int, width: int) -> int:
        """The tile size for an image: the user's, or the largest that fits the memory budget (0 = whole)."""
        return tile_for_budget(height, width, self.tile, self.memory_budget, self.device, self._bytes_per_pixel(),
                               self.halo + self.blend)

    def _forward(self, x: torch.Tensor, pooled=None) -> torch.Tensor:
        precision = resolve_precision(self.precision_name, self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), precision.autocast():
            return self.model(x, pooled=pooled).float()

    def derain_tensor(self, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Derain a (1, 3, H, W) float tensor in [0, 1] on the CPU; returns the unclamped float output on the CPU."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RainkitError(f"expected a (1, 3, H, W) tensor, got {tuple(x.shape)}")
        if self.device.type == "cpu":
            tune_cpu_allocator()
        _, _, height, width = x.shape
        tile = self.choose_tile(height, width)
        self.last_tile = tile
        if tile == 0:
            return self._forward(x.to(self.device)).cpu()
        return run_tiled(self._forward, x, tile=tile, halo=min(self.halo, self.model.receptive_radius()),
                         blend=self.blend, global_pooling=self.model.attention, device=self.device, on_tile=on_tile)

    def derain(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Derain an H x W x 3 float32 RGB array in [0, 1]; returns H x W x 3 float32, not clamped."""
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return self.derain_tensor(x, on_tile)[0].numpy().transpose(1, 2, 0)

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "weights": self.weights_name or str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
            "precision": self.precision_name,
        }


def load_derainer(model: str = "sapnet", weights: str | None = None, device: str = "auto", precision: str = "fp32",
                  tile: int | None = None, halo: int = DEFAULT_HALO) -> Derainer:
    """Load a deraining model ready to use: `load_derainer("prenet", "prenet.rain100l").derain(rgb)`."""
    dev = resolve_device(device)
    resolve_precision(precision, dev)
    if tile is not None and tile < 0:
        raise RainkitError(f"--tile must be 0 (off) or a positive size, got {tile}")
    net, resolved = load_model(model, weights, device=dev)
    if not isinstance(net, RecurrentDerainNet):
        raise RainkitError(f"model '{model}' is not a deraining network")
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return Derainer(net, model, resolved.path, resolved.sha256, resolved.entry.name if resolved.entry else None,
                    dev, precision, tile, halo=halo)
