"""The one tiler: tiled inference of fully convolutional networks, with whole-image statistics.

The image is split into a grid of core boxes that partition it. Each tile's output covers its
core plus a blend margin, and its input adds a halo of context on every side, so that pixels near
a tile edge see (almost) what they would see in the whole image. Overlapping outputs are blended
with linear ramps, so no seam can show. Only one tile at a time sits on the device.

Some layers depend on statistics of whole feature maps: SAPNet's channel attention pools each
map to its channel means, TPSeNCE's instance norm subtracts each map's mean and divides by its
standard deviation. A tile on its own sees only its own statistics, so the tiler runs in two
phases (`run_tiled`):

1. record: sweeps over the tiles in which every statistics layer not yet fixed adds the float64
   per-channel sums (and, for instance norm, sums of squares) of its input over the tile's
   *core* to a `TileStats` recorder; the cores partition the image, so each pixel counts once
   (at 1/2 or 1/4 resolution the core is scaled, which is exact when tiles start on multiples
   of the stride). After each sweep the recorded layers' whole-image statistics are fixed.
2. apply: every tile runs with the fixed statistics and its output is blended into the result.

How many sweeps the record phase takes is the network's choice. SAPNet records all of its layers
in one sweep, each tile pooling the layers after the first with its own means meanwhile (a
close approximation: 1 sweep instead of 60). TPSeNCE records one instance-norm layer per sweep,
the layers before it already fixed, so its statistics are exactly the whole image's (23 chained
normalisations make the one-sweep shortcut visibly wrong there; `rainkit.synth.tpsence`).

Also here: the memory-based choice of the tile size (`tile_for_budget`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class TileBox:
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 in image coordinates
    out: tuple[int, int, int, int]  # core + blend margin, clipped
    inp: tuple[int, int, int, int]  # out + halo, clipped

    def core_in_input(self) -> tuple[int, int, int, int]:
        """The core in the coordinates of the tile's input."""
        iy0, _, ix0, _ = self.inp
        y0, y1, x0, x1 = self.core
        return y0 - iy0, y1 - iy0, x0 - ix0, x1 - ix0


