"""Safe checkpoint reading and strict state-dict loading.

Only two formats are read: safetensors, and `.pth`/`.pt` files through
`torch.load(weights_only=True)`, whose restricted unpickler refuses any object that is not a
tensor or a plain container, so a malicious checkpoint is rejected before any of its code runs.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from rainkit.errors import UnsafeCheckpointError, WeightsError, first_line

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
            raise WeightsError(f"{path}: not a readable safetensors file ({first_line(exc, 160)})") from None
        return normalize_state_dict(raw, source=path)
    kind = _torch_file_kind(path)
    if kind is None:
        raise WeightsError(f"{path}: not a PyTorch checkpoint, it is {_describe_content(path)}")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused: this {kind} holds {_refused_object(exc)}, not only tensors, and rainkit never runs "
            f"code from a weights file; if you trust its source, convert it once with "
            f"`rainkit weights convert {path} {path.with_suffix('.safetensors')} --trust-source`"
        ) from None
    except Exception as exc:  # torch raises KeyError, RuntimeError, EOFError, ... for damaged files
        raise WeightsError(f"{path}: a damaged or unreadable {kind} ({type(exc).__name__}: {first_line(exc, 160)})") from None
    return normalize_state_dict(raw, source=path)



_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refused_object(exc: pickle.UnpicklingError) -> str:
    """What torch's restricted unpickler refused, from its message (e.g. `posix.system`)."""
    found = _BLOCKED_GLOBAL.search(str(exc))
    if found:
        return f"a pickled reference to {found.group(1)}"
    return "pickled objects of a kind torch's safe loader does not allow"


def _torch_file_kind(path: Path) -> str | None:
    """What kind of PyTorch file this is by its first bytes, or None when it is none of them."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "PyTorch zip checkpoint"
    if head[:1] == b"\x80":
        return "legacy pickled PyTorch checkpoint"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "legacy tar PyTorch checkpoint"
    return None


def _describe_content(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or any(ch < " " and ch not in "\t\n\r" for ch in text):
        return f"unrecognised binary data (starts with bytes {head[:8].hex(' ')})"
    if text.lstrip().startswith(("<!DOCTYPE", "<html", "<HTML")):
        return "an HTML page (a download that returned a web page instead of the file?)"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer file (fetch the real file with `git lfs pull`)"
    return "a text file"


def convert_trusted_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Re-save the tensors of a checkpoint the user trusts as safetensors, which rainkit then loads safely.

    This is the one place rainkit unpickles without restriction, and only on the user's explicit
    request (`rainkit weights convert --trust-source`): old checkpoints often pickle a whole model
    object or training arguments next to the weights.
    """
    source, target = Path(source), Path(target)
    if target.suffix != ".safetensors":
        raise WeightsError(f"{target}: the converted file must end in .safetensors")
    if _torch_file_kind(source) is None:
        raise WeightsError(f"{source}: not a PyTorch checkpoint, it is {_describe_content(source)}")
    try:
        raw = torch.load(str(source), map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle may need classes that are not importable here
        raise WeightsError(f"{source}: could not be read even as a trusted checkpoint ({type(exc).__name__}: "
                           f"{first_line(exc, 160)})") from None
    if isinstance(raw, torch.nn.Module):
        raw = raw.state_dict()
    state = normalize_state_dict(raw, source=source)
    from rainkit.io.atomic import atomic_save_safetensors

    return atomic_save_safetensors(target, {k: v.clone() for k, v in state.items()}, {})  # clone: no shared storage


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
        raise WeightsError(f"{path}: not a readable safetensors file ({first_line(exc, 160)})") from None


def weights_arch_kwargs(path: str | Path, metadata: Mapping[str, str], spec) -> dict[str, Any]:
    """The architecture settings a file's metadata records, checked against `spec`'s builder.

    A file made for another architecture, settings that are not a JSON object, an unknown
    setting or a value of the wrong type is a one-line error naming the file and the key.
    """
    import inspect

    if ARCH_KEY in metadata and metadata[ARCH_KEY] != spec.name:
        raise WeightsError(f"{path}: weights are for '{metadata[ARCH_KEY]}', not '{spec.name}'")
    if KWARGS_KEY not in metadata:
        return {}
    where = f"{path}: metadata '{KWARGS_KEY}'"
    try:
        kwargs = json.loads(metadata[KWARGS_KEY])
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{where} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(kwargs, dict):
        raise WeightsError(f"{where} must be a JSON object of settings, not {_json_type(kwargs)}")
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise WeightsError(f"{where} has unknown setting(s) {', '.join(unknown)} for '{spec.name}' "
                           f"(known: {', '.join(params)})")
    for key, value in kwargs.items():
        default = params[key].default
        if default is not inspect.Parameter.empty and not _same_kind(value, default):
            raise WeightsError(f"{where}: '{key}' must be {_json_type(default)} like {json.dumps(_jsonable(default))}, "
                               f"not {_json_type(value)} {json.dumps(value)}")
    return kwargs


def _same_kind(value, default) -> bool:
    """Whether a JSON value can stand for a builder default: numbers for numbers, lists for tuples."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, list) and all(_same_kind(v, default[0]) for v in value) if default else isinstance(value, list)
    if default is None:
        return True
    return isinstance(value, type(default))


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def save_checkpoint(path: str | Path, model: torch.nn.Module, arch: str, arch_kwargs: dict | None = None,
                    extra: dict[str, str] | None = None) -> Path:
    """Save rainkit's own format: safetensors with bare keys, plus the architecture in the metadata,
    so the file alone says how to rebuild the network. Written atomically."""
    from rainkit.io.atomic import atomic_save_safetensors

    metadata = {ARCH_KEY: arch, KWARGS_KEY: json.dumps(arch_kwargs or {}, sort_keys=True), **(extra or {})}
    return atomic_save_safetensors(path, model.state_dict(), metadata)
