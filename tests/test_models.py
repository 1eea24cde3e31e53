"""The networks: structure, fast path vs the official computation, official checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rainkit.hub import create_model
from rainkit.hub.checkpoint import load_state_dict_strict, read_state_dict
from rainkit.models import PooledStats
from tests.conftest import rainy_like, shared_file
import tests.tolerances as TOL


def _image_tensor(h=40, w=56, seed=0):
    return torch.from_numpy(rainy_like(h, w, seed).transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("arch", ["sapnet", "prenet"])
def test_fast_forward_equals_reference(arch):
    torch.manual_seed(0)
    model = create_model(arch, "tiny").eval()
    x = _image_tensor()
    with torch.no_grad():
        reference = model.forward_reference(x)
        fast = model(x)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
        batch = model(torch.cat([x, x.flip(-1)]))  # the batched path
    assert torch.allclose(fast, reference, atol=TOL.FP32_NETWORK)
    assert torch.allclose(channels_last, reference, atol=TOL.FP32_NETWORK)
    assert torch.allclose(batch[:1], reference, atol=TOL.FP32_NETWORK)


def test_training_path_gradients_equal_the_reference():
    torch.manual_seed(0)
    model = create_model("sapnet", "tiny")
    x = _image_tensor()
    model(x).square().mean().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.forward_reference(x).square().mean().backward()
    for name, param in model.named_parameters():
        assert torch.allclose(fast[name], param.grad, atol=TOL.FP32_GRAD_ABS, rtol=TOL.FP32_GRAD_REL), name
    assert sum(int(g.abs().sum() > 0) for g in fast.values()) >= len(fast) - 2  # all but a dead ReLU branch learn


def test_stages_and_receptive_radius():
    sapnet = create_model("sapnet")
    assert sapnet.receptive_radius() == 390  # 6 stages x (conv0 + gates + 2*(1+2+4+8+16) + out)
    assert create_model("prenet").receptive_radius() == 78
    _, stages = create_model("prenet", "tiny").eval()(_image_tensor(), return_stages=True)
    assert len(stages) == 2


def test_pooled_stats_with_true_means_reproduce_whole_image():
    torch.manual_seed(0)
    model = create_model("sapnet", "tiny").eval()
    x = _image_tensor()
    stats = PooledStats()
    with torch.no_grad():
        whole = model(x, pooled=stats)  # records every CRA layer over the whole image
        stats.fix()
        fixed = model(x, pooled=stats)  # pools to the recorded means
    assert sorted(stats.mean) == list(range(2 * 2 * 2))  # stages x blocks x CRA layers per block
    assert torch.allclose(whole, fixed, atol=TOL.FP32)


@pytest.mark.parametrize("arch,relative,params", [
    ("sapnet", "weights/sapnet-official/net_latest.pth", 180_483),
    ("prenet", "weights/prenet-official/rain100l/net_latest.pth", 168_963),
    ("prenet", "weights/prenet-official/rain100h/net_latest.pth", 168_963),
])
def test_official_checkpoints_load_strictly(arch, relative, params):
    model = create_model(arch)
    state = read_state_dict(shared_file(relative))
    load_state_dict_strict(model, state, relative)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("arch,relative", [
    ("sapnet", "weights/sapnet-official/net_latest.pth"),
    ("prenet", "weights/prenet-official/rain100h/net_latest.pth"),
])
def test_cli_matches_official_implementation(arch, relative, tmp_path):
    """`rainkit derain` output within one 8-bit level of the official test script on every pixel,
    and the float API output within 1e-4 of the official float output."""
    import cv2

    from rainkit.cli import main
    from rainkit.derain import load_derainer

    weights = shared_file(relative)
    rainy_path = shared_file("data/rain100l/rainy/rain-001.png")
    rgb = cv2.imread(str(rainy_path))[:, :, ::-1].astype(np.float32) / 255.0
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    model = create_model(arch).eval()
    load_state_dict_strict(model, read_state_dict(weights))
    with torch.no_grad():
        official = model.forward_reference(x)  # NCHW, separate gates, as the official code runs it
    official_u8 = np.uint8(255 * official.clamp(0, 1)[0].numpy().transpose(1, 2, 0))  # truncation, as its script saves

    derainer = load_derainer(arch, str(weights), device="cpu", tile=0)
    api = derainer.derain(rgb)
    assert np.abs(api - official[0].numpy().transpose(1, 2, 0)).max() < 1e-4

    assert main(["derain", str(rainy_path), "-o", str(tmp_path), "--model", arch, "--weights", str(weights), "--device", "cpu"]) == 0
    written = cv2.imread(str(tmp_path / "rain-001.png"))[:, :, ::-1]
    assert np.abs(written.astype(int) - official_u8.astype(int)).max() <= 1
