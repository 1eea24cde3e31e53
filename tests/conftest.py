"""Shared fixtures. Data and reference weights come from ../shared (or $RAINKIT_SHARED); tests
that need them skip with the reason when it is absent. No test touches the network or the user's
real cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def shared_root() -> Path | None:
    root = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
    return root if root.is_dir() else None


@pytest.fixture
def shared() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip("../shared (or $RAINKIT_SHARED) is not available: reference data and weights are absent")
    return root


def shared_file(relative: str) -> Path:
    root = shared_root()
    path = root / relative if root else None
    if path is None or not path.exists():
        pytest.skip(f"{relative} not found under ../shared (or $RAINKIT_SHARED)")
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty weights cache and no inherited search path."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("RAINKIT_CACHE", str(cache))
    monkeypatch.delenv("RAINKIT_WEIGHTS_PATH", raising=False)
    return cache


@pytest.fixture
def shared_weights_path(shared, monkeypatch) -> Path:
    """Put ../shared/weights on RAINKIT_WEIGHTS_PATH, the offline mirror of the official checkpoints."""
    weights = shared / "weights"
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(weights))
    return weights


@pytest.fixture
def tiny_sapnet_file(tmp_path) -> Path:
    """A tiny SAPNet with fixed random weights saved in rainkit's own safetensors format."""
    from rainkit.hub import create_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.registry import get_arch

    torch.manual_seed(0)
    kwargs = dict(get_arch("sapnet").variants["tiny"])
    model = create_model("sapnet", **kwargs)
    return save_checkpoint(tmp_path / "tiny-sapnet.safetensors", model, "sapnet", kwargs)


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's parameters and buffers, for bit-for-bit comparisons of training runs."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def rainy_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image with thin bright streaks: structure for the network to act on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], axis=2)
    streaks = (rng.random((height, width)) > 0.995).astype(np.float32)
    return np.clip(base + 0.4 * streaks[:, :, None] + 0.02 * rng.standard_normal((height, width, 3)), 0, 1).astype(np.float32)


def run_two_ranks(script: str, out_dir: Path, timeout: float = 180) -> list[str]:
    """Run `script` (given `out_dir` as argv[1]) as ranks 0 and 1 of a gloo process group on loopback;
    asserts both succeed and returns the DIGEST each printed."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(out_dir)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    return [next(line.split()[1] for line in out.splitlines() if line.startswith("DIGEST")) for out, _ in outputs]
