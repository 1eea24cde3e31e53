"""Files of a training run shared by the trainers: atomic checkpoints and the code's commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch


def _on_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(value) for value in obj)
    return obj


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through a temporary file and a rename, so a kill never leaves half a checkpoint. Tensors are
    saved from the CPU, so a checkpoint written on a GPU loads anywhere (resuming moves them back)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(_on_cpu(obj), tmp)
    os.replace(tmp, path)


def git_commit() -> str | None:
    """The commit of the rainkit checkout the code runs from, for run cards (None outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
