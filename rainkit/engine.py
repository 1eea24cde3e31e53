"""The inference-engine base: one loaded model plus where and how it runs.

Every engine rainkit hands out (`Derainer`, `WeatherGenerator`, `Segmenter`, `YoloDetector`) is an
`InferenceEngine`: its model, the device it sits on, the precision its forward passes run in
(`autocast()`), what weights it was loaded from, and `describe()`, the record of all that which
batch commands write into sidecars and summaries. `load` builds one through
`rainkit.hub.load_model` (verified weights, strict keys). `TiledEngine` adds what the engines for
whole photos share: the tile size for an image, from the user's choice or the memory budget
(`rainkit.tiling`); `tune_cpu_allocator` the glibc settings their CPU passes run faster with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rainkit.errors import ParameterError, RainkitError

if TYPE_CHECKING:  # torch is imported on first use, so that importing an engine's module stays light
    import torch
    from torch import nn

    from rainkit.hub.weights import ResolvedWeights


class InferenceEngine:
    """A loaded model ready to run: `model` on `device`, forward passes in `precision`.

    `weights` is what `rainkit.hub.load_model` resolved (None for a model built in code, as in
    tests). An unknown device or a precision the device cannot run fails here, before any work.
    """

    arch: str = ""  # the registered architecture name, recorded by `describe`

    def __init__(self, model: nn.Module, device: torch.device | str, *, precision: str = "fp32",
                 weights: ResolvedWeights | None = None, arch: str | None = None) -> None:
        from rainkit.hub import resolve_device, resolve_precision

        self.model = model
        self.device = resolve_device(device)
        self._precision = resolve_precision(precision, self.device)
        self.precision = self._precision.name
        self.weights_path: Path | None = weights.path if weights is not None else None
        self.weights_sha256: str | None = weights.sha256 if weights is not None else None
        self.weights_name: str | None = weights.entry.name if weights is not None and weights.entry else None
        if arch is not None:
            self.arch = arch

    @classmethod
    def load(cls, arch: str, weights: str | Path | None, *, device: str | torch.device = "auto",
             precision: str = "fp32", **options: Any):
        """Resolve the device and precision, load verified weights into `arch` and build the engine."""
        from rainkit.hub import load_model, resolve_device, resolve_precision

        dev = resolve_device(device)
        resolve_precision(precision, dev)  # an unavailable precision fails before the weights are read
        model, resolved = load_model(arch, None if weights is None else str(weights), device=dev)
        return cls(cls.prepare_model(model, arch, dev), dev, precision=precision, weights=resolved, arch=arch,
                   **options)

    @classmethod
    def prepare_model(cls, model: nn.Module, arch: str, device: torch.device) -> nn.Module:
        """Check that a loaded network fits this engine and put it in the layout it runs fastest in."""
        return model

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def autocast(self):
        """A context manager running the forward passes inside it in this engine's precision."""
        return self._precision.autocast()

    def describe(self) -> dict:
        """What produced an output: model, weights (name, else path) and sha256, device, precision."""
        return {
            "model": self.arch,
            "weights": self.weights_name or (str(self.weights_path) if self.weights_path else None),
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
            "precision": self.precision,
        }


