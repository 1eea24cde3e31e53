"""Rain generation with a trained TPSeNCE generator, at the image's native resolution.

The image is never resized: it is reflect-padded on the bottom and right to a multiple of 4 (the
generator down-samples twice) and the output is cropped back.

Large images run in tiles without seams or colour shifts. Instance norm makes every output pixel
depend on per-channel statistics of whole feature maps, so a tile normalised with its own
statistics drifts in colour and contrast from its neighbours. The tiler gives every tile the
whole image's statistics, in two passes over the tiles (`run_tiled_generator`):

1. record: each instance-norm layer's whole-image per-channel mean and (biased) variance are
   accumulated as float64 sums and sums of squares over the tiles' *cores* (the cores partition
   the image, so each pixel counts once; at 1/2 and 1/4 resolution the core is scaled, which is
   exact because tiles start on multiples of 4). The layers are recorded in order, each tile
   normalising the layers before with their final statistics, so the statistics are the
   whole-image ones, not estimates from tile-locally normalised features (a single sweep with
   tile-local normalisation, as `rainkit.derain.tiling` does for SAPNet's pooling, is not enough
   here: 23 chained normalisations amplify the error to ~23-29 dB PSNR against the untiled output
   even for a randomly initialised generator). To avoid recomputing the network for every layer,
   each tile's activations are kept where they are small (the residual trunk at 1/4 resolution:
   32 channels per image pixel with the residual input for ngf = 64, i.e. 128 bytes per pixel in
   fp32, plus the halos' share; on the host, or on the GPU when they fit there); only the few
   full- and half-resolution layers at the start are recomputed from the image.
2. render: every tile runs from its kept activations to the output with the fixed statistics,
   and its core is written to the output.

Tiles carry a halo of context of at least the generator's receptive radius (93 px for the 9-block
generator), so a tile's core sees exactly the inputs the whole-image pass would; tiled and untiled
outputs agree to floating-point summation order (tests/test_tpsence.py). Cost: about 1.4x the
compute of one forward pass over the tiles' inputs (halos included); bench/tpsence_speed.py
measured 2.55x the whole-image eager forward for a 640x480 image in four 320x240 tiles, whose
93-px halos alone make the tiles' inputs 1.8x the image.

The tile boxes and the optional blend ramps (`blend` > 0) are those of `rainkit.derain.tiling`.

Working width (`work_width`, opt-in): a generator trained on photos scaled to ~256 px wide paints
weather at that scale; on a 4000 px photo its streaks and its view of the scene are 16x too small.
With `work_width` W the generator runs on the image scaled to W px wide and its *change* (output
minus scaled input) is resized back and added to the untouched full-resolution photo, so the output
keeps the input's resolution and detail and gets weather at the scale the generator learnt.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rainkit.derain.engine import _available_memory_bytes, tile_for_budget
from rainkit.derain.tiling import TileBox, _ramp, plan_tiles
from rainkit.errors import RainkitError
from rainkit.hub import load_model, resolve_device, resolve_precision
from rainkit.models.tpsence import ResnetBlock, ResnetGenerator, TileableInstanceNorm

ALIGN = 4  # the generator's total stride
DEFAULT_BLEND = 0  # exact statistics + a full receptive-field halo leave nothing to feather
# Working memory per pixel of a tile (bytes) for ngf = 64 in fp32: the measured peak RSS growth of a
# CPU forward is about 1670 bytes per pixel; scales with ngf and halves for 16-bit precisions.
_BYTES_PER_PIXEL_NGF64 = 2000


@dataclass
class NormStats:
    """Per-layer instance-norm statistics: `mean[k]`, `var[k]` (C,) for the k-th layer of
    `ResnetGenerator.norm_layers()`.

    As a `stats_hook` (see `use_norm_stats`), mode "record" runs plain instance norm and
    accumulates each layer's per-channel sum and sum of squares; mode "fixed" normalises with
    `mean` and `var`. `run_tiled_generator` fills a fixed one from the tiles' cores.
    """

    mode: str = "record"
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    squares: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    mean: dict[int, torch.Tensor] = field(default_factory=dict)
    var: dict[int, torch.Tensor] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, eps: float, k: int) -> torch.Tensor:
        if self.mode == "fixed":
            return _normalize(x, self.mean[k], self.var[k], eps)
        flat = x.detach().double().flatten(2)
        total, square = flat.sum((0, 2)).cpu(), flat.pow(2).sum((0, 2)).cpu()
        self.sums[k] = self.sums[k] + total if k in self.sums else total
        self.squares[k] = self.squares[k] + square if k in self.squares else square
        self.counts[k] = self.counts.get(k, 0) + flat.shape[0] * flat.shape[2]
        return F.instance_norm(x, eps=eps)

    def finalize(self) -> "NormStats":
        """The fixed statistics from what was recorded: mean = S / n, var = Q / n - mean^2 (biased, as IN)."""
        mean = {k: self.sums[k] / self.counts[k] for k in self.sums}
        var = {k: (self.squares[k] / self.counts[k] - mean[k] ** 2).clamp_min(0) for k in self.sums}
        return NormStats(mode="fixed", mean={k: v.float() for k, v in mean.items()},
                         var={k: v.float() for k, v in var.items()})

    @classmethod
    def whole_image(cls, model: ResnetGenerator, x: torch.Tensor) -> "NormStats":
        """The statistics of an untiled forward pass of `x` (N = 1)."""
        stats = cls(mode="record")
        with use_norm_stats(model, stats), torch.inference_mode():
            model(x)
        return stats.finalize()


def _normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    mean = mean.to(x.device).view(1, -1, 1, 1)
    inv = torch.rsqrt(var.to(x.device) + eps).view(1, -1, 1, 1)
    return ((x.float() - mean) * inv).to(x.dtype)


@contextlib.contextmanager
def use_norm_stats(model: ResnetGenerator, stats: NormStats | None):
    layers = model.norm_layers()
    try:
        for k, layer in enumerate(layers):
            layer.stats_hook = partial(stats, k=k) if stats is not None else None
        yield stats
    finally:
        for layer in layers:
            layer.stats_hook = None


def plan_aligned_tiles(height: int, width: int, tile: int, halo: int, blend: int) -> list[TileBox]:
    """Tiles whose core, output and input boxes all start and end on multiples of 4 (height and
    width must be multiples of 4)."""
    if height % ALIGN or width % ALIGN or halo % ALIGN or blend % ALIGN:
        raise RainkitError("tiling needs sizes, halo and blend that are multiples of 4")
    return plan_tiles(height, width, tile, halo, blend, align=ALIGN)


def pad_to_multiple(x: torch.Tensor, multiple: int = ALIGN) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (replicate when too small)."""
    height, width = x.shape[2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _program(model: ResnetGenerator) -> list[tuple[str, torch.nn.Module | None, int]]:
    """The generator as a flat list of ops: ("layer", module, -1), ("norm", module, k), ("push"/"add", None, -1)
    (a residual block pushes its input and adds it back at its end)."""
    ops: list[tuple[str, torch.nn.Module | None, int]] = []
    norm_index = 0

    def add(module):
        nonlocal norm_index
        if isinstance(module, TileableInstanceNorm):
            ops.append(("norm", module, norm_index))
            norm_index += 1
        else:
            ops.append(("layer", module, -1))

    for module in model.model:
        if isinstance(module, ResnetBlock):
            ops.append(("push", None, -1))
            for sub in module.conv_block:
                add(sub)
            ops.append(("add", None, -1))
        else:
            add(module)
    return ops


def _execute(ops, start: int, stop: int, current: torch.Tensor, skips: tuple, stats: NormStats):
    for kind, module, k in ops[start:stop]:
        if kind == "push":
            skips = skips + (current,)
        elif kind == "add":
            current, skips = skips[-1] + current, skips[:-1]
        elif kind == "norm":
            current = _normalize(current, stats.mean[k], stats.var[k], module.eps)
        else:
            current = module(current)
    return current, skips


def cache_channels_per_pixel(model: ResnetGenerator) -> float:
    """The size of the residual trunk's state (activations + residual input at 1/4 resolution),
    in channels per image pixel: the largest checkpoint the tiler keeps."""
    return 2 * 4 * model.config["ngf"] / 16


def run_tiled_generator(model: ResnetGenerator, x: torch.Tensor, *, tile: int, halo: int,
                        blend: int = DEFAULT_BLEND, device: torch.device,
                        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                        on_tile: Callable[[int, int], None] | None = None,
                        stats: NormStats | None = None, cache_device: torch.device | str | None = None) -> torch.Tensor:
    """Translate `x` (1, 3, H, W) in [-1, 1] on the CPU, H and W multiples of 4, tile by tile, with the
    whole image's instance-norm statistics. Returns (1, 3, H, W) float32 on the CPU.

    Record pass (skipped when `stats` are given): the instance-norm layers are taken in order; for
    layer k every tile is run from its last checkpoint up to layer k's input, normalising the
    layers before k with their already final whole-image statistics, and the sums over its core are
    accumulated; then layer k's statistics are final. A layer's input becomes the tiles' new
    checkpoint (kept on `cache_device`, the CPU by default) when it is no larger than the
    residual trunk's state (`cache_channels_per_pixel`: 32 channels per image pixel for ngf = 64);
    the full- and half-resolution layers at the start are recomputed from the image instead.
    Render pass: every tile continues from its last checkpoint to the output with the fixed
    statistics. With a halo of at least the receptive radius, every statistic and every output
    pixel equals the whole-image pass's up to floating-point summation order.
    """
    _, _, height, width = x.shape
    boxes = plan_aligned_tiles(height, width, tile, halo, blend)
    ops = _program(model)
    norm_positions = [i for i, (kind, _, _) in enumerate(ops) if kind == "norm"]
    limit = cache_channels_per_pixel(model)
    cache_device = torch.device(cache_device) if cache_device is not None else torch.device("cpu")
    total = (0 if stats is not None else len(norm_positions) * len(boxes)) + len(boxes)
    step = 0

    def tile_input(box: TileBox) -> torch.Tensor:
        iy0, iy1, ix0, ix1 = box.inp
        return prepare(x[:, :, iy0:iy1, ix0:ix1].to(device))

    checkpoints: list[tuple[torch.Tensor, tuple]] | None = None  # per tile, at op index `resume_at`
    resume_at = 0
    with torch.inference_mode(), context():
        if stats is None:
            stats = NormStats(mode="fixed")
            for position in norm_positions:
                k = ops[position][2]
                sums = squares = None
                count = 0
                kept = []
                for t, box in enumerate(boxes):
                    if checkpoints is None:
                        current, skips = _execute(ops, 0, position, tile_input(box), (), stats)
                    else:
                        cur, skp = checkpoints[t]
                        current, skips = _execute(ops, resume_at, position, cur.to(device),
                                                  tuple(s.to(device) for s in skp), stats)
                    iy0, iy1, ix0, ix1 = box.inp
                    y0, y1, x0, x1 = box.core
                    stride = (iy1 - iy0) // current.shape[2]
                    core = current[:, :, (y0 - iy0) // stride:(y1 - iy0) // stride,
                                   (x0 - ix0) // stride:(x1 - ix0) // stride]
                    flat = core.double().flatten(2)
                    tile_sum, tile_square = flat.sum((0, 2)).cpu(), flat.pow(2).sum((0, 2)).cpu()
                    sums = tile_sum if sums is None else sums + tile_sum
                    squares = tile_square if squares is None else squares + tile_square
                    count += flat.shape[0] * flat.shape[2]
                    size = current.shape[1] / stride ** 2 + sum(t.shape[1] / ((iy1 - iy0) // t.shape[2]) ** 2
                                                                  for t in skips)
                    if size <= limit:
                        kept.append((current.to(cache_device), tuple(t.to(cache_device) for t in skips)))
                    step += 1
                    if on_tile:
                        on_tile(step, total)
                mean = sums / count
                stats.mean[k] = mean.float()
                stats.var[k] = (squares / count - mean ** 2).clamp_min(0).float()
                if len(kept) == len(boxes):
                    checkpoints, resume_at = kept, position
        output = np.zeros((x.shape[1], height, width), dtype=np.float32)
        weights = np.zeros((height, width), dtype=np.float32) if blend else None
        for t, box in enumerate(boxes):
            iy0, iy1, ix0, ix1 = box.inp
            oy0, oy1, ox0, ox1 = box.out
            y0, y1, x0, x1 = box.core
            if checkpoints is None:
                result, _ = _execute(ops, 0, len(ops), tile_input(box), (), stats)
            else:
                cur, skp = checkpoints[t]
                checkpoints[t] = None  # free as we go
                result, _ = _execute(ops, resume_at, len(ops), cur.to(device), tuple(s.to(device) for s in skp), stats)
            piece = result[0, :, oy0 - iy0:oy1 - iy0, ox0 - ix0:ox1 - ix0].float().cpu().numpy()
            if blend:
                w2 = _ramp(height, oy0, oy1, y0, y1, blend)[:, None] * _ramp(width, ox0, ox1, x0, x1, blend)[None, :]
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


@dataclass
class Generator:
    """A ready-to-run TPSeNCE generator. Build it with `load_generator`.

    `tile`: None picks the largest tile that fits the memory budget (0 when the whole image fits),
    0 forces the whole image, a positive value forces that tile side. `halo` defaults to the
    receptive radius rounded up to a multiple of 4.
    """

    model: ResnetGenerator
    device: torch.device
    precision_name: str = "fp32"
    tile: int | None = None
    halo: int | None = None
    blend: int = DEFAULT_BLEND
    memory_budget: int | None = None  # bytes; None: from available memory
    weights_path: Path | None = None
    weights_sha256: str | None = None
    weights_name: str | None = None
    work_width: int = 0  # 0: run at native resolution; W: run at W px wide and add the change back (module doc)
    last_tile: int = field(default=0, init=False)

    @property
    def effective_halo(self) -> int:
        halo = self.halo if self.halo is not None else self.model.receptive_radius()
        return int(math.ceil(halo / ALIGN) * ALIGN)

    def _bytes_per_pixel(self) -> int:
        per = _BYTES_PER_PIXEL_NGF64 * self.model.config["ngf"] / 64
        return int(per if self.precision_name == "fp32" else per / 2) + 64

    def choose_tile(self, height: int, width: int) -> int:
        """The tile side for a padded image (0 = whole image)."""
        side = tile_for_budget(height, width, self.tile, self.memory_budget, self.device, self._bytes_per_pixel(),
                               self.effective_halo + self.blend)
        return side if self.tile is not None or side == 0 else side // ALIGN * ALIGN

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        precision = resolve_precision(self.precision_name, self.device)
        with torch.inference_mode(), precision.autocast():
            return self.model(x).float()

    def _cache_device(self, height: int, width: int, tile: int) -> torch.device:
        """Keep the tiler's checkpoints on the GPU when they fit comfortably, else on the host."""
        if self.device.type != "cuda":
            return torch.device("cpu")
        overhead = ((tile + 2 * (self.effective_halo + self.blend)) / tile) ** 2
        need = cache_channels_per_pixel(self.model) * 4 * height * width * overhead
        return self.device if need < 0.3 * _available_memory_bytes(self.device) else torch.device("cpu")

    def generate_tensor(self, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, H, W) RGB in [0, 1] on the CPU -> the rainy version, (1, 3, H, W) float32 in [0, 1] on the CPU."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RainkitError(f"expected a (1, 3, H, W) tensor, got {tuple(x.shape)}")
        _, _, height, width = x.shape
        padded = pad_to_multiple(x.float() * 2.0 - 1.0)
        tile = self.choose_tile(*padded.shape[2:])
        self.last_tile = tile
        if tile == 0:
            out = self._forward(padded.to(self.device)).cpu()
        else:
            precision = resolve_precision(self.precision_name, self.device)
            out = run_tiled_generator(self.model, padded, tile=tile, halo=self.effective_halo, blend=self.blend,
                                      device=self.device, context=precision.autocast, on_tile=on_tile,
                                      cache_device=self._cache_device(*padded.shape[2:], tile))
        return ((out[:, :, :height, :width] + 1.0) * 0.5).clamp_(0.0, 1.0)

    def generate(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """H x W x 3 float32 RGB in [0, 1] -> the generated rainy image, H x W x 3 float32 in [0, 1].

        With `work_width` smaller than the image's width, the weather is made at that width and
        added back at full resolution (module doc); otherwise the generator runs on the image as is."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise RainkitError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
        height, width = rgb.shape[:2]
        if not self.work_width or width <= self.work_width:
            return self._generate_native(rgb, on_tile)
        import cv2

        small_size = (self.work_width, max(1, round(height * self.work_width / width)))
        small = cv2.resize(rgb.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
        change = self._generate_native(small, on_tile) - small
        change = cv2.resize(change, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(rgb + change, 0.0, 1.0)

    def _generate_native(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return self.generate_tensor(x, on_tile)[0].numpy().transpose(1, 2, 0)

    def describe(self) -> dict:
        weights = self.weights_name or (str(self.weights_path) if self.weights_path else None)
        return {"model": "tpsence", "weights": weights, "weights_sha256": self.weights_sha256,
                "device": str(self.device), "precision": self.precision_name, "work_width": self.work_width}


def load_generator(weights: str | Path, device: str | torch.device = "cpu", precision: str = "fp32", *,
                   tile: int | None = None, halo: int | None = None, work_width: int = 0) -> Generator:
    """A `Generator` from a registered `tpsence.*` name or a weights file (e.g. a run's
    `generator.safetensors`; fp16-stored weights are loaded into fp32 parameters)."""
    if work_width < 0:
        raise RainkitError(f"work width must be 0 (native resolution) or a positive width, got {work_width}")
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # an unavailable precision fails here, before any work
    model, resolved = load_model("tpsence", str(weights), device=dev)
    model = model.float()  # NCHW: channels-last measured no faster for this network on CPUs
    return Generator(model, dev, precision, tile=tile, halo=halo, work_width=int(work_width),
                     weights_path=resolved.path, weights_sha256=resolved.sha256,
                     weights_name=resolved.entry.name if resolved.entry else None)


GENERATOR_WEIGHTS_PREFIX = "tpsence."


def default_generator_weights(domain: str):
    """The registered generator weights for a weather domain: the entry named `tpsence.<domain>`
    (e.g. `tpsence.rain`), or None when rainkit has none for that domain yet.

    This is the one place `rainkit generate --method tpsence/auto` looks: registering an entry in
    `rainkit/models/tpsence.py` is all it takes to make learned weights the default for a domain.
    Returns a `rainkit.registry.WeightsEntry` (registered; not necessarily on this machine:
    check with `rainkit.hub.weights.check_weights`)."""
    from rainkit.registry import list_weights

    name = f"{GENERATOR_WEIGHTS_PREFIX}{domain}"
    return next((entry for entry in list_weights() if entry.name == name), None)
