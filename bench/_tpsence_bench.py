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


def run_variant(script: str, variant: str, args: list[str]) -> dict:
    """Run `script --variant VARIANT ARGS` in a fresh process; its last stdout line is a JSON record."""
    cmd = [sys.executable, script, "--variant", variant, *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