class TiledEngine(InferenceEngine, ABC):
    """An engine that runs large images in tiles.

    `tile`: None lets the engine choose from `memory_budget` (bytes of working memory; None: from
    available memory), 0 when the whole image fits; 0 forces the whole image; a positive value forces
    that tile side. `max_memory` (bytes, or a size such as "3G") caps the whole process instead: what it
    already holds and the image's own buffers are taken off before the tile is chosen. `last_plan` and
    `last_tile` are the plan and tile side the last image ran with (0: whole), `plan_line()` says it in words.
    """

    # Buffers of one image outside the network, per pixel: the caller's float image, its CHW copy, the output and
    # its blend weights, the output's HWC copy, and the encoded file.
    io_bytes_per_pixel = 64

    def __init__(self, model: nn.Module, device: torch.device | str, *, tile: int | None = None,
                 memory_budget: int | None = None, max_memory: int | str | None = None, **base: Any) -> None:
        super().__init__(model, device, **base)
        from rainkit.tiling import parse_memory_size

        if tile is not None and tile < 0:
            raise ParameterError("tile", f"must be 0 (off) or a positive size, got {tile}")
        self.tile = tile
        self.memory_budget = memory_budget
        self.max_memory = parse_memory_size(max_memory)
        self.last_plan = "whole"
        self.last_tile = 0
        # The single pass's maps kept in memory (None: all) and the bytes of the others in a temporary file, as the
        # last `single_pass_fits` planned them.
        self.last_spill: tuple[frozenset[str] | None, int] = (None, 0)
        self._single_pass = None

    @abstractmethod
    def bytes_per_pixel(self) -> int:
        """Working memory of a forward pass per pixel of its input, in this engine's precision."""

    @abstractmethod
    def tile_margin(self) -> int:
        """The context a tile carries on each side beyond its core (halo + blend)."""

    def choose_tile(self, height: int, width: int) -> int:
        """The tile side for an image: the user's, or the largest that fits the memory budget (0 = whole)."""
        from rainkit.tiling import tile_for_budget

        return tile_for_budget(height, width, self.tile, self.working_budget(height, width), self.device,
                               self.bytes_per_pixel(), self.tile_margin())

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the single-pass tiler's image-sized buffers (`rainkit.tiling.run_single_pass`)."""
        raise NotImplementedError(f"{type(self).__name__} has no single-pass program")

    def single_pass_plan(self):
        """The model's single-pass program (`model.tile_sweeps`) walked once: a `rainkit.tiling.SinglePassPlan`
        (sweeps, buffer bytes per image pixel, largest halo, coarsest stride)."""
        if self._single_pass is None:
            import torch

            from rainkit.tiling import plan_single_pass

            with torch.inference_mode():
                self._single_pass = plan_single_pass(self.model.tile_sweeps, self.storage_dtype, self.device)
        return self._single_pass

    def single_pass_bytes(self, height: int, width: int, tile: int) -> int:
        """Memory of a single pass: the whole-image buffers, and one tile's working memory per worker thread."""
        import torch

        plan = self.single_pass_plan()
        workers = torch.get_num_threads() if self.device.type == "cpu" else 1
        side = min(tile, max(height, width)) + 2 * plan.halo
        return int(height * width * plan.bytes_per_pixel) + workers * side * side * self.bytes_per_pixel()

    def single_pass_fits(self, height: int, width: int, tile: int, budget: int, spill: bool = True) -> bool:
        """Whether a single pass in `tile` px tiles fits `budget` bytes, and how (`last_spill`): all its maps in
        memory, or, on the CPU and with `spill`, those `rainkit.tiling.maps_in_memory` chooses with the others in a
        temporary file (`rainkit.tiling.SpilledMap`; the system's temporary directory must have room for them)."""
        import shutil
        import tempfile

        from rainkit.tiling import maps_in_memory, peak_bytes

        need = self.single_pass_bytes(height, width, tile)
        if need <= budget:
            self.last_spill = (None, 0)
            return True
        if not spill or self.device.type != "cpu":
            return False
        plan = self.single_pass_plan()
        tiles = need - int(height * width * plan.bytes_per_pixel)
        kept, spilled = maps_in_memory(plan, height * width, budget - tiles)
        outputs = height * width * peak_bytes(plan, plan.exact)
        if tiles + outputs > budget or shutil.disk_usage(tempfile.gettempdir()).free < spilled + (256 << 20):
            return False
        self.last_spill = (kept, spilled)
        return True

    def plan_line(self) -> str:
        """The last image's tiling for progress lines, e.g. "tiles of 256 px, single pass, 2.9 GiB of maps in a
        temporary file (under 3.0 GiB)"."""
        line = f"tiles of {self.last_tile} px, {'2 passes' if self.last_plan == 'two-pass' else 'single pass'}"
        spilled = self.last_spill[1]
        if self.last_plan == "single-pass" and spilled:
            size = f"{spilled / 2**30:.1f} GiB" if spilled >= 1 << 30 else f"{spilled / 2**20:.1f} MiB"
            line += f", {size} of maps in a temporary file"
        if self.max_memory:
            line += f" (under {self.max_memory / 2**30:.1f} GiB)"
        return line

    def working_budget(self, height: int, width: int) -> int | None:
        """Bytes the network may use on this image: `memory_budget`, or what `max_memory` leaves."""
        if self.max_memory is None:
            return self.memory_budget
        from rainkit.tiling import resident_bytes

        held, buffers = resident_bytes(), height * width * self.io_bytes_per_pixel
        left = self.max_memory - held - buffers
        smallest = (64 + 2 * self.tile_margin()) ** 2 * self.bytes_per_pixel()
        if left < smallest:
            raise RainkitError(f"the memory cap of {self.max_memory / 2**30:.2f} GiB is too little for a {width}x{height} "
                               f"image: the process holds {held / 2**30:.2f} GiB and the image's buffers take "
                               f"{buffers / 2**30:.2f} GiB, leaving less than the {smallest / 2**30:.2f} GiB the "
                               f"smallest tile needs")
        return left if self.memory_budget is None else min(left, self.memory_budget)


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
