"""Rain generation with a trained TPSeNCE generator, at the image's native resolution.

The image is never resized: it is reflect-padded on the bottom and right to a multiple of 4 (the
generator down-samples twice) and the output is cropped back.

Large images run in tiles without seams or colour shifts. Instance norm makes every output pixel
depend on per-channel statistics of whole feature maps, so a tile normalised with its own
statistics drifts in colour and contrast from its neighbours. The tiler gives every tile the
whole image's statistics, with the two phases of `rainkit.tiling.run_tiled` (`LayerwiseTiles`):

1. record: each instance-norm layer's whole-image per-channel mean and (biased) variance are
   accumulated as float64 sums and sums of squares over the tiles' *cores* (the cores partition
   the image, so each pixel counts once; at 1/2 and 1/4 resolution the core is scaled, which is
   exact because tiles start on multiples of 4). The layers are recorded in order, each tile
   normalising the layers before with their final statistics, so the statistics are the
   whole-image ones, not estimates from tile-locally normalised features (a single sweep with
   tile-local normalisation, as the derainer does for SAPNet's pooling, is not enough
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

The tile boxes, the optional blend ramps (`blend` > 0) and the statistics recorder (`NormStats`)
are those of `rainkit.tiling`.

Working width (`work_width`, opt-in): a generator trained on photos scaled to ~256 px wide paints
weather at that scale; on a 4000 px photo its streaks and its view of the scene are 16x too small.
With `work_width` W the generator runs on the image scaled to W px wide and its *change* (output
minus scaled input) is resized back and added to the untouched full-resolution photo, so the output
keeps the input's resolution and detail and gets weather at the scale the generator learnt.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rainkit.engine import TiledEngine
from rainkit.errors import RainkitError
from rainkit.models.tpsence import ResnetBlock, ResnetGenerator
from rainkit.tiling import TileStats, available_memory_bytes, run_tiled

ALIGN = 4  # the generator's total stride
DEFAULT_BLEND = 0  # exact statistics + a full receptive-field halo leave nothing to feather
# Working memory per pixel of a tile (bytes) for ngf = 64 in fp32: the measured peak RSS growth of a
# CPU forward is about 1670 bytes per pixel; scales with ngf and halves for 16-bit precisions.
_BYTES_PER_PIXEL_NGF64 = 2000


class NormStats(TileStats):
    """The whole-image mean and (biased) variance of each instance-norm layer of the generator,
    `mean[k]` and `var[k]` (1, C) for the k-th in forward order (`rainkit.tiling.TileStats`)."""

    second_moment = True

    def normalize(self, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
        """Instance-normalise `x` with layer k's fixed statistics instead of its own."""
        mean = self.mean[k].to(x.device).view(1, -1, 1, 1)
        inv = torch.rsqrt(self.var[k].to(x.device) + eps).view(1, -1, 1, 1)
        return ((x.float() - mean) * inv).to(x.dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int = ALIGN) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (replicate when too small)."""
    height, width = x.shape[2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _program(model: ResnetGenerator) -> list[tuple[str, nn.Module | None, int]]:
    """The generator as a flat list of ops: ("layer", module, -1), ("norm", module, k), ("push"/"add", None, -1)
    (a residual block pushes its input and adds it back at its end)."""
    ops: list[tuple[str, nn.Module | None, int]] = []
    norm_index = 0

    def add(module):
        nonlocal norm_index
        if isinstance(module, nn.InstanceNorm2d):
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
            current = stats.normalize(current, k, module.eps)
        else:
            current = module(current)
    return current, skips


def cache_channels_per_pixel(model: ResnetGenerator) -> float:
    """The size of the residual trunk's state (activations + residual input at 1/4 resolution),
    in channels per image pixel: the largest checkpoint the tiler keeps."""
    return 2 * 4 * model.config["ngf"] / 16


class LayerwiseTiles:
    """The generator as `rainkit.tiling.run_tiled` runs it, one record sweep per instance-norm layer.

    Record sweep k: every tile runs from its last checkpoint up to layer k's input, normalising
    the layers before k with their already fixed whole-image statistics, and records layer k's
    input over its core; then layer k's statistics are fixed. A layer's input becomes the tiles'
    new checkpoint (kept on `cache_device`) when every tile's is no larger than the residual
    trunk's state (`cache_channels_per_pixel`: 32 channels per image pixel for ngf = 64); the
    full- and half-resolution layers at the start are recomputed from the image instead. Render:
    every tile continues from its last checkpoint to the output, and frees it. With a halo of at
    least the receptive radius, every statistic and every output pixel equals the whole-image
    pass's up to floating-point summation order.
    """

    def __init__(self, model: ResnetGenerator, device: torch.device, cache_device: torch.device) -> None:
        self.ops = _program(model)
        self.norm_positions = [i for i, (kind, _, _) in enumerate(self.ops) if kind == "norm"]
        self.limit = cache_channels_per_pixel(model)
        self.device = device
        self.cache_device = cache_device
        self.checkpoints: list[tuple[torch.Tensor, tuple] | None] | None = None  # per tile, at op `resume_at`
        self.resume_at = 0
        self._kept: list[tuple[torch.Tensor, tuple]] = []  # this sweep's candidate checkpoints, at `_kept_at`
        self._kept_at = -1
        self._every_tile_kept = False

    @property
    def sweeps(self) -> int:
        return len(self.norm_positions)

    def _target(self, stats: NormStats) -> int:
        """Where the current sweep stops: the first norm layer not yet fixed, else the output."""
        return next((p for p in self.norm_positions if not stats.is_fixed(self.ops[p][2])), len(self.ops))

    def __call__(self, index: int, x: torch.Tensor, stats: NormStats) -> torch.Tensor | None:
        target = self._target(stats)
        if target != self._kept_at:  # a new sweep: the last one's checkpoints replace the old if every tile had one
            if self._kept and self._every_tile_kept:
                self.checkpoints, self.resume_at = self._kept, self._kept_at
            self._kept, self._kept_at, self._every_tile_kept = [], target, True
        if self.checkpoints is None:
            current, skips = _execute(self.ops, 0, target, x.to(self.device), (), stats)
        else:
            cur, skp = self.checkpoints[index]
            if target == len(self.ops):
                self.checkpoints[index] = None  # rendering: free as we go
            current, skips = _execute(self.ops, self.resume_at, target, cur.to(self.device),
                                      tuple(s.to(self.device) for s in skp), stats)
        if target == len(self.ops):
            return current
        stats.record(self.ops[target][2], current)
        height = x.shape[2]
        size = current.shape[1] / (height // current.shape[2]) ** 2 + sum(
            t.shape[1] / (height // t.shape[2]) ** 2 for t in skips)
        if size <= self.limit:
            self._kept.append((current.to(self.cache_device), tuple(t.to(self.cache_device) for t in skips)))
        else:
            self._every_tile_kept = False
        return None


class WeatherGenerator(TiledEngine):
    """A ready-to-run TPSeNCE generator (clear to rain, snow, ...). Build it with `load_generator`.

    `tile`: None picks the largest tile that fits the memory budget (0 when the whole image fits),
    0 forces the whole image, a positive value forces that tile side. `halo` defaults to the
    receptive radius rounded up to a multiple of 4. `work_width`: 0 runs at native resolution; W
    runs at W px wide and adds the change back (module doc).
    """

    arch = "tpsence"
    align = ALIGN

    def __init__(self, model: ResnetGenerator, device: torch.device | str, *, blend: int = DEFAULT_BLEND,
                 work_width: int = 0, **engine: Any) -> None:
        super().__init__(model, device, blend=blend, **engine)
        if work_width < 0:
            raise RainkitError(f"work width must be 0 (native resolution) or a positive width, got {work_width}")
        self.work_width = int(work_width)

    @classmethod
    def prepare_model(cls, model: nn.Module, arch: str, device: torch.device) -> ResnetGenerator:
        return model.float()  # fp16-stored weights run in fp32 parameters; NCHW: channels-last measured no faster here

    @property
    def effective_halo(self) -> int:
        halo = self.halo if self.halo is not None else self.model.receptive_radius()
        return int(math.ceil(halo / ALIGN) * ALIGN)

    def bytes_per_pixel(self) -> int:
        per = _BYTES_PER_PIXEL_NGF64 * self.model.config["ngf"] / 64
        return int(per if self.precision == "fp32" else per / 2) + 64

    def tile_margin(self) -> int:
        return self.effective_halo + self.blend

    def _cache_device(self, height: int, width: int, tile: int) -> torch.device:
        """Keep the tiler's checkpoints on the GPU when they fit comfortably, else on the host."""
        if self.device.type != "cuda":
            return torch.device("cpu")
        overhead = ((tile + 2 * self.tile_margin()) / tile) ** 2
        need = cache_channels_per_pixel(self.model) * 4 * height * width * overhead
        return self.device if need < 0.3 * available_memory_bytes(self.device) else torch.device("cpu")

    def generate_tensor(self, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, H, W) RGB in [0, 1] on the CPU -> the rainy version, (1, 3, H, W) float32 in [0, 1] on the CPU."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RainkitError(f"expected a (1, 3, H, W) tensor, got {tuple(x.shape)}")
        _, _, height, width = x.shape
        padded = pad_to_multiple(x.float() * 2.0 - 1.0)
        tile = self.choose_tile(*padded.shape[2:])
        self.last_tile = tile
        with torch.inference_mode(), self.autocast():
            if tile == 0:
                out = self.model(padded.to(self.device)).float().cpu()
            else:
                network = LayerwiseTiles(self.model, self.device, self._cache_device(*padded.shape[2:], tile))
                out = run_tiled(network, padded, tile=tile, halo=self.effective_halo, blend=self.blend, align=ALIGN,
                                stats=NormStats(), record_sweeps=network.sweeps, on_tile=on_tile)
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
        return {**super().describe(), "work_width": self.work_width}


def load_generator(weights: str | Path, device: str | torch.device = "cpu", precision: str = "fp32", *,
                   tile: int | None = None, halo: int | None = None, work_width: int = 0) -> WeatherGenerator:
    """A `WeatherGenerator` from a registered `tpsence.*` name or a weights file (e.g. a run's
    `generator.safetensors`; fp16-stored weights are loaded into fp32 parameters)."""
    return WeatherGenerator.load("tpsence", weights, device=device, precision=precision, tile=tile, halo=halo,
                                 work_width=work_width)


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
