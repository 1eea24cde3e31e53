"""Tiled inference: planning, seams, global pooling statistics, automatic tile size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rainkit.derain.engine import Derainer
from rainkit.derain.tiling import plan_tiles
from rainkit.hub import create_model
from tests.conftest import rainy_like


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _derainer(arch: str, tile, halo=32, budget=None) -> Derainer:
    torch.manual_seed(0)
    model = create_model(arch, "tiny").eval().to(memory_format=torch.channels_last)
    return Derainer(model, arch, None, "0" * 64, None, torch.device("cpu"), "fp32", tile, halo=halo, memory_budget=budget)


def test_cores_partition_the_image():
    boxes = plan_tiles(100, 130, 48, halo=10, blend=4)
    cover = np.zeros((100, 130), int)
    for box in boxes:
        y0, y1, x0, x1 = box.core
        cover[y0:y1, x0:x1] += 1
        iy0, iy1, ix0, ix1 = box.inp
        assert iy0 <= box.out[0] <= y0 and y1 <= box.out[1] <= iy1
        assert ix0 <= box.out[2] <= x0 and x1 <= box.out[3] <= ix1
    assert (cover == 1).all()


@pytest.mark.parametrize("arch", ["sapnet", "prenet"])
def test_tiled_output_matches_whole_image(arch):
    image = rainy_like(150, 170)
    whole = _derainer(arch, 0).derain(image)
    tiled = _derainer(arch, 48).derain(image)
    assert _psnr(tiled, whole) > 60


def test_global_pooling_is_what_makes_small_tiles_exact():
    from rainkit.derain.tiling import run_tiled

    derainer = _derainer("sapnet", 0)
    x = torch.from_numpy(rainy_like(150, 170).transpose(2, 0, 1).copy())[None]
    whole = derainer.derain_tensor(x)[0].numpy()
    local = run_tiled(derainer._forward, x, tile=40, halo=32, global_pooling=False, device=torch.device("cpu"))[0].numpy()
    exact = run_tiled(derainer._forward, x, tile=40, halo=32, global_pooling=True, device=torch.device("cpu"))[0].numpy()
    assert _psnr(exact, whole) > _psnr(local, whole)


def test_automatic_tile_follows_the_memory_budget():
    derainer = _derainer("sapnet", None, halo=16, budget=2_000_000)
    tile = derainer.choose_tile(600, 800)
    assert 64 <= tile < 600
    assert _derainer("sapnet", None, budget=10**12).choose_tile(600, 800) == 0
    assert _derainer("sapnet", 0).choose_tile(600, 800) == 0
    assert _derainer("sapnet", 5000).choose_tile(600, 800) == 0  # a tile larger than the image is no tiling


def test_large_image_tiles_and_reports_progress():
    derainer = _derainer("prenet", None, halo=16, budget=3_000_000)
    steps = []
    out = derainer.derain(rainy_like(300, 420), on_tile=lambda done, total: steps.append((done, total)))
    assert out.shape == (300, 420, 3) and derainer.last_tile > 0
    assert steps and steps[-1][0] == steps[-1][1]
