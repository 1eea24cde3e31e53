"""The Derainer: a loaded deraining model plus how to run it (an `InferenceEngine` that tiles)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rainkit.engine import TiledEngine, tune_cpu_allocator
from rainkit.errors import ParameterError, RainkitError
from rainkit.models.recurrent import PooledStats, RecurrentDerainNet
from rainkit.tiling import memory_budgets, run_single_pass, run_tiled

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
# How a large image is run (`Derainer.choose_plan`): "auto" picks, the others force the single-pass tiler
# (`rainkit.tiling.run_single_pass`: exact, each layer once) or the two-pass one (`run_tiled`: a record sweep for
# the CRA statistics, then the tiles with a halo of `halo` px).
TILINGS = ("auto", "single-pass", "two-pass")
# The single-pass tiler's tile sides per device type, the preferred first. CPU: 512 px while every map fits in
# memory, else 256 px, whose smaller working memory leaves more of the maps in memory under a cap. A 32-channel map of a
# 512 px tile is 16 MB in fp32 (256 px: 8 MB), and the halo costs at most (1 + 2 * 16 / 512)^2 = 1.13x for dilation 16
# (256 px: 1.27x). Measured 2026-12-03 (official SAPNet, a real photo at 2432x1664, 2 cores, in one process,
# alternating): bf16 512 px faster than 256 in 5 of 5 pairs (median 34.7 s against 41.3),
# fp32 in 2 of 2 (59.4 and 64.4 s against 63.8 and 71.0), outputs within 1 grey level; 832 px slower again (44 s).
# Other devices: large tiles, fewer kernel launches (not measured).
SINGLE_PASS_TILES = {"cpu": (512, 256)}
SINGLE_PASS_TILE_OTHER = 1024
# Images of up to this many pixels run whole when they fit: a whole image costs 7.6 s/MP at 1 MP but 12.0 at 4 MP
# (2 idle cores, README Speed); bench/derain_scaling.py --repeat 2 on idle cores: 0.15 MP whole 7.09 s/MP, single
# pass 1.15x that; 2 MP whole 1.08x, single pass 1.10x (and 1.85 GiB peak against 3.94).
WHOLE_UP_TO_PIXELS = 2_000_000

# The per-image choice between light- and heavy-rain weights (`Derainer.rain_strength`): the light model runs on a
# copy of at most this many pixels a side (the image itself when it is that small, whose output is then kept).
STRENGTH_SIDE = 400
RAIN_CHOICES = ("auto", "light", "heavy")


class Derainer(TiledEngine):
    """A ready-to-run deraining model (SAPNet, PReNet). Build it with `load_derainer`.

    Plans (`choose_plan`, `last_plan`): "whole"; "single-pass" (`rainkit.tiling.run_single_pass`, the network's
    layers swept over tiles of whole-image buffers: exact, each layer once); "two-pass" (`rainkit.tiling.run_tiled`:
    `halo` px of context, at most the network's receptive radius, and `blend` px of blending per side; SAPNet's
    channel attention gets the whole image's pooled means from a record sweep), the fallback when the single
    pass's buffers do not fit the memory budget. `tiling` ("auto", "single-pass", "two-pass"; `TILINGS`) forces
    one of the tilers; `tile` forces the tile side (0: whole image).
    """

    def __init__(self, model: RecurrentDerainNet, device: torch.device | str, *, halo: int = DEFAULT_HALO,
                 blend: int = DEFAULT_BLEND, tiling: str = "auto", **engine: Any) -> None:
        super().__init__(model, device, **engine)
        self.halo = halo
        self.blend = blend
        if tiling not in TILINGS:
            raise ParameterError("tiling", f"'{tiling}' is not one of {', '.join(TILINGS)}")
        self.tiling = tiling
        # The heavy-rain weights an image is handed to when its rain strength exceeds the threshold (`use_heavy`).
        self.heavy: Derainer | None = None
        self.heavy_threshold = 0.0
        self.last_choice: dict = {}

    def use_heavy(self, heavy: "Derainer", threshold: float) -> None:
        """Hand every image whose `rain_strength` exceeds `threshold` to `heavy` (this model's weights being the
        light-rain ones); `last_choice` records which ran and the strength."""
        self.heavy, self.heavy_threshold = heavy, float(threshold)

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

    def describe(self) -> dict:
        described = {**super().describe(), "tiling": self.tiling}
        if self.heavy is not None:
            heavy = self.heavy.describe()
            described.update(rain="auto", heavy_weights=heavy["weights"], heavy_weights_sha256=heavy["weights_sha256"],
                             heavy_threshold=self.heavy_threshold)
        return described

    # ------------------------------------------------------------------ plans
    @property
    def storage_dtype(self) -> torch.dtype:
        """The single-pass tiler's buffers: fp16 for fp32 (measured on a real photo with the official SAPNet: at most
        1 grey level from the whole-image output, as fp32 buffers; bf16 buffers 8 times the error), else the
        precision's own 16-bit type."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float16

    def choose_plan(self, height: int, width: int) -> tuple[str, int]:
        """(plan, tile side) for an image (class doc). Automatic: whole up to `WHOLE_UP_TO_PIXELS` when it fits,
        else the single pass when it fits the whole-image budget (`rainkit.tiling.memory_budgets`, or what
        `max_memory` leaves), on the CPU with the maps that do not fit in a temporary file (`single_pass_fits`), else
        the two-pass tiler's tiles for the budget."""
        if self.tile == 0 or (self.tile is not None and self.tile >= max(height, width)):
            return "whole", 0
        if self.tiling != "two-pass":
            sides = (self.tile,) if self.tile else SINGLE_PASS_TILES.get(self.device.type, (SINGLE_PASS_TILE_OTHER,))
            if self.tiling == "single-pass":
                self.last_spill = (None, 0)
                return "single-pass", sides[0]
            whole_budget, _ = memory_budgets(self.working_budget(height, width), self.device)
            if (self.tile is None and height * width <= WHOLE_UP_TO_PIXELS
                    and height * width * self.bytes_per_pixel() <= whole_budget):
                return "whole", 0
            # The preferred side while all the maps fit in memory; only the last side, which keeps the most of them
            # there, may send the others to a temporary file.
            for index, tile in enumerate(sides):
                if self.single_pass_fits(height, width, tile, whole_budget, spill=index == len(sides) - 1):
                    return "single-pass", tile
        tile = self.choose_tile(height, width)
        return ("two-pass" if tile else "whole"), tile

    # ---------------------------------------------------------------- running
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
        light = None  # the light model's output of the whole image, when choosing made it
        if self.heavy is not None:
            strength, light = self.rain_strength(x)
            heavy = strength > self.heavy_threshold
            self.last_choice = {"rain": "heavy" if heavy else "light", "rain_strength": round(strength, 5)}
            if heavy:
                self.last_plan, self.last_tile = self.heavy.choose_plan(height, width)  # what the tile bar shows
                return self.heavy.derain_tensor(x, on_tile)
        plan, tile = self.choose_plan(height, width)
        self.last_plan, self.last_tile = plan, tile
        if light is not None and plan == "whole":
            return light
        if plan == "whole":
            return self._forward(x).cpu()
        if plan == "single-pass":
            with torch.inference_mode(), self.autocast():
                return run_single_pass(self.model.tile_sweeps, {"image": x}, tile=tile, storage=self.storage_dtype,
                                       device=self.device, on_tile=on_tile, in_memory=self.last_spill[0]).cpu()
        stats = PooledStats() if self.model.attention else None
        return run_tiled(self.forward_tile, x, tile=tile, halo=min(self.halo, self.model.receptive_radius()),
                         blend=self.blend, stats=stats, on_tile=on_tile)

    def rain_strength(self, x: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        """How much rain this model removes from `x` (1, 3, H, W): the mean over pixels of max(0, Y(x) - Y(out)) on a
        copy of at most `STRENGTH_SIDE` px a side (area-downscaled), Y the BT.601 luma. Rain adds light, so what a
        model takes away where it darkens the image is the rain it found. Returns (strength, output): the output
        of `x` itself when `x` was small enough to run as it is, else None.

        Measured with `sapnet.rainkit` (weights/README.md): Rain100L 0.002-0.079, real rainy photos and webcam
        frames at most 0.033, clean photos at most 0.016; the Rain100H sample 0.100-0.169, heavy physics rain on
        coco128 0.037-0.164."""
        _, _, height, width = x.shape
        scale = STRENGTH_SIDE / max(height, width)
        small = x if scale >= 1 else torch.nn.functional.interpolate(
            x, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="area")
        out = self._forward(small).cpu()
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        removed = ((small.float() - out) * luma).sum(1).clamp_min_(0)
        return float(removed.mean()), (out if scale >= 1 else None)

    def derain(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Derain an H x W x 3 float32 RGB array in [0, 1]; returns H x W x 3 float32, not clamped."""
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return self.derain_tensor(x, on_tile)[0].numpy().transpose(1, 2, 0)


def load_derainer(model: str = "sapnet", weights: str | None = None, device: str = "auto", precision: str = "fp32",
                  tile: int | None = None, halo: int = DEFAULT_HALO, max_memory: int | str | None = None,
                  tiling: str = "auto", rain: str = "auto") -> Derainer:
    """Load a deraining model ready to use: `load_derainer("prenet", "prenet.rain100l").derain(rgb)`.
    `max_memory` ("3G") caps the process's memory: large images are tiled to stay under it. `tiling` forces a tiler
    for large images ("single-pass", "two-pass"; `Derainer`).

    `rain` ("auto", "light", "heavy"; `RAIN_CHOICES`) matters for weights that name heavy-rain weights (the
    default `sapnet.rainkit` names `sapnet.rainkit-heavy`): "auto" chooses per image from its rain strength
    (`Derainer.rain_strength`), "light" keeps the weights given, "heavy" loads their heavy-rain weights."""
    from rainkit.registry import get_weights, is_registered_weights

    if rain not in RAIN_CHOICES:
        raise ParameterError("rain", f"'{rain}' is not one of {', '.join(RAIN_CHOICES)}")
    options = dict(device=device, precision=precision, tile=tile, halo=halo, max_memory=max_memory, tiling=tiling)
    derainer = Derainer.load(model, weights, **options)
    name = derainer.weights_name
    entry = get_weights(name) if name and is_registered_weights(name) else None
    if entry is None or entry.heavy_weights is None:
        if rain == "heavy":
            raise ParameterError("rain", f"'heavy' needs weights that name heavy-rain weights (as sapnet.rainkit "
                                         f"does), not {name or derainer.weights_path or 'these'}")
        return derainer
    if rain == "heavy":
        return Derainer.load(model, entry.heavy_weights, **options)
    if rain == "auto":
        derainer.use_heavy(Derainer.load(model, entry.heavy_weights, **options), entry.heavy_threshold)
    return derainer
