"""The one atomic writer: every file rainkit writes goes through a temporary file in the target folder,
is flushed to disk, and is renamed over the target, so a crash or a kill never leaves half a file behind
and a reader sees the old file or the new one, never a mix.

`atomic_write(path)` is the primitive (a binary file object); the helpers below it cover what rainkit
writes: bytes, text, JSON, torch checkpoints, safetensors and matplotlib figures. Heavy libraries are
imported inside the helper that needs them, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def default_file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp's 0o600 would hide outputs."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path` for binary writing; on a clean exit it is flushed, synced and
    renamed to `path`; on an exception (or a kill) it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, default_file_mode())
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as out:
        out.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """JSON with a trailing newline (the form of every sidecar, card and summary rainkit writes)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def _on_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(value) for value in obj)
    return obj


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save of `obj` with every tensor moved to the CPU first, so a checkpoint written on a GPU loads
    anywhere (resuming moves the tensors back)."""
    import torch

    with atomic_write(path) as out:
        torch.save(_on_cpu(obj), out)
    return Path(path)


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def atomic_save_figure(path: str | os.PathLike, figure, dpi: int = 100) -> Path:
    """A matplotlib `Figure` (made with the `Figure` API, so no pyplot backend is touched) in the format of
    the suffix."""
    path = Path(path)
    with atomic_write(path) as out:
        figure.savefig(out, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path
