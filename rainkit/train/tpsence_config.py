"""TPSeNCE training configuration, with the paper's (and its released `train.sh`'s) defaults.

Values come from the dataclass defaults, then a JSON/TOML file, then keyword values, then
`--set key=value` overrides converted by the type of the field they replace (never evaluated).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rainkit.errors import RainkitError


@dataclass
class TPSeNCEConfig:
    # ---- data: unpaired clear (source) and rainy (target) images with their label maps
    crop: int = 256  # training crop side
    load_size: int = 640  # scale each image to this width before cropping (CUT's scale_width_and_crop); 0 = native
    flip: bool = True  # random horizontal flips
    batch: int = 32  # global batch, split over DDP ranks (released train.sh: 32 over 8 GPUs)
    samples_per_epoch: int = 0  # 0: max(#clear, #rainy), as CUT's unaligned datasets

    # ---- networks (CUT defaults)
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    antialias: bool = True
    antialias_up: bool = True
    # Generator output = input + the learned change, identity at initialisation (rainkit.models.tpsence): a
    # deviation from CUT/TPSeNCE, off by default, for runs too short to learn to reproduce the photo first.
    residual: bool = False
    # With residual: "rgb" (the change is added to the input) or "tone" (grey saturation, gain and offset maps:
    # no hue shifts; rainkit.models.tpsence). Also a deviation from CUT/TPSeNCE.
    change: str = "rgb"
    init_gain: float = 0.02  # Xavier-normal gain
    netf_nc: int = 256  # MLP head output channels

    # ---- losses
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])
    num_patches: int = 256
    nce_t: float = 0.07
    nce_idt: bool = True  # identity NCE on target images: NCE(G(y), y) (CUT mode)
    lambda_gan: float = 1.0
    lambda_nce: float = 1.0
    lambda_tps: float = 1.0
    sence: bool = True  # False: CUT's plain PatchNCE (no OT re-weighting)
    ot_eps: float = 1.0  # entropic regularisation of the Sinkhorn plan
    ot_iters: int = 50
    neg_term_weight: float = 1.0
    plan_grad: bool = False  # back-propagate through the Sinkhorn plan (the released code does)

    # ---- optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_epochs: int = 100  # epochs at the initial learning rate
    n_epochs_decay: int = 100  # then linear decay towards zero over these epochs
    seed: int = 0
    max_steps: int = 0  # stop (with a checkpoint and an export) after this many steps in total; 0 = no limit
    max_minutes: float = 0.0  # stop (likewise) once this run has trained this long; 0 = no limit
    # Continue from an earlier run's weights with fresh optimisers: a folder (a run's, or what a GPU session
    # brought back: the generator as generator.safetensors or a sharded model.safetensors.index.json set, D and
    # the MLP heads from networks.safetensors when it is there), or a generator file or registered name.
    init: str | None = None
    # The learning-rate schedule goes on from this epoch (a run continued with `init` after that many epochs of
    # the same schedule): the run trains the remaining n_epochs + n_epochs_decay - epoch_offset epochs.
    epoch_offset: int = 0

    # ---- run
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (weights, losses and Sinkhorn stay fp32)
    cpu_bf16: bool = False  # bf16 autocast on the CPU too: about 2x faster on CPUs with bf16 units, not bit-exact
    # auto: channels-last networks and batches on CUDA (cuDNN's native layout for bf16 convolutions), the
    # default layout elsewhere; channels_last or contiguous force one (the results agree to rounding).
    memory_format: str = "auto"
    # auto: on CUDA, a background thread makes the next batch (crops, label agreement, the NCE patch positions)
    # while the GPU runs the current step; on or off force it. The batches and positions are the same either way.
    prefetch: str = "auto"
    log_every: int = 10
    sample_every: int = 200  # steps between sample grids (clear | generated | rainy); 0 = never
    plot_curves: bool = True  # write curves.png at every epoch end (matplotlib)
    out: str = "runs/tpsence"
    export_fp16: bool = False  # store the exported generator in fp16 (half the size)

    @property
    def epochs(self) -> int:
        """Epochs this run trains: the schedule's, less those done before `init` (`epoch_offset`)."""
        return self.n_epochs + self.n_epochs_decay - self.epoch_offset

    def generator_kwargs(self) -> dict[str, Any]:
        return {"ngf": self.ngf, "n_blocks": self.n_blocks, "antialias": self.antialias,
                "antialias_up": self.antialias_up, "residual": self.residual,
                "change": self.change}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.crop < 16 or self.crop % 4:
            raise RainkitError(f"crop must be a multiple of 4 and at least 16, got {self.crop}")
        if self.num_patches < 2:
            raise RainkitError("num_patches must be at least 2 (one positive and one negative)")
        if not self.nce_layers:
            raise RainkitError("nce_layers is empty")
        if self.batch < 1 or self.n_epochs < 0 or self.n_epochs_decay < 0 or self.n_epochs + self.n_epochs_decay < 1:
            raise RainkitError("batch must be positive and n_epochs + n_epochs_decay at least 1")
        if self.epoch_offset < 0 or self.epochs < 1:
            raise RainkitError(f"epoch_offset {self.epoch_offset} leaves no epoch of the schedule's "
                               f"{self.n_epochs + self.n_epochs_decay} to train")
        if self.change not in ("rgb", "tone") or (self.change == "tone" and not self.residual):
            raise RainkitError(f"change must be rgb or tone (tone with residual=true), got {self.change}")
        if self.prefetch not in ("auto", "on", "off"):
            raise RainkitError(f"prefetch must be auto, on or off, got {self.prefetch}")
        if self.nce_t <= 0 or self.ot_eps <= 0:
            raise RainkitError("nce_t and ot_eps must be positive")


TINY_OVERRIDES = ["ngf=4", "n_blocks=1", "ndf=4", "n_layers_d=2", "netf_nc=8", "nce_layers=0,4,8,12",
                  "num_patches=16", "crop=32", "load_size=0", "batch=2", "device=cpu", "n_epochs=1",
                  "n_epochs_decay=1", "sample_every=0", "ot_iters=10"]
"""A tiny variant for tests: a 4-channel, 1-block generator on 32-pixel crops."""


def load_tpsence_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        **direct: Any) -> TPSeNCEConfig:
    """Defaults, then the file (JSON, or TOML on Python 3.11+), then keyword values, then overrides."""
    from rainkit.train.config import build_config

    config = build_config(TPSeNCEConfig(), path, overrides, **direct)
    config.validate()
    return config
