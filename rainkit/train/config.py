"""Training configuration: dataclass defaults (the SAPNet paper's), a JSON/TOML file, and
`--set key=value` overrides parsed by the type of the field they replace (never evaluated)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rainkit.errors import RainkitError

CHECKPOINT = "last.pt"  # a run's checkpoint in its folder
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # a trainer's `memory_format` settings
RUN_CONFIG = "config.json"  # a run's full settings in its folder, read back by a resume
DATA_FILE = "data.json"  # a run's data arguments where they are not settings (TPSeNCE's folders)


@dataclass
class LossWeights:
    ssim: float = 1.0  # negative SSIM
    contrastive: float = 0.1  # VGG-16 perceptual contrastive loss
    lpips: float = 0.1
    segmentation: float = 0.1  # background segmentation focal loss
    # Not in the paper (0 keeps its objective): L1 to the clean image. SSIM barely sees a uniform shift
    # of brightness (0.025 on mid-grey costs 0.001), so SSIM-only training can drift in tone and lose PSNR.
    l1: float = 0.0


@dataclass
class ModelConfig:
    width: int = 32
    stages: int = 6
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    reduction: int = 16


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # paired folders, or folders of clean images with `synthesize`
    synthesize: str | None = None  # rain preset (or a mix: light,heavy) to make pairs on the fly from clean images
    init: str | None = None  # start from these weights (registered name or file) with a fresh optimiser: fine-tuning
    val: str | None = None  # paired validation folder; default: a split of `data`
    val_fraction: float = 0.05
    val_max_side: int = 320  # centre-crop validation images to this size to keep epochs short on CPUs
    patch: int = 100
    patches_per_image: int = 16  # samples an image contributes to one epoch
    batch: int = 12  # global batch, split over DDP ranks
    epochs: int = 100
    lr: float = 1e-3
    milestones: list[int] = field(default_factory=lambda: [30, 50, 80])
    gamma: float = 0.2
    seed: int = 0
    max_steps: int = 0  # stop (with a checkpoint) after this many optimiser steps in total; 0 = no limit
    max_minutes: float = 0.0  # stop (with a checkpoint) once this run has trained this long; 0 = no limit
    log_every: int = 10
    plot_curves: bool = True  # write curves.png at every epoch end (matplotlib)
    # Processes that cut and rain the patches ahead of the model; -1: a few on CUDA (the GPU waits for
    # data otherwise), none on the CPU (the cores are busy with the model). Batches are the same either way.
    workers: int = -1
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # the same on the CPU (about 2x faster with AMX/AVX-512-BF16; weights stay fp32)
    # auto: channels-last networks and batches wherever it is faster (CUDA with autocast; the CPU, where a step is
    # 1.2x faster on an AVX2 EPYC); channels_last or contiguous force one (the results agree to rounding).
    memory_format: str = "auto"
    intensity: list[float] = field(default_factory=lambda: [0.5, 0.5])  # synthesised rain: intensity range
    jitter: float = 0.0  # synthesised rain: 0..1 spread of streak angle, length and width
    # Synthesised rain: this share of samples is left rain-free (rainy = clean), so the network learns to leave
    # clean regions as they are instead of smoothing every texture it meets (not in the paper; 0 keeps it out).
    clean_fraction: float = 0.0
    # This share of samples is cut from a copy of the image scaled so its short side is the patch: the patch then
    # holds the whole scene, so the image-wide channel attention learns a veil against the scene it belongs to,
    # as at inference (not in the paper; 0 keeps every patch at the photo's own scale).
    scene_fraction: float = 0.0
    out: str = "runs/sapnet"
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    segmenter_weights: str | None = None  # torchvision deeplabv3_mobilenet_v3_large state dict
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(text: str, current: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
        return None
    if origin is list or isinstance(current, list):
        inner = args[0] if args else int
        return [_coerce(part.strip(), None, inner, key) for part in text.strip("[]").split(",") if part.strip()]
    target = args[0] if args and origin is not None else hint
    try:
        if target is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if target is int:
            return int(text)
        if target is float:
            return float(text)
        return str(text)
    except ValueError:
        raise RainkitError(f"--set {key}={text}: expected {getattr(target, '__name__', target)}") from None


def apply_override(config: TrainConfig, assignment: str) -> None:
    """Apply `a.b=value` to the config, converting `value` to the field's type."""
    if "=" not in assignment:
        raise RainkitError(f"--set {assignment}: expected key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    target: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise RainkitError(f"--set {key}: unknown setting '{part}'")
        target = getattr(target, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    if name not in fields or dataclasses.is_dataclass(getattr(target, name)):
        from rainkit.registry import suggest

        raise RainkitError(f"--set {key}: unknown setting{suggest(name, fields)}")
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(text.strip(), getattr(target, name), hints[name], key))


def _apply_mapping(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _apply_mapping(target, value, f"{prefix}{key}.")
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            apply_override(target, f"{prefix}{key}={text}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a JSON or TOML (Python 3.11+) file, as nested mappings."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RainkitError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RainkitError(f"{path}: not valid TOML ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RainkitError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def build_config(config: Any, path: str | Path | None = None, overrides: list[str] | None = None,
                 **direct: Any) -> Any:
    """Fill a config dataclass: its defaults, then the file, then keyword values, then `--set` overrides."""
    if path:
        _apply_mapping(config, read_config_file(path))
    for key, value in direct.items():
        if value is not None:
            if not hasattr(config, key):
                raise RainkitError(f"unknown setting '{key}'")
            setattr(config, key, value)
    for assignment in overrides or []:
        apply_override(config, assignment)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **direct: Any) -> TrainConfig:
    """SAPNet training settings: defaults, then the file (JSON or TOML), then keyword values, then overrides."""
    return build_config(TrainConfig(), path, overrides, **direct)


def load_run_config(load: Callable[..., Any], run_dir: str | Path, path: str | Path | None = None,
                    overrides: list[str] | None = None, **direct: Any) -> Any:
    """The settings of a run to resume in folder `run_dir`: its own (`config.json`) unless a file is given,
    then keyword values and overrides, as `load(path, overrides, **direct)` (`load_config`,
    `load_tpsence_config`) builds them. A folder without a checkpoint is refused before any data is read."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise RainkitError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from (is `out` the run folder?)")
    if path is None and (run_dir / RUN_CONFIG).is_file():
        path = run_dir / RUN_CONFIG
        try:
            load(path)
        except RainkitError as exc:
            raise RainkitError(f"{path}: not the settings of a run of this trainer ({exc})") from None
    config = load(path, overrides, **direct)
    config.out = str(run_dir)
    return config
