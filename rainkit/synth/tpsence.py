"""Rain generation with a trained TPSeNCE generator, at the image's native resolution.

The image is never resized: it is reflect-padded on the bottom and right to a multiple of 4 (the
generator down-samples twice) and the output is cropped back.

Plans (`WeatherGenerator.choose_plan`):

* whole: the generator's forward on the whole padded image.
* single pass (`rainkit.tiling.run_single_pass` over `ResnetGenerator.tile_sweeps`): every layer
  runs once, over tiles of whole-image buffers, one sweep per instance norm. Instance norm makes
  every output pixel depend on per-channel statistics of whole feature maps, so a tile
  normalised with its own statistics would drift in colour and contrast from its neighbours:
  each sweep writes the next norm's input and adds up its float64 per-channel sums and sums of
  squares over the tiles' cores (which partition the image), and the next sweep normalises with
  the whole image's mean and variance as it reads the map. Each sweep's halo is its own layers'
  receptive growth (2 to 8 px), and the layers pad at the image border as the whole forward does,
  so the output is the whole-image forward's up to summation order and the rounding of the stored
  maps (float32 for fp32: `WeatherGenerator.storage_dtype`). Buffers: 3 ngf channels per pixel at
  the peak (768 bytes for ngf 64 in float32), against about 2000 bytes of a whole-image fp32
  forward; tiles run one per CPU core, each sweep's maps of a tile in the cache. On 2 CPU cores
  shared with a training job (load average 4 to 6), ngf 64, 9 blocks (bench/tpsence_speed.py):
  1.9x the MP/s of the eager whole-image forward at 0.3 MP and 2.0x at 4 MP (1.2x and 1.5x that
  forward with the same heap tuning), at least 99.998% of the 8-bit pixels identical to its; peak
  RSS 5.8 GiB at 4 MP against 7.4.

Working width (`work_width`; a registered weights entry may name its own): a generator trained on
photos scaled to ~256 px wide paints weather at that scale; on a 4000 px photo its streaks and its view of the scene are 16x too small.
With `work_width` W the generator runs on the image scaled to W px wide and its *change* (output
minus scaled input) is resized back and added to the untouched full-resolution photo, so the output
keeps the input's resolution and detail and gets weather at the scale the generator learnt. A tone
generator (`change="tone"`, rainkit.models.tpsence) does better still: its saturation, gain and offset maps are
smooth fields, so they are made at W, resized and applied to the full-resolution photo itself, whose every pixel
is then toned exactly as the imaging model says, with no resized image detail added back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rainkit.engine import TiledEngine, tune_cpu_allocator
from rainkit.errors import RainkitError
from rainkit.models.tpsence import ResnetGenerator
from rainkit.tiling import memory_budgets, run_single_pass

ALIGN = 4  # the generator's total stride
# Working memory per pixel of a whole-image forward (bytes) for ngf = 64 in fp32: the measured peak RSS growth of a
# CPU forward is about 1670 bytes per pixel; scales with ngf and halves for 16-bit precisions.
_BYTES_PER_PIXEL_NGF64 = 2000
# The single pass's tile side per device type. CPU: 128 and 256 px measured alike (640x480, ngf 64); at 256 px the
# 8 px halo of the largest sweep costs (1 + 16 / 256)^2 = 1.13x that sweep, and 4 px halos 1.06x the others. Other
# devices: large tiles, fewer kernel launches (not measured).
SINGLE_PASS_TILE = {"cpu": 256}
SINGLE_PASS_TILE_OTHER = 1024


def pad_to_multiple(x: torch.Tensor, multiple: int = ALIGN) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (replicate when too small)."""
    height, width = x.shape[2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class WeatherGenerator(TiledEngine):
    """A ready-to-run TPSeNCE generator (clear to rain, snow, ...). Build it with `load_generator`.

    Plans (`choose_plan`, `last_plan`, `last_tile`): "whole" or "single-pass" (module doc). `tile`: None chooses
    (on the CPU the single pass for images larger than a tile, elsewhere the whole image while it fits the memory
    budget), 0 forces the whole image, a positive value forces the single pass in tiles of that side. `memory_budget` / `max_memory`: as `rainkit.engine.TiledEngine`.
    `work_width`: 0 runs at native resolution; W runs at W px wide and adds the change back (module doc); None
    takes the registered weights entry's `work_width` (0 for a file no entry names).
    """

    arch = "tpsence"

    def __init__(self, model: ResnetGenerator, device: torch.device | str, *, work_width: int | None = None,
                 **engine: Any) -> None:
        super().__init__(model, device, **engine)
        if work_width is None:
            resolved = engine.get("weights")
            work_width = resolved.entry.work_width if resolved is not None and resolved.entry is not None else 0
        if work_width < 0:
            raise RainkitError(f"work width must be 0 (native resolution) or a positive width, got {work_width}")
        self.work_width = int(work_width)

    @classmethod
    def prepare_model(cls, model: nn.Module, arch: str, device: torch.device) -> ResnetGenerator:
        return model.float()  # fp16-stored weights run in fp32 parameters; NCHW: channels-last measured no faster here

    def bytes_per_pixel(self) -> int:
        per = _BYTES_PER_PIXEL_NGF64 * self.model.config["ngf"] / 64
        return int(per if self.precision == "fp32" else per / 2) + 64

    def tile_margin(self) -> int:
        return self.single_pass_plan().halo

    # ------------------------------------------------------------------ plans
    @property
    def storage_dtype(self) -> torch.dtype:
        """The single pass's buffers: float32 for fp32 (fp16 buffers left 99.08% of the 8-bit pixels of a 0.3 MP
        image and 99.36% of a 4 MP one identical to the whole-image forward's, against 99.999% and 99.998% with
        float32: bench/tpsence_speed.py), else the precision's own 16-bit type."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def choose_plan(self, height: int, width: int) -> tuple[str, int]:
        """(plan, tile side) for a padded image (class doc). Automatic, against the whole-image budget
        (`rainkit.tiling.memory_budgets`, or what `max_memory` leaves): on the CPU the single pass when the image
        spans more than one tile and it fits (faster than the whole image there: module doc; on the CPU maps that do not
        fit go to a temporary file: `single_pass_fits`), else the whole image when it fits, else the single pass when
        it fits; neither fitting is an error."""
        if self.tile == 0 or (self.tile is not None and self.tile >= max(height, width)):
            return "whole", 0
        tile = self.tile or SINGLE_PASS_TILE.get(self.device.type, SINGLE_PASS_TILE_OTHER)
        if self.tile is not None:
            self.last_spill = (None, 0)
            return "single-pass", tile
        whole_budget, _ = memory_budgets(self.working_budget(height, width), self.device)
        single = tile < max(height, width) and self.single_pass_fits(height, width, tile, whole_budget)
        if single and self.device.type == "cpu":
            return "single-pass", tile
        if height * width * self.bytes_per_pixel() <= whole_budget:
            return "whole", 0
        if single:
            return "single-pass", tile
        need = self.single_pass_bytes(height, width, tile)
        raise RainkitError(f"a {width}x{height} image needs {need / 2**30:.2f} GiB to generate in tiles, more than "
                           f"the {whole_budget / 2**30:.2f} GiB budget (a larger --max-memory allows more)")

    # ---------------------------------------------------------------- running
    def generate_tensor(self, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, H, W) RGB in [0, 1] on the CPU -> the rainy version, (1, 3, H, W) float32 in [0, 1] on the CPU."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RainkitError(f"expected a (1, 3, H, W) tensor, got {tuple(x.shape)}")
        if self.device.type == "cpu" and self.max_memory is None:
            tune_cpu_allocator()  # the tiles' maps stay in the heap: 5-10% faster single pass (as for the derainer)
        _, _, height, width = x.shape
        padded = pad_to_multiple(x.float() * 2.0 - 1.0)
        plan, tile = self.choose_plan(*padded.shape[2:])
        self.last_plan, self.last_tile = plan, tile
        with torch.inference_mode(), self.autocast():
            if plan == "whole":
                out = self.model(padded.to(self.device)).float().cpu()
            else:
                out = run_single_pass(self.model.tile_sweeps, {"image": padded.to(self.device)}, tile=tile,
                                      storage=self.storage_dtype, device=self.device, on_tile=on_tile,
                                      in_memory=self.last_spill[0]).cpu()
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
        if self.model.residual and self.model.change == "tone":
            return self._tone_at_full_resolution(rgb, small)
        change = self._generate_native(small, on_tile) - small
        change = cv2.resize(change, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(rgb + change, 0.0, 1.0)

    def _tone_at_full_resolution(self, rgb: np.ndarray, small: np.ndarray) -> np.ndarray:
        """A tone generator at a working width: its maps, made on `small`, resized to `rgb`'s size and applied
        to `rgb` itself (module doc). The small image runs whole (a working width is a few hundred pixels)."""
        height, width = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32))[None] * 2.0 - 1.0
        with torch.inference_mode(), self.autocast():
            maps = self.model.model(pad_to_multiple(x).to(self.device)).float().cpu()
        maps = F.interpolate(maps[:, :, :small.shape[0], :small.shape[1]], size=(height, width), mode="bilinear",
                             align_corners=False)
        full = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None] * 2.0 - 1.0
        with torch.inference_mode():
            out = self.model.apply_change(full, maps)
        return ((out[0] + 1.0) * 0.5).clamp_(0.0, 1.0).numpy().transpose(1, 2, 0)

    def _generate_native(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return self.generate_tensor(x, on_tile)[0].numpy().transpose(1, 2, 0)

    def describe(self) -> dict:
        """The engine's record, with the plan and tile side the last image ran with."""
        return {**super().describe(), "work_width": self.work_width, "plan": self.last_plan, "tile": self.last_tile}


def load_generator(weights: str | Path, device: str | torch.device = "cpu", precision: str = "fp32", *,
                   tile: int | None = None, max_memory: int | str | None = None,
                   work_width: int | None = None) -> WeatherGenerator:
    """A `WeatherGenerator` from a registered `tpsence.*` name or a weights file (e.g. a run's
    `generator.safetensors`; fp16-stored weights are loaded into fp32 parameters). `max_memory` ("3G") caps the
    process's memory: a large image then runs in the single pass while its buffers fit under it. `work_width`:
    None = the registered entry's width (0 for a file no entry names), 0 = native resolution, W = W px wide."""
    return WeatherGenerator.load("tpsence", weights, device=device, precision=precision, tile=tile,
                                 max_memory=max_memory, work_width=work_width)


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
