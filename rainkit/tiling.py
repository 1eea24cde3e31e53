"""The one tiler: tiled inference of fully convolutional networks, with whole-image statistics.

The image is split into a grid of core boxes that partition it. Each tile's output covers its
core plus a blend margin, and its input adds a halo of context on every side, so that pixels near
a tile edge see (almost) what they would see in the whole image. Overlapping outputs are blended
with linear ramps, so no seam can show. Only one tile at a time sits on the device.

Some layers depend on statistics of whole feature maps: SAPNet's channel attention pools each
map to its channel means, TPSeNCE's instance norm subtracts each map's mean and divides by its
standard deviation. A tile on its own sees only its own statistics. Two mechanisms give the
tiles the whole image's.

The first, `run_single_pass`, is exact and runs every layer once: the network is given as a
program of sweeps (`Sweep`), each running a few of its layers over all the tiles with a halo
equal to those layers' own receptive growth (a 3x3 convolution of dilation d needs d pixels),
reading and writing whole-image buffers (`storage` dtype; at the image's resolution or at 1/2,
1/4, ... of it), and adding up the float64 per-channel sums of the maps a statistics layer needs
(`pooled`: means; `moments`: means and variances); the program gets the whole-image statistics
after the sweep, before the next one needs them. Every output pixel is then the whole-image
forward's, up to floating-point summation order and the rounding of the stored maps, and every
convolution runs on tile-sized data (on the CPU one tile per core, a thread each). SAPNet and
PReNet give their program (`RecurrentDerainNet.tile_sweeps`), TPSeNCE's generator its own
(`ResnetGenerator.tile_sweeps`: one sweep per instance norm); `plan_single_pass` counts a
program's sweeps and its buffers' bytes per image pixel for the memory budget. When the buffers do not
fit the memory a process may take (a 12 MP photo under `--max-memory 3G`), `maps_in_memory` chooses the
maps a sweep touches most to keep in memory and the rest live in an unlinked temporary file (`SpilledMap`),
read and written a tile at a time: the pass stays exact and single, at the cost of copies through the kernel's
page cache.

The second, `run_tiled`, runs the whole network per tile (with a halo of context) in two phases,
for the derainer when the single pass's buffers do not fit its memory budget:

1. record: a sweep over the tiles in which every statistics layer adds the float64 per-channel
   sums of its input over the tile's *core* to a `TileStats` recorder (the cores partition the
   image, so each pixel counts once), each tile pooling with its own means meanwhile (a close
   approximation for SAPNet: 1 sweep instead of 60); then the whole-image means are fixed.
2. apply: every tile runs with the fixed statistics and its output is blended into the result.

Also here: the memory-based choice of the tile size (`tile_for_budget`).
"""

from __future__ import annotations

import errno
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


def plan_tiles(height: int, width: int, tile: int, halo: int, blend: int) -> list[TileBox]:
    """Core boxes of about `tile` px partitioning the image, each with its blend margin and halo."""
    boxes = []
    for y0, y1 in _splits(height, tile):
        for x0, x1 in _splits(width, tile):
            oy0, oy1 = max(0, y0 - blend), min(height, y1 + blend)
            ox0, ox1 = max(0, x0 - blend), min(width, x1 + blend)
            iy0, iy1 = max(0, oy0 - halo), min(height, oy1 + halo)
            ix0, ix1 = max(0, ox0 - halo), min(width, ox1 + halo)
            boxes.append(TileBox((y0, y1, x0, x1), (oy0, oy1, ox0, ox1), (iy0, iy1, ix0, ix1)))
    return boxes