def _splits(length: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """Near-equal spans of at most about `tile` covering `length`; inner edges on multiples of `align`."""
    count = max(1, math.ceil(length / tile))
    edges = [int(e) * align for e in np.linspace(0, length // align, count + 1).round()]
    edges[-1] = length
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def plan_tiles(height: int, width: int, tile: int, halo: int, blend: int, align: int = 1) -> list[TileBox]:
    """Core boxes of about `tile` px partitioning the image, each with its blend margin and halo.

    With `align` > 1 the height, width, halo and blend must be multiples of it, and then every box
    starts and ends on multiples of it (networks that down-sample need that to tile exactly)."""
    if align > 1 and (height % align or width % align or halo % align or blend % align):
        raise ValueError(f"tiling aligned to {align} needs a size, halo and blend that are multiples of {align}")
    boxes = []
    for y0, y1 in _splits(height, tile, align):
        for x0, x1 in _splits(width, tile, align):
            oy0, oy1 = max(0, y0 - blend), min(height, y1 + blend)
            ox0, ox1 = max(0, x0 - blend), min(width, x1 + blend)
            iy0, iy1 = max(0, oy0 - halo), min(height, oy1 + halo)
            ix0, ix1 = max(0, ox0 - halo), min(width, ox1 + halo)
            boxes.append(TileBox((y0, y1, x0, x1), (oy0, oy1, ox0, ox1), (iy0, iy1, ix0, ix1)))
    return boxes


def blend_ramp(length: int, start: int, end: int, core_lo: int, core_hi: int, blend: int) -> np.ndarray:
    """1 inside the core, falling linearly to ~0 across the blend margin on sides that have a neighbour."""
    pos = np.arange(start, end, dtype=np.float32) + 0.5
    weight = np.ones(end - start, dtype=np.float32)
    if blend > 0:
        if core_lo > 0:
            weight = np.minimum(weight, np.clip((pos - (core_lo - blend)) / (2 * blend), 0.0, 1.0))
        if core_hi < length:
            weight = np.minimum(weight, np.clip(((core_hi + blend) - pos) / (2 * blend), 0.0, 1.0))
    return np.maximum(weight, 1e-6)


class TileStats:
    """The statistics-recorder interface: per-channel whole-image statistics of a network's
    statistics layers, gathered from tiles' cores and then applied to every tile.

    Layers are numbered by the order in which a forward pass reaches them (`start` resets the
    count, `next_layer` takes the next number) or by the caller. `record(k, x)` adds layer k's
    input over the current tile's core; `fix()` turns what was recorded into `mean[k]` (and, with
    `second_moment`, the biased variance `var[k]`), as float32 (N, C) tensors. Subclasses say how
    a layer uses them: `rainkit.models.recurrent.PooledStats` (SAPNet's pooled means) and
    `rainkit.synth.tpsence.NormStats` (instance-norm mean and variance). Without a tile
    (`begin_tile` not called) the region is the whole tensor.
    """

    second_moment = False

    def __init__(self) -> None:
        self.mean: dict[int, torch.Tensor] = {}
        self.var: dict[int, torch.Tensor] = {}
        self._sums: dict[int, torch.Tensor] = {}
        self._squares: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self._region: tuple[int, int, int, int] | None = None
        self._input_height = 0
        self._index = 0

    def begin_tile(self, box: TileBox) -> None:
        """The tile whose core the following records cover."""
        self._region = box.core_in_input()
        self._input_height = box.inp[1] - box.inp[0]

    def start(self) -> None:
        """A forward pass begins: its statistics layers are numbered from 0 again."""
        self._index = 0

    def next_layer(self) -> int:
        k = self._index
        self._index += 1
        return k

    def is_fixed(self, k: int) -> bool:
        return k in self.mean

    def record(self, k: int, x: torch.Tensor) -> None:
        """Add the per-channel sums of `x` (N, C, h, w) over the core (scaled to x's resolution) to layer k's."""
        if self._region is None:
            core = x
        else:
            stride = self._input_height // x.shape[2]
            y0, y1, x0, x1 = (edge // stride for edge in self._region)
            core = x[:, :, y0:y1, x0:x1]
        values = core.double()
        total = values.sum((2, 3)).cpu()
        self._sums[k] = self._sums[k] + total if k in self._sums else total
        if self.second_moment:
            square = values.pow(2).sum((2, 3)).cpu()
            self._squares[k] = self._squares[k] + square if k in self._squares else square
        self._counts[k] = self._counts.get(k, 0) + core.shape[2] * core.shape[3]

    def fix(self) -> None:
        """Make the recorded layers' statistics final: mean = S / n, var = Q / n - mean^2 (biased, as IN)."""
        for k, total in self._sums.items():
            mean = total / self._counts[k]
            self.mean[k] = mean.float()
            if self.second_moment:
                self.var[k] = (self._squares[k] / self._counts[k] - mean ** 2).clamp_min(0).float()
        self._sums, self._squares, self._counts = {}, {}, {}


TileForward = Callable[[int, torch.Tensor, Optional[TileStats]], Optional[torch.Tensor]]


def run_tiled(forward: TileForward, image: torch.Tensor, *, tile: int, halo: int, blend: int, align: int = 1,
              stats: TileStats | None = None, record_sweeps: int = 1,
              on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run a network over tiles of `image` (1, C, H, W, on the CPU); returns the blended (1, C', H, W)
    float32 output on the CPU.

    `forward(index, tile_input, stats)` gets the tile's index in the plan, its input (a CPU view of
    `image`; moving it to the device is the forward's job) and `stats`, and returns the network's
    output for that input (any device and float dtype); in the record sweeps its result is ignored
    and it may stop early and return None. With
    `stats`, `record_sweeps` sweeps record (module doc) and `stats.fix()` follows each; without,
    every tile uses its own statistics. `on_tile(done, total)` reports each step of every sweep.
    """
    _, _, height, width = image.shape
    boxes = plan_tiles(height, width, tile, halo, blend, align)
    sweeps = record_sweeps if stats is not None else 0
    total = (sweeps + 1) * len(boxes)
    step = 0

    def tile_input(box: TileBox) -> torch.Tensor:
        iy0, iy1, ix0, ix1 = box.inp
        return image[:, :, iy0:iy1, ix0:ix1]

    for _ in range(sweeps):
        for index, box in enumerate(boxes):
            stats.begin_tile(box)
            forward(index, tile_input(box), stats)
            step += 1
            if on_tile:
                on_tile(step, total)
        stats.fix()
    output: np.ndarray | None = None
    weights = np.zeros((height, width), dtype=np.float32) if blend else None
    for index, box in enumerate(boxes):
        iy0, _, ix0, _ = box.inp
        oy0, oy1, ox0, ox1 = box.out
        y0, y1, x0, x1 = box.core
        result = forward(index, tile_input(box), stats)
        piece = result[0, :, oy0 - iy0:oy1 - iy0, ox0 - ix0:ox1 - ix0].float().cpu().numpy()
        if output is None:
            output = np.zeros((piece.shape[0], height, width), dtype=np.float32)
        if blend:
            w2 = blend_ramp(height, oy0, oy1, y0, y1, blend)[:, None] * blend_ramp(width, ox0, ox1, x0, x1, blend)[None, :]
            output[:, oy0:oy1, ox0:ox1] += piece * w2
            weights[oy0:oy1, ox0:ox1] += w2
        else:
            output[:, oy0:oy1, ox0:ox1] = piece
        step += 1
        if on_tile:
            on_tile(step, total)
    if blend:
        output /= weights
    return torch.from_numpy(output)[None]


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory_size(text: str | int | None) -> int | None:
    """`3G`, `512M`, `1.5GiB`, `2gb` or a number of bytes -> bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        return text
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match:
        from rainkit.errors import ParameterError

        raise ParameterError("max_memory", f"'{text}' is not a size (e.g. 3G, 512M, 1.5GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def resident_bytes() -> int:
    """This process's resident memory now (0 when it cannot be read)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the host's available RAM (8 GiB when it cannot be read)."""
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
    free GPU memory; on the CPU an image runs whole when its estimate fits 35% of available RAM (whole
    images are much cheaper per pixel while they fit: bench/derain_scaling.py, 1 MP whole 7.6 s/MP, in
    807 px tiles 19 s/MP), and tiles keep to 1.2 GB of working memory (large tiles with glibc's tuned heap
    use about twice their estimate: a 12 MP photo in tiles sized to 35% of RAM was killed for memory).
    `max_memory` holds a process to less."""
    if tile is not None:
        return tile if 0 < tile < max(height, width) else 0
    budget = whole_budget = memory_budget
    if budget is None:
        available = available_memory_bytes(device)
        if device.type == "cuda":
            budget = whole_budget = int(available * 0.5)
        else:
            whole_budget = int(available * 0.35)
            budget = min(whole_budget, 1200 << 20)
    if height * width * bytes_per_pixel <= whole_budget:
        return 0
    return max(64, int(math.sqrt(budget / bytes_per_pixel)) - 2 * margin)
