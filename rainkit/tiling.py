"""The one tiler: tiled inference of fully convolutional networks, with whole-image statistics.

The image is split into a grid of core boxes that partition it. Each tile's output covers its
core plus a blend margin, and its input adds a halo of context on every side, so that pixels near
a tile edge see (almost) what they would see in the whole image. Overlapping outputs are blended
with linear ramps, so no seam can show. Only one tile at a time sits on the device.

Some layers depend on statistics of whole feature maps: SAPNet's channel attention pools each
map to its channel means, TPSeNCE's instance norm subtracts each map's mean and divides by its
standard deviation. A tile on its own sees only its own statistics. The first mechanism,
`run_tiled`, runs the whole network per tile (with a halo of context) in two phases:

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

The second mechanism, `run_single_pass`, is exact and runs every layer once: the network is given
as a program of sweeps (`Sweep`), each running a few of its layers over all the tiles with a halo
equal to those layers' own receptive growth (a 3x3 convolution of dilation d needs d pixels),
reading and writing whole-image buffers (`storage` dtype), and adding up the per-channel sums of
the maps a statistics layer pools; the program gets the whole-image means after the sweep, before
the next one needs them. Every output pixel is then the whole-image forward's, up to
floating-point summation order and the rounding of the stored maps, and every convolution runs on
tile-sized data (on the CPU one tile per core, a thread each). SAPNet and PReNet give their
program (`RecurrentDerainNet.tile_sweeps`); `plan_single_pass` counts its sweeps and its buffers'
bytes per pixel for the memory budget.

Also here: the memory-based choice of the tile size (`tile_for_budget`).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generator, Optional

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


@dataclass(frozen=True)
class Sweep:
    """One pass of a single-pass program (`run_single_pass`) over all the tiles.

    For each tile, `run` gets a private copy (channels-last; float32, or the storage dtype under autocast to that
    type) of every buffer in `reads` over the tile's core plus `halo` px per side (clipped to the image), and
    returns the maps named in `writes` at that same size; the executor keeps their cores. `halo` must cover the
    receptive growth of what `run` does (a convolution of dilation d: d px), so the cores are exact. `writes` gives
    each map's channel count; a map that is also read may be written in place only when `run` reads it pointwise.
    `pooled` names writes whose per-channel whole-image means the program receives after the sweep; `exact` names
    writes kept at float32 whatever the storage dtype; `frees` names buffers no later sweep reads.
    """

    reads: tuple[str, ...]
    writes: dict[str, int]
    run: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    halo: int
    pooled: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()
    frees: tuple[str, ...] = ()


# A single-pass program: a generator that yields sweeps, is sent the pooled means ({name: (1, C) float32})
# after each, and returns the name of the output buffer.
SweepProgram = Generator[Sweep, dict, str]


@dataclass(frozen=True)
class SinglePassPlan:
    sweeps: int  # passes over the tiles
    bytes_per_pixel: int  # the program's whole-image buffers at their peak, per image pixel
    halo: int  # the largest halo of a sweep


def plan_single_pass(program: Callable[[], SweepProgram], storage: torch.dtype,
                     device: torch.device | str = "cpu") -> SinglePassPlan:
    """Walk a program (`program()` makes it) without computing, zero means on `device` standing in for the pooled
    ones: its sweep count, the peak bytes per pixel of the buffers it allocates (the inputs it is given are not
    counted) and its largest halo."""
    item = torch.empty((), dtype=storage).element_size()
    live: dict[str, int] = {}
    peak = sweeps = halo = 0
    steps = program()
    sweep = next(steps)
    while sweep is not None:
        sweeps += 1
        halo = max(halo, sweep.halo)
        for name, channels in sweep.writes.items():
            live[name] = channels * (4 if name in sweep.exact else item)
        peak = max(peak, sum(live.values()))
        for name in sweep.frees:
            live.pop(name, None)
        sweep, _ = _advance(steps, {name: torch.zeros(1, sweep.writes[name], device=device) for name in sweep.pooled})
    return SinglePassPlan(sweeps, peak, halo)


def _advance(steps: SweepProgram, means: dict) -> tuple[Sweep | None, str | None]:
    """Send a program the means of its last sweep: (its next sweep, None), or (None, its output's name) at the end."""
    try:
        return steps.send(means), None
    except StopIteration as finished:
        return None, finished.value


def run_single_pass(program: Callable[[], SweepProgram], inputs: dict[str, torch.Tensor], *, tile: int,
                    storage: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    workers: int | None = None, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run a single-pass program (module doc; `program()` makes it) over tiles of about `tile` px; returns its
    output buffer, float32 on `device`.

    `inputs` are the starting buffers (1, C, H, W), kept as given. Buffers the program writes live on `device`,
    channels-last, at `storage` dtype (except its `exact` writes: float32); freed ones are reused. Channel sums are
    over the cores of the maps as computed (before they are rounded to `storage`): float32 within a tile's rows,
    float64 above, added in tile order.

    On the CPU the tiles of a sweep run on `workers` threads (default: torch's intra-op thread count), each tile on
    one core: small convolutions split over cores spend more time waiting for each other than computing, the more
    so when other processes keep a core busy. The tiles run in the caller's grad, inference and autocast mode.
    `on_tile(done, total)` reports every tile of every sweep.
    """
    device = torch.device(device)
    _, _, height, width = next(iter(inputs.values())).shape
    cores = [(y0, y1, x0, x1) for y0, y1 in _splits(height, tile) for x0, x1 in _splits(width, tile)]
    total = plan_single_pass(program, storage, device).sweeps * len(cores) if on_tile else 0
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(1, min(workers, len(cores)))
    buffers: dict[str, torch.Tensor] = dict(inputs)
    spare: list[torch.Tensor] = []
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))

    def allocate(channels: int, dtype: torch.dtype) -> torch.Tensor:
        for index, buffer in enumerate(spare):
            if buffer.shape[1] == channels and buffer.dtype == dtype:
                return spare.pop(index)
        return torch.empty((1, channels, height, width), dtype=dtype, device=device, memory_format=torch.channels_last)

    def load(buffer: torch.Tensor, region: tuple[int, int, int, int]) -> torch.Tensor:
        ry0, ry1, rx0, rx1 = region
        view = buffer[:, :, ry0:ry1, rx0:rx1]
        # Under autocast to the storage's own 16-bit type the maps stay in it, as in the whole-image forward: a
        # float32 copy would be converted back by every convolution (bf16 on the CPU: a third of the time in copies).
        dtype = buffer.dtype if autocast[0] and buffer.dtype == autocast[1] else torch.float32
        copy = torch.empty(view.shape, dtype=dtype, device=device, memory_format=torch.channels_last)
        # Copied as the NHWC arrays both are (here and in the writes): twice as fast on the CPU as copying the
        # NCHW views.
        copy.permute(0, 2, 3, 1).copy_(view.permute(0, 2, 3, 1))
        return copy

    def run_tile(sweep: Sweep, core: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        """One tile of a sweep: its cores written into the buffers; returns the pooled maps' channel sums."""
        y0, y1, x0, x1 = core
        region = (max(0, y0 - sweep.halo), min(height, y1 + sweep.halo),
                  max(0, x0 - sweep.halo), min(width, x1 + sweep.halo))
        cy0, cx0 = y0 - region[0], x0 - region[2]
        sums = {}
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
            outputs = sweep.run({name: load(buffers[name], region) for name in sweep.reads})
            for name, value in outputs.items():
                piece = value[:, :, cy0:cy0 + y1 - y0, cx0:cx0 + x1 - x0]
                if name in sweep.pooled:
                    # Rows first, then columns: 30 times faster than one float64 reduction over both (channels-last);
                    # a 16-bit piece converted first, 3 times faster than a reduction that converts as it sums.
                    sums[name] = piece.permute(0, 2, 3, 1).float().sum(2).sum(1, dtype=torch.float64)
                buffers[name][:, :, y0:y1, x0:x1].permute(0, 2, 3, 1).copy_(piece.permute(0, 2, 3, 1))
        return sums

    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    done = 0
    try:
        steps = program()
        sweep, result = next(steps), None
        while sweep is not None:
            for name, channels in sweep.writes.items():
                if name not in buffers:
                    buffers[name] = allocate(channels, torch.float32 if name in sweep.exact else storage)
            totals = {name: torch.zeros(1, sweep.writes[name], dtype=torch.float64, device=device)
                      for name in sweep.pooled}
            tiles = (pool.map(run_tile, [sweep] * len(cores), cores) if pool is not None
                     else (run_tile(sweep, core) for core in cores))
            for sums in tiles:  # in tile order, whichever thread ran it: the same sums every run
                for name, value in sums.items():
                    totals[name] += value
                done += 1
                if on_tile:
                    on_tile(done, total)
            for name in sweep.frees:
                freed = buffers.pop(name)
                if name not in inputs:
                    spare.append(freed)
            means = {name: (summed / (height * width)).float() for name, summed in totals.items()}
            sweep, result = _advance(steps, means)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return buffers[result].float()


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


def memory_budgets(memory_budget: int | None, device: torch.device) -> tuple[int, int]:
    """(whole, tiles): the bytes a pass over whole-image buffers may take, and the working memory of the two-pass
    tiler's tiles. A given `memory_budget` is both. Without one: half the free GPU memory for both; on the CPU
    35% of available RAM for whole images, and 1.2 GB for tiles (large tiles with glibc's tuned heap use about
    twice their estimate: a 12 MP photo in tiles sized to 35% of RAM was killed for memory)."""
    if memory_budget is not None:
        return memory_budget, memory_budget
    available = available_memory_bytes(device)
    if device.type == "cuda":
        return int(available * 0.5), int(available * 0.5)
    whole = int(available * 0.35)
    return whole, min(whole, 1200 << 20)


def tile_for_budget(height: int, width: int, tile: int | None, memory_budget: int | None, device: torch.device,
                    bytes_per_pixel: int, margin: int) -> int:
    """The user's tile, or the largest square tile whose working memory fits the budget (0 = whole image).

    `margin` is the context each tile carries on a side (halo + blend). The image runs whole when its estimate
    fits the whole-image budget (`memory_budgets`: whole images are much cheaper per pixel than the two-pass
    tiler's tiles while they fit: bench/derain_scaling.py, 1 MP whole 7.6 s/MP, in 807 px tiles 19 s/MP).
    `max_memory` holds a process to less."""
    if tile is not None:
        return tile if 0 < tile < max(height, width) else 0
    whole_budget, budget = memory_budgets(memory_budget, device)
    if height * width * bytes_per_pixel <= whole_budget:
        return 0
    return max(64, int(math.sqrt(budget / bytes_per_pixel)) - 2 * margin)