def tile_cores(height: int, width: int, tile: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """The single pass's tiles: core boxes (y0, y1, x0, x1) of about `tile` px partitioning the image, row by row,
    their inner edges on multiples of `align`."""
    return [(y0, y1, x0, x1) for y0, y1 in _splits(height, tile, align) for x0, x1 in _splits(width, tile, align)]


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
    """The statistics-recorder interface of `run_tiled`: per-channel whole-image means of a network's
    statistics layers, gathered from tiles' cores and then applied to every tile.

    Layers are numbered by the order in which a forward pass reaches them (`start` resets the
    count, `next_layer` takes the next number) or by the caller. `record(k, x)` adds layer k's
    input over the current tile's core; `fix()` turns what was recorded into `mean[k]`, a float32
    (N, C) tensor. Subclasses say how a layer uses them (`rainkit.models.recurrent.PooledStats`,
    SAPNet's pooled means). Without a tile (`begin_tile` not called) the region is the whole tensor.
    """

    def __init__(self) -> None:
        self.mean: dict[int, torch.Tensor] = {}
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self._region: tuple[int, int, int, int] | None = None
        self._index = 0

    def begin_tile(self, box: TileBox) -> None:
        """The tile whose core the following records cover."""
        self._region = box.core_in_input()

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
        """Add the per-channel sums of `x` (N, C, h, w) over the tile's core to layer k's."""
        if self._region is None:
            core = x
        else:
            y0, y1, x0, x1 = self._region
            core = x[:, :, y0:y1, x0:x1]
        total = core.double().sum((2, 3)).cpu()
        self._sums[k] = self._sums[k] + total if k in self._sums else total
        self._counts[k] = self._counts.get(k, 0) + core.shape[2] * core.shape[3]

    def fix(self) -> None:
        """Make the recorded layers' means final."""
        for k, total in self._sums.items():
            self.mean[k] = (total / self._counts[k]).float()
        self._sums, self._counts = {}, {}


TileForward = Callable[[int, torch.Tensor, Optional[TileStats]], torch.Tensor]


def run_tiled(forward: TileForward, image: torch.Tensor, *, tile: int, halo: int, blend: int,
              stats: TileStats | None = None, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run a network over tiles of `image` (1, C, H, W, on the CPU); returns the blended (1, C', H, W)
    float32 output on the CPU.

    `forward(index, tile_input, stats)` gets the tile's index in the plan, its input (a CPU view of
    `image`; moving it to the device is the forward's job) and `stats`, and returns the network's
    output for that input (any device and float dtype; ignored in the record sweep). With `stats`,
    a record sweep comes first (module doc) and `stats.fix()` follows it; without, every tile uses
    its own statistics. `on_tile(done, total)` reports each step of every sweep.
    """
    _, _, height, width = image.shape
    boxes = plan_tiles(height, width, tile, halo, blend)
    sweeps = 1 if stats is not None else 0
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
    returns the maps named in `writes` over that same region; the executor keeps their cores. `halo` must cover the
    receptive growth of what `run` does (a convolution of dilation d: d px), so the cores are exact. `writes` gives
    each map's channel count; a map that is also read may be written in place only when `run` reads it pointwise.

    Buffers may be coarser than the image: `strides` gives a written map's stride s (one pixel per
    s x s image pixels; 1 when not named), and a map at stride s is read and written over the region
    and core divided by s. Cores and halos are in image pixels; the executor rounds `halo` up to the
    coarsest stride the sweep reads or writes, and tile edges fall on multiples of the program's
    coarsest stride (`SinglePassPlan.stride`), so every region is whole pixels at every stride.

    At the image border the region is clipped, and `run` pads there as the whole-image forward does:
    a "same"-size layer (a padded convolution, a blur with its own padding, a stride-2 step) pads every
    side of the region it is given. Where the region's edge is the image's, that is the whole forward's
    padding whatever its mode (zeros, reflection, replication); on sides inside the image the padded
    values are wrong, but they reach no further into the region than the layer's receptive growth,
    which the halo covers.

    `pooled` names writes whose per-channel whole-image means the program receives after the sweep;
    `moments` names writes whose per-channel whole-image mean and biased variance it receives (an
    instance norm's statistics of its input); `exact` names writes kept at float32 whatever the
    storage dtype; `frees` names buffers no later sweep reads.
    """

    reads: tuple[str, ...]
    writes: dict[str, int]
    run: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    halo: int
    pooled: tuple[str, ...] = ()
    moments: tuple[str, ...] = ()
    strides: dict[str, int] = field(default_factory=dict)
    exact: tuple[str, ...] = ()
    frees: tuple[str, ...] = ()


# A single-pass program: a generator that yields sweeps, is sent the statistics of each ({name: (1, C) float32 mean}
# for its pooled maps, {name: ((1, C) mean, (1, C) variance)} for its moments) after it, and returns the name of the
# output buffer.
SweepProgram = Generator[Sweep, dict, str]


@dataclass(frozen=True)
class SinglePassPlan:
    sweeps: int  # passes over the tiles
    bytes_per_pixel: float  # the program's whole-image buffers at their peak, per image pixel
    halo: int  # the largest halo of a sweep, in image pixels, as run (rounded up to the sweep's strides)
    stride: int  # the coarsest buffer stride: tile edges fall on its multiples, and the image's sides must be
    # multiples of it.
    # For `maps_in_memory`: each map's bytes per image pixel, how many sweeps read or write it, and the maps alive
    # in each sweep (the ones it touches and the ones kept for later sweeps).
    map_bytes: dict = field(default_factory=dict)
    accesses: dict = field(default_factory=dict)
    alive: tuple = ()
    exact: frozenset = frozenset()  # the maps kept in float32 whatever the storage


def _sweep_halo(sweep: Sweep, strides: dict[str, int]) -> int:
    """The sweep's halo rounded up to the coarsest stride it reads or writes."""
    coarsest = max([strides.get(name, 1) for name in sweep.reads] + [sweep.strides.get(name, 1) for name in sweep.writes])
    return -(-sweep.halo // coarsest) * coarsest


def _statistics_stand_ins(sweep: Sweep, device: torch.device | str) -> dict:
    """Zero statistics in the shapes the program is sent, for walking it without computing."""
    zeros = {name: torch.zeros(1, sweep.writes[name], device=device) for name in sweep.pooled + sweep.moments}
    return {name: (value if name in sweep.pooled else (value, value)) for name, value in zeros.items()}


def plan_single_pass(program: Callable[[], SweepProgram], storage: torch.dtype,
                     device: torch.device | str = "cpu") -> SinglePassPlan:
    """Walk a program (`program()` makes it) without computing, zero statistics on `device` standing in for the
    whole image's: its sweep count, the peak bytes per image pixel of the buffers it allocates (a map at stride s
    counts 1 / s^2 of its bytes per pixel; the inputs it is given are not counted), its largest halo, its
    coarsest stride, and for `maps_in_memory` each map's size, uses and lifetime."""
    item = torch.empty((), dtype=storage).element_size()
    live: dict[str, float] = {}
    strides: dict[str, int] = {}
    map_bytes: dict[str, float] = {}
    accesses: dict[str, int] = {}
    alive: list[frozenset[str]] = []
    exact: set[str] = set()
    peak = 0.0
    sweeps = halo = 0
    coarsest = 1
    steps = program()
    sweep = next(steps)
    while sweep is not None:
        sweeps += 1
        halo = max(halo, _sweep_halo(sweep, strides))
        for name, channels in sweep.writes.items():
            strides[name] = stride = sweep.strides.get(name, 1)
            coarsest = max(coarsest, stride)
            live[name] = map_bytes[name] = channels * (4 if name in sweep.exact else item) / stride ** 2
        exact.update(sweep.exact)
        for name in set(sweep.reads) | set(sweep.writes):
            accesses[name] = accesses.get(name, 0) + 1
        alive.append(frozenset(live))
        peak = max(peak, sum(live.values()))
        for name in sweep.frees:
            live.pop(name, None)
        sweep, _ = _advance(steps, _statistics_stand_ins(sweep, device))
    return SinglePassPlan(sweeps, peak, halo, coarsest, map_bytes, accesses, tuple(alive), frozenset(exact))


def maps_in_memory(plan: SinglePassPlan, pixels: int, memory: int) -> tuple[frozenset[str], int]:
    """Which of a single pass's maps to keep in memory when `memory` bytes must hold them for an image of `pixels`
    pixels: (the names kept, the peak bytes of the others, which `run_single_pass` keeps in a temporary file).

    The float32 ("exact") maps, the program's outputs, are always kept. Of the others, the maps the most sweeps
    read or write come first (for SAPNet the residual blocks' y1 and y2, touched by 10 sweeps a stage, before the
    block inputs, c and h), each kept when the peak of the kept maps alive together still fits."""
    kept = set(plan.exact)
    for name in sorted(set(plan.map_bytes) - kept, key=lambda name: (-plan.accesses[name], plan.map_bytes[name], name)):
        if peak_bytes(plan, kept | {name}) * pixels <= memory:
            kept.add(name)
    return frozenset(kept), int(peak_bytes(plan, set(plan.map_bytes) - kept) * pixels)


def peak_bytes(plan: SinglePassPlan, names: set[str] | frozenset[str]) -> float:
    """The peak bytes per image pixel of the maps `names` alive together in the sweeps of `plan`."""
    return max((sum(plan.map_bytes[name] for name in alive if name in names) for alive in plan.alive), default=0.0)


def _advance(steps: SweepProgram, statistics: dict) -> tuple[Sweep | None, str | None]:
    """Send a program the statistics of its last sweep: (its next sweep, None), or (None, its output's name) at the
    end."""
    try:
        return steps.send(statistics), None
    except StopIteration as finished:
        return None, finished.value


def _channel_sums(piece: torch.Tensor) -> torch.Tensor:
    """Per-channel sums (1, C) of a (1, C, h, w) map as float64: rows in float32, then the row sums in float64 (30
    times faster on channels-last maps than one float64 reduction over both); a 16-bit map converted first, 3 times
    faster than a reduction that converts as it sums."""
    return piece.permute(0, 2, 3, 1).float().sum(2).sum(1, dtype=torch.float64)


def _channel_moments(piece: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """Per-channel sums of x and x^2 of a (1, C, h, w) map, (2, C) float64.

    Both are summed about a shift c, the map's first pixel, and shifted back (sum x^2 = sum (x - c)^2 +
    2 c sum (x - c) + n c^2), so that their float32 row sums keep their precision where a channel's mean is large
    against its spread; `rows` rows at a time, so that the deviations stay in the cache (3 times faster than one
    pass over a map of a 256 px tile)."""
    pixels = piece.permute(0, 2, 3, 1)[0].float()  # h, w, C
    shift = pixels[0, 0].clone()
    first = torch.zeros(pixels.shape[2], dtype=torch.float64, device=piece.device)
    second = torch.zeros_like(first)
    for row in range(0, pixels.shape[0], rows):
        deviations = pixels[row:row + rows] - shift
        first += deviations.sum(1, dtype=torch.float32).sum(0, dtype=torch.float64)
        second += deviations.square_().sum(1, dtype=torch.float32).sum(0, dtype=torch.float64)
    count = pixels.shape[0] * pixels.shape[1]
    c = shift.double()
    return torch.stack((first + count * c, second + 2 * c * first + count * c * c))


class SpilledMap:
    """A whole-image map (1, C, H, W) of a single pass kept in an unlinked temporary file instead of memory
    (`run_single_pass`'s `in_memory`).

    The file holds the map's pixels row by row, channels innermost (the NHWC order of the channels-last maps in
    memory), and a tile reads or writes its rows with positional I/O, which is safe from several threads. The
    process's resident memory holds only tiles; the file's pages sit in the kernel's page cache, which can write
    them to disk when memory is short. The file has no name, so nothing is left behind, even by a killed process.
    """

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, directory: str | None = None) -> None:
        import tempfile

        self.shape, self.dtype = shape, dtype
        self.directory = directory or tempfile.gettempdir()
        _, channels, height, width = shape
        self._pixel_bytes = channels * torch.empty((), dtype=dtype).element_size()
        self._row_bytes = width * self._pixel_bytes
        self._file = tempfile.TemporaryFile(dir=directory)
        self._fd = self._file.fileno()
        os.ftruncate(self._fd, height * self._row_bytes)

    def close(self) -> None:
        self._file.close()

    def _rows(self, pixels: torch.Tensor, y0: int, x0: int):
        """(row's bytes as a writable numpy view, its offset in the file) for each row of an (h, w, C) array."""
        raw = pixels.view(torch.uint8).numpy().reshape(pixels.shape[0], -1)
        for row in range(raw.shape[0]):
            yield raw[row], (y0 + row) * self._row_bytes + x0 * self._pixel_bytes

    def read(self, region: tuple[int, int, int, int]) -> torch.Tensor:
        """The map over `region` (y0, y1, x0, x1): a new (1, C, h, w) channels-last tensor of the map's dtype."""
        y0, y1, x0, x1 = region
        pixels = torch.empty((y1 - y0, x1 - x0, self.shape[1]), dtype=self.dtype)
        for row, offset in self._rows(pixels, y0, x0):
            if os.preadv(self._fd, [row], offset) != row.nbytes:
                raise OSError(f"short read from the temporary file of a spilled map at byte {offset}")
        return pixels[None].permute(0, 3, 1, 2)

    def write(self, core: tuple[int, int, int, int], piece: torch.Tensor) -> None:
        """Store `piece` (1, C, h, w) over `core` (y0, y1, x0, x1), converted to the map's dtype."""
        y0, _, x0, _ = core
        pixels = piece[0].permute(1, 2, 0).to(self.dtype).contiguous()
        for row, offset in self._rows(pixels, y0, x0):
            if os.pwritev(self._fd, [row], offset) != row.nbytes:
                raise OSError(errno.ENOSPC, f"no room left in {self.directory} for the single pass's spilled maps")


def run_single_pass(program: Callable[[], SweepProgram], inputs: dict[str, torch.Tensor], *, tile: int,
                    storage: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    workers: int | None = None, on_tile: Callable[[int, int], None] | None = None,
                    in_memory: frozenset[str] | None = None, spill_dir: str | None = None) -> torch.Tensor:
    """Run a single-pass program (module doc; `program()` makes it) over tiles of about `tile` px; returns its
    output buffer, float32 on `device`.

    `inputs` are the starting buffers (1, C, H, W), at the image's resolution, kept as given; H and W must be
    multiples of the program's coarsest stride. Buffers the program writes live on `device`, channels-last, at
    `storage` dtype (except its `exact` writes: float32); freed ones are reused for maps of their shape.
    Statistics are over the cores of the maps as computed (before they are rounded to `storage`): sums in float32
    within a tile's rows, float64 above, added in tile order.

    On the CPU the tiles of a sweep run on `workers` threads (default: torch's intra-op thread count), each tile on
    one core: small convolutions split over cores spend more time waiting for each other than computing, the more
    so when other processes keep a core busy. The tiles run in the caller's grad, inference and autocast mode.
    `on_tile(done, total)` reports every tile of every sweep.

    `in_memory` (CPU only; `maps_in_memory` chooses it) names the maps kept in memory; the others are `SpilledMap`s
    in `spill_dir` (default: the system's temporary directory). None keeps all in memory.
    """
    device = torch.device(device)
    _, _, height, width = next(iter(inputs.values())).shape
    plan = plan_single_pass(program, storage, device)
    if height % plan.stride or width % plan.stride:
        raise ValueError(f"a program with buffers at stride {plan.stride} needs an image whose sides are multiples of "
                         f"{plan.stride}, got {width}x{height}")
    cores = tile_cores(height, width, tile, plan.stride)
    total = plan.sweeps * len(cores)
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(1, min(workers, len(cores)))
    buffers: dict[str, torch.Tensor] = dict(inputs)
    strides = {name: 1 for name in inputs}
    spare: list[torch.Tensor] = []
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))

    if in_memory is not None and device.type != "cpu":
        raise ValueError("maps are spilled to a file only from the CPU")

    def allocate(name: str, channels: int, dtype: torch.dtype, stride: int) -> torch.Tensor | SpilledMap:
        shape = (1, channels, height // stride, width // stride)
        spilled = in_memory is not None and name not in in_memory
        for index, buffer in enumerate(spare):
            if tuple(buffer.shape) == shape and buffer.dtype == dtype and isinstance(buffer, SpilledMap) == spilled:
                return spare.pop(index)
        # None fits: the program has moved on to maps of another shape (another stride or width), and the spares
        # would hold their memory to the end (TPSeNCE's full-resolution maps through its whole trunk).
        release(spare)
        if spilled:
            return SpilledMap(shape, dtype, spill_dir)
        return torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)

    def release(maps: list) -> None:
        for buffer in maps:
            if isinstance(buffer, SpilledMap):
                buffer.close()
        maps.clear()

    def scaled(box: tuple[int, int, int, int], stride: int) -> tuple[int, int, int, int]:
        return tuple(edge // stride for edge in box)

    def load(name: str, region: tuple[int, int, int, int]) -> torch.Tensor:
        ry0, ry1, rx0, rx1 = scaled(region, strides[name])
        buffer = buffers[name]
        # Under autocast to the storage's own 16-bit type the maps stay in it, as in the whole-image forward: a
        # float32 copy would be converted back by every convolution (bf16 on the CPU: a third of the time in copies).
        dtype = buffer.dtype if autocast[0] and buffer.dtype == autocast[1] else torch.float32
        if isinstance(buffer, SpilledMap):
            return buffer.read((ry0, ry1, rx0, rx1)).to(dtype)
        view = buffer[:, :, ry0:ry1, rx0:rx1]
        copy = torch.empty(view.shape, dtype=dtype, device=device, memory_format=torch.channels_last)
        # Copied as the NHWC arrays both are (here and in the writes): twice as fast on the CPU as copying the
        # NCHW views.
        copy.permute(0, 2, 3, 1).copy_(view.permute(0, 2, 3, 1))
        return copy

    def run_tile(sweep: Sweep, halo: int, core: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        """One tile of a sweep: its cores written into the buffers; returns the statistics' channel sums."""
        y0, y1, x0, x1 = core
        region = (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))
        sums = {}
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
            outputs = sweep.run({name: load(name, region) for name in sweep.reads})
            for name, value in outputs.items():
                stride = strides[name]
                ry0, ry1, rx0, rx1 = scaled(region, stride)
                if value.shape[2:] != (ry1 - ry0, rx1 - rx0):
                    raise ValueError(f"a sweep returned {name} at {tuple(value.shape[2:])}, not its region's "
                                     f"{(ry1 - ry0, rx1 - rx0)} at stride {stride}")
                cy0, cy1, cx0, cx1 = scaled((y0 - region[0], y1 - region[0], x0 - region[2], x1 - region[2]), stride)
                piece = value[:, :, cy0:cy1, cx0:cx1]
                if name in sweep.pooled:
                    sums[name] = _channel_sums(piece)
                elif name in sweep.moments:
                    sums[name] = _channel_moments(piece)
                cy0, cy1, cx0, cx1 = scaled(core, stride)
                if isinstance(buffers[name], SpilledMap):
                    buffers[name].write((cy0, cy1, cx0, cx1), piece)
                else:
                    buffers[name][:, :, cy0:cy1, cx0:cx1].permute(0, 2, 3, 1).copy_(piece.permute(0, 2, 3, 1))
        return sums

    def statistics(sweep: Sweep, totals: dict[str, torch.Tensor]) -> dict:
        sent = {}
        for name, summed in totals.items():
            count = buffers[name].shape[2] * buffers[name].shape[3]
            mean = summed[:1] / count
            if name in sweep.pooled:
                sent[name] = mean.float()
            else:
                variance = (summed[1:] / count - mean * mean).clamp_min(0)
                sent[name] = (mean.float(), variance.float())
        return sent

    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    done = 0
    try:
        steps = program()
        sweep, result = next(steps), None
        while sweep is not None:
            halo = _sweep_halo(sweep, strides)
            for name, channels in sweep.writes.items():
                if name not in buffers:
                    strides[name] = sweep.strides.get(name, 1)
                    buffers[name] = allocate(name, channels, torch.float32 if name in sweep.exact else storage,
                                             strides[name])
            totals = {name: torch.zeros(1 if name in sweep.pooled else 2, sweep.writes[name], dtype=torch.float64,
                                        device=device) for name in sweep.pooled + sweep.moments}
            tiles = (pool.map(run_tile, [sweep] * len(cores), [halo] * len(cores), cores) if pool is not None
                     else (run_tile(sweep, halo, core) for core in cores))
            for sums in tiles:  # in tile order, whichever thread ran it: the same sums every run
                for name, value in sums.items():
                    totals[name] += value
                done += 1
                if on_tile:
                    on_tile(done, total)
            sent = statistics(sweep, totals)
            for name in sweep.frees:
                freed = buffers.pop(name)
                strides.pop(name)
                if name not in inputs:
                    spare.append(freed)
            sweep, result = _advance(steps, sent)
        output = buffers.pop(result)
        return output.read((0, height, 0, width)).float() if isinstance(output, SpilledMap) else output.float()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        release(spare + list(buffers.values()))


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
