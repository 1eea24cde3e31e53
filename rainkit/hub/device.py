"""Device and precision resolution: the one place that decides where and how models run."""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

from rainkit.errors import DeviceError, RainkitWarning

PRECISIONS = ("fp32", "fp16", "bf16")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user device string into a `torch.device`.

    `auto` picks cuda, then mps, then cpu. An explicit device that is not available is an
    error rather than a silent fallback. `CUDA_VISIBLE_DEVICES` is never touched: `cuda:N`
    indexes the devices the process can see.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{spec}' requested but CUDA is not available (use --device cpu or auto)")
        if ":" in spec:
            index_text = spec.split(":", 1)[1]
            if not index_text.isdigit():
                raise DeviceError(f"device '{spec}': the index after 'cuda:' must be a number")
            index = int(index_text)
            count = torch.cuda.device_count()
            if index >= count:
                raise DeviceError(f"device '{spec}' requested but only {count} CUDA device(s) are visible")
            return torch.device("cuda", index)
        return torch.device("cuda")
    raise DeviceError(f"unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class Precision:
    """How a forward pass runs: the autocast dtype, or plain fp32."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    def autocast(self):
        """A context manager that applies this precision to the forward pass."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


@functools.cache
def cpu_bf16_is_native() -> bool:
    """Whether this CPU runs bf16 convolutions at speed (oneDNN's bf16 kernels need AVX-512 or AMX). Without them
    torch emulates bf16, and SAPNet runs about 10 times slower than in fp32 (bench/derain_scaling.py on a 2-core AVX2
    EPYC: 0.15 MP in 204 s/MP against 21 s/MP)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return "AVX512" in torch.backends.cpu.get_cpu_capability()


def warn_if_bf16_emulated(device: torch.device, what: str = "precision bf16") -> None:
    """Say once, as a `RainkitWarning`, that bf16 on this CPU is emulated; the run goes on as asked."""
    if device.type == "cpu" and not cpu_bf16_is_native():
        warnings.warn(RainkitWarning(f"{what} on this CPU is emulated (it has no AVX-512 or AMX): about 10x slower "
                                     f"than fp32 here; use fp32"), stacklevel=3)


def resolve_precision(name: str | None, device: torch.device) -> Precision:
    """Validate a precision for a device.

    fp16 runs only on CUDA (CPU fp16 convolutions are slow and inaccurate); bf16 runs on CUDA
    and on CPUs, where it is offered because it stays close to fp32 on SAPNet: about 60 dB PSNR on float
    outputs, within 2 grey levels on 8-bit outputs (bench/derain_tiling.py, bench/derain_speed.py).
    """
    name = (name or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise DeviceError(f"unknown precision '{name}': use one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise DeviceError(f"precision fp16 needs a CUDA device (got {device.type}); use fp32, or bf16 on CPU")
    if name == "bf16" and device.type == "mps":
        raise DeviceError("precision bf16 is not supported on mps; use fp32")
    if name == "bf16":
        warn_if_bf16_emulated(device)
    return Precision(name, device)
