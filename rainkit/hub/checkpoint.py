"""Safe checkpoint reading and strict state-dict loading.

Only two formats are read: safetensors, and `.pth`/`.pt` files through
`torch.load(weights_only=True)`, whose restricted unpickler refuses any object that is not a
tensor or a plain container, so a malicious checkpoint is rejected before any of its code runs.

A safetensors checkpoint may also be a sharded set (the Hugging Face convention):
`model-00001-of-0000N.safetensors` ... and `model.safetensors.index.json`, whose `weight_map` names
the shard of every tensor and whose `metadata` holds the set's string metadata (rainkit's
architecture keys) and `total_size`. rainkit's index also records each shard's sha256 and size
(`rainkit.shards`), checked on reading, so the index file's own sha256 pins the whole set.
`save_sharded` / `shard_checkpoint` write such a set; `read_state_dict` and `read_metadata` read
the index file (or a folder holding one) like a single file.
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
    if path.is_dir() and find_index(path) is not None:
        path = find_index(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: weights file is empty")
    if is_index_path(path):
        return normalize_state_dict(read_sharded(path), source=path)
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
    if path.is_dir() and find_index(path) is not None:
        path = find_index(path)
    if is_index_path(path):
        metadata = read_index(path).get("metadata") or {}
        return {str(k): v for k, v in metadata.items() if isinstance(v, str)}
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


# ---------------------------------------------------------------------------------------------- sharded sets
INDEX_SUFFIX = ".safetensors.index.json"
INDEX_NAME = "model" + INDEX_SUFFIX
SHARDS_KEY = "rainkit.shards"  # index key: {shard file: {"sha256": ..., "bytes": ...}}


def is_index_path(path: str | Path) -> bool:
    """Whether `path` names the index of a sharded safetensors set (`*.safetensors.index.json`)."""
    return str(path).endswith(INDEX_SUFFIX)


def find_index(folder: str | Path) -> Path | None:
    """The index of the sharded set in `folder`: `model.safetensors.index.json`, else the only
    `*.safetensors.index.json` there; None when there is none (or several)."""
    folder = Path(folder)
    if (folder / INDEX_NAME).is_file():
        return folder / INDEX_NAME
    found = sorted(p for p in folder.glob("*" + INDEX_SUFFIX) if p.is_file())
    return found[0] if len(found) == 1 else None


def read_index(path: str | Path) -> dict[str, Any]:
    """A sharded set's index, checked for shape: `weight_map` of tensor name -> shard file name."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the shard index ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: not a valid shard index ({first_line(exc, 120)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
        raise WeightsError(f"{path}: not a shard index (needs a 'weight_map' of tensor names to shard file names "
                           f"in the same folder)")
    if not isinstance(index.get("metadata", {}), dict):
        raise WeightsError(f"{path}: the shard index's 'metadata' is not an object")
    return index


def read_sharded(index_path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded set, checked against its index: every shard present, of the
    recorded sha256 where the index records one, and holding exactly the tensors the index maps to it."""
    from safetensors.torch import load_file

    from rainkit.hub.weights import sha256_file

    index_path = Path(index_path)
    index = read_index(index_path)
    folder = index_path.parent
    expected: dict[str, list[str]] = {}
    for name, shard in index["weight_map"].items():
        expected.setdefault(shard, []).append(name)
    missing = [shard for shard in expected if not (folder / shard).is_file()]
    if missing:
        raise WeightsError(f"{index_path}: {len(missing)} of {len(expected)} shards missing beside it: "
                           f"{_preview(missing)}")
    recorded = index.get(SHARDS_KEY) if isinstance(index.get(SHARDS_KEY), dict) else {}
    state: dict[str, torch.Tensor] = {}
    for shard, names in expected.items():
        path = folder / shard
        digest = (recorded.get(shard) or {}).get("sha256") if isinstance(recorded.get(shard), dict) else None
        if digest and sha256_file(path) != digest:
            raise WeightsError(f"{path}: sha256 {sha256_file(path)[:12]}… is not the {str(digest)[:12]}… its index "
                               f"{index_path.name} records: a modified or partly copied shard")
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"{path}: not a readable safetensors shard ({first_line(exc, 160)})") from None
        absent = [n for n in names if n not in tensors]
        extra = sorted(set(tensors) - set(names))
        if absent or extra:
            parts = ([f"missing {len(absent)}: {_preview(absent)}"] if absent else []) + (
                [f"not in the index {len(extra)}: {_preview(extra)}"] if extra else [])
            raise WeightsError(f"{path}: does not hold what {index_path.name} maps to it ({'; '.join(parts)})")
        state.update(tensors)
    return state


def plan_shards(state: Mapping[str, torch.Tensor], max_bytes: int, metadata: Mapping[str, str] | None = None
                ) -> list[list[str]]:
    """Tensor names grouped into shards, in order, each shard's file (tensor bytes plus a generous estimate
    of its JSON header: the metadata and ~100 bytes a tensor) at most `max_bytes`; a tensor too large
    for any shard gets one of its own."""
    base = 64 + sum(len(str(k)) + len(str(v)) + 8 for k, v in (metadata or {}).items())
    shards: list[list[str]] = [[]]
    used = base
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size() + len(name) + 100
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = base
        shards[-1].append(name)
        used += size
    return shards


def save_sharded(folder: str | Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 max_bytes: int = 15 * 2**20, prefix: str = "model") -> Path:
    """Write `state` as `prefix-0000k-of-0000N.safetensors` shards of at most `max_bytes` each and
    their index `prefix.safetensors.index.json` (metadata, shard sha256s); returns the index path.
    Each shard carries `metadata` too. Shards of an earlier set with the same prefix are removed."""
    from rainkit.hub.weights import sha256_file
    from rainkit.io.atomic import atomic_save_safetensors, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    plan = plan_shards(state, max_bytes, {"format": "pt", **metadata})
    count = len(plan)
    for old in folder.glob(f"{prefix}-*-of-*.safetensors"):
        old.unlink()
    weight_map: dict[str, str] = {}
    shards: dict[str, dict[str, Any]] = {}
    total = 0
    for i, names in enumerate(plan, 1):
        shard = f"{prefix}-{i:05d}-of-{count:05d}.safetensors"
        path = atomic_save_safetensors(folder / shard, {n: state[n] for n in names}, {"format": "pt", **metadata})
        if path.stat().st_size > max_bytes and len(names) > 1:
            raise WeightsError(f"{path}: {path.stat().st_size} bytes, over the {max_bytes} asked for")
        shards[shard] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for n in names:
            weight_map[n] = shard
            total += state[n].numel() * state[n].element_size()
    index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map, SHARDS_KEY: shards}
    return atomic_write_json(folder / f"{prefix}{INDEX_SUFFIX}", index)


def shard_checkpoint(source: str | Path, folder: str | Path, max_bytes: int = 15 * 2**20,
                     prefix: str = "model") -> Path:
    """Re-write a safetensors file (e.g. a run's `generator.safetensors`) as a sharded set, tensors and
    metadata unchanged; returns the index path."""
    from safetensors.torch import load_file

    source = Path(source)
    if source.suffix != ".safetensors":
        raise WeightsError(f"{source}: only a .safetensors file can be sharded")
    return save_sharded(folder, load_file(str(source), device="cpu"), read_metadata(source), max_bytes, prefix)
