"""Safe checkpoint reading and strict state-dict loading.

Only two formats are read: safetensors, and `.pth`/`.pt` files through
`torch.load(weights_only=True)`, whose restricted unpickler refuses any object that is not a
tensor or a plain container, so a malicious checkpoint is rejected before any of its code runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch

from rainkit.errors import UnsafeCheckpointError, WeightsError

# Containers research code wraps its state dicts in.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params", "params_ema", "generator")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a plain `{name: tensor}` dict on the CPU, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: weights file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
            raise UnsafeCheckpointError(
                f"{path}: refused, the checkpoint carries pickled objects that are not plain tensors "
                f"({first_line[:160]}); rainkit never unpickles arbitrary code"
            ) from None
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    return normalize_state_dict(raw, source=path)


def normalize_state_dict(raw, source: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Unwrap common containers and strip DataParallel / compile prefixes, in one place."""
    state = raw
    for _ in range(3):
        if isinstance(state, Mapping) and not _all_tensors(state):
            inner = next((state[k] for k in _WRAPPER_KEYS if k in state and isinstance(state[k], Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not state or not _all_tensors(state):
        raise WeightsError(f"{source}: no state dict of tensors found in the checkpoint")
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    stripped = True
        clean[name] = value
    return clean


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path = "<checkpoint>",
                           strict: bool = True) -> None:
    """Load `state` into `model`; with `strict`, any missing, unexpected or misshapen key is an error listing them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch {len(mismatched)}: {_preview(mismatched)}")
        raise WeightsError(f"{source}: does not fit {type(model).__name__} ({'; '.join(parts)})")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _preview(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


ARCH_KEY = "rainkit.arch"
KWARGS_KEY = "rainkit.arch_kwargs"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def save_checkpoint(path: str | Path, model: torch.nn.Module, arch: str, arch_kwargs: dict | None = None,
                    extra: dict[str, str] | None = None) -> Path:
    """Save rainkit's own format: safetensors with bare keys, plus the architecture in the metadata,
    so the file alone says how to rebuild the network. Written atomically."""
    import json

    from rainkit.io.atomic import atomic_save_safetensors

    metadata = {ARCH_KEY: arch, KWARGS_KEY: json.dumps(arch_kwargs or {}, sort_keys=True), **(extra or {})}
    return atomic_save_safetensors(path, model.state_dict(), metadata)
