"""The Derainer: a loaded deraining model plus how to run it (an `InferenceEngine` that tiles)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rainkit.engine import TiledEngine
from rainkit.errors import RainkitError
from rainkit.models.recurrent import PooledStats, RecurrentDerainNet
from rainkit.tiling import run_tiled

# Context kept around each tile. The theoretical receptive radius of SAPNet is 390 px (six stages
# of 65), but the influence of far pixels decays fast. Measured on a 1024x768 photo with 256 px
# tiles and the official weights (bench/derain_tiling.py): halo 64 with whole-image pooling
# statistics gives 79 dB PSNR to the untiled float output, 64 dB on the 8-bit images written (at
# most 1 grey level apart). Earlier runs measured 58 dB (float) with tile-local pooling, and 82 dB
# for halo 128 at 1.6x the time.
DEFAULT_HALO = 64
DEFAULT_BLEND = 16
# Working memory of a whole-image forward pass per pixel and feature channel, fp32 (half that for
# 16-bit precisions): bench/derain_memory.py measured 1.16 GiB per megapixel of peak-RSS growth for
# SAPNet (width 32) on a 1.6 MP photo, 39 bytes per pixel and channel; 40 plus 64 bytes per pixel
# for the image, the output and their copies.
_BYTES_PER_PIXEL_CHANNEL = 40

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


class Derainer(TiledEngine):
    """A ready-to-run deraining model (SAPNet, PReNet). Build it with `load_derainer`.

    Large images run in tiles (`rainkit.tiling`): `halo` px of context (at most the network's
    receptive radius) and `blend` px of blending per side; SAPNet's channel attention gets the
    whole image's pooled means from a record sweep.
    """

    def __init__(self, model: RecurrentDerainNet, device: torch.device | str, *, halo: int = DEFAULT_HALO,
                 blend: int = DEFAULT_BLEND, **engine: Any) -> None:
        super().__init__(model, device, halo=halo, blend=blend, **engine)

    @classmethod
    def prepare_model(cls, model: nn.Module, arch: str, device: torch.device) -> RecurrentDerainNet:
        if not isinstance(model, RecurrentDerainNet):
            raise RainkitError(f"model '{arch}' is not a deraining network")
        return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model

    def bytes_per_pixel(self) -> int:
        per_channel = _BYTES_PER_PIXEL_CHANNEL if self.precision == "fp32" else _BYTES_PER_PIXEL_CHANNEL // 2
        return self.model.width * per_channel + 64

    def tile_margin(self) -> int:
        return self.halo + self.blend

    def _forward(self, x: torch.Tensor, pooled: PooledStats | None = None) -> torch.Tensor:
        x = x.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            return self.model(x, pooled=pooled).float()

    def forward_tile(self, index: int, x: torch.Tensor, pooled: PooledStats | None) -> torch.Tensor:
        """`rainkit.tiling.run_tiled`'s view of the network: one tile's input to its output."""
        return self._forward(x, pooled)

    def derain_tensor(self, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Derain a (1, 3, H, W) float tensor in [0, 1] on the CPU; returns the unclamped float output on the CPU."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RainkitError(f"expected a (1, 3, H, W) tensor, got {tuple(x.shape)}")
        if self.device.type == "cpu" and self.max_memory is None:
            tune_cpu_allocator()  # under a memory cap, glibc keeps returning freed maps: the tuned heap holds them
        _, _, height, width = x.shape
        tile = self.choose_tile(height, width)
        self.last_tile = tile
        if tile == 0:
            return self._forward(x).cpu()
        stats = PooledStats() if self.model.attention else None
        return run_tiled(self.forward_tile, x, tile=tile, halo=min(self.halo, self.model.receptive_radius()),
                         blend=self.blend, stats=stats, on_tile=on_tile)

    def derain(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Derain an H x W x 3 float32 RGB array in [0, 1]; returns H x W x 3 float32, not clamped."""
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return self.derain_tensor(x, on_tile)[0].numpy().transpose(1, 2, 0)


def load_derainer(model: str = "sapnet", weights: str | None = None, device: str = "auto", precision: str = "fp32",
                  tile: int | None = None, halo: int = DEFAULT_HALO, max_memory: int | str | None = None) -> Derainer:
    """Load a deraining model ready to use: `load_derainer("prenet", "prenet.rain100l").derain(rgb)`.
    `max_memory` ("3G") caps the process's memory: large images are tiled to stay under it."""
    return Derainer.load(model, weights, device=device, precision=precision, tile=tile, halo=halo,
                         max_memory=max_memory)
