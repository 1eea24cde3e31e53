"""What the TPSeNCE bench scripts share: paths, a fixed random generator, one variant per fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RAINKIT_SHARED", REPO.parent / "shared"))
DEFAULT_IMAGE = SHARED / "data/weather/clear/camvid_segnet/0016E5_02250.jpg"


def random_generator(folder: Path, ngf: int, blocks: int) -> str:
    """A generator with fixed random weights (seed 0) saved in rainkit's format: speed and memory do
    not depend on training. Returns the file's path."""
    import torch

    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.models.tpsence import ResnetGenerator, init_weights

    torch.manual_seed(0)
    kwargs = {"ngf": ngf, "n_blocks": blocks}
    return str(save_checkpoint(Path(folder) / "g.safetensors", init_weights(ResnetGenerator(**kwargs), 0.02),
                               "tpsence", kwargs))


def bench_image(path: str | Path, size: str):
    """The photo at `path` resized to `size` ("WxH"), float32 RGB; a smooth pattern with a little noise when the
    photo is absent (no ../shared)."""
    import numpy as np

    width, height = (int(v) for v in size.split("x"))
    if Path(path).is_file():
        import cv2

        from rainkit.data.images import read_image

        rgb = read_image(path).rgb
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1).astype(np.float32)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 37.0 + c) * np.cos(yy / 29.0 - c) for c in range(3)], axis=2)
    return np.clip(base + 0.03 * rng.standard_normal((height, width, 3)), 0, 1).astype(np.float32)


def run_variant(script: str, variant: str, args: list[str]) -> dict:
    """Run `script --variant VARIANT ARGS` in a fresh process; its last stdout line is a JSON record."""
    cmd = [sys.executable, script, "--variant", variant, *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
