"""Every SAPNet loss term carries a gradient to the derain network (unlike the official LPIPS term)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from rainkit.errors import WeightsError
from rainkit.hub import create_model
from rainkit.losses.perceptual import (ContrastiveLoss, LPIPSLoss, SegmentationFocalLoss, VGGFeatures,
                                       load_lpips_linear, load_vgg16_features)
from rainkit.losses.ssim import SSIMLoss, ssim
import tests.tolerances as TOL


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return make_layers(cfgs["D"])  # VGG-16's trunk; random weights suffice to show the gradient path


def _moves_derain_params(loss_fn) -> None:
    torch.manual_seed(0)
    model = create_model("sapnet", "tiny")
    rainy = torch.rand(2, 3, 32, 32)
    clean = (rainy * 0.8).clamp(0, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss = loss_fn(model(rainy), clean, rainy)
    assert loss.requires_grad, "the loss is detached from the network"
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_ssim_loss_moves_parameters_and_is_one_on_identity():
    x = torch.rand(1, 3, 24, 24)
    assert torch.allclose(ssim(x, x), torch.ones(1))
    loss = SSIMLoss()
    _moves_derain_params(lambda out, clean, rainy: loss(out, clean))


def test_contrastive_loss_moves_parameters(trunk):
    loss = ContrastiveLoss(VGGFeatures(trunk))
    _moves_derain_params(loss)


def test_contrastive_loss_prefers_the_clean_image(trunk):
    loss = ContrastiveLoss(VGGFeatures(trunk))
    clean, rainy = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert loss(clean, clean, rainy) < loss(rainy * 0.9 + clean * 0.1, clean, rainy)


def test_lpips_loss_moves_parameters(trunk):
    torch.manual_seed(0)
    channels = [64, 128, 256, 512, 512]
    lpips = LPIPSLoss(VGGFeatures(trunk, ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
                      [torch.rand(c) for c in channels])
    _moves_derain_params(lambda out, clean, rainy: lpips(out, clean))
    x = torch.rand(1, 3, 32, 32)
    assert float(lpips(x, x)) == pytest.approx(0.0, abs=TOL.ZERO_FP32)


def test_segmentation_focal_loss_moves_parameters():
    torch.manual_seed(0)
    segmenter = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    focal = SegmentationFocalLoss(segmenter)
    _moves_derain_params(lambda out, clean, rainy: focal(out, clean))
    assert all(not p.requires_grad for p in segmenter.parameters()), "the segmenter stays frozen"


def test_missing_backbone_weights_fail_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="--vgg-weights.*loss.contrastive=0"):
        load_vgg16_features(None)
    with pytest.raises(WeightsError, match="--lpips-weights.*loss.lpips=0"):
        load_lpips_linear(None)


def test_l1_term_moves_parameters_and_sees_the_tone_shift_ssim_misses():
    from rainkit.train.config import load_config
    from rainkit.train.sapnet import build_loss_terms

    config = load_config(overrides=["loss.contrastive=0", "loss.lpips=0", "loss.segmentation=0", "loss.l1=1"])
    terms = build_loss_terms(config, torch.device("cpu"))
    assert set(terms) == {"ssim", "l1"}
    weight, l1 = terms["l1"]
    _moves_derain_params(l1)
    clean = torch.rand(1, 3, 48, 48) * 0.5 + 0.25
    shifted = clean - 0.025  # a uniform darkening, as a veil wrongly removed
    ssim_cost = 1 - float(ssim(shifted, clean))
    l1_cost = float(l1(shifted, clean, clean))
    assert ssim_cost < 0.005 and l1_cost == pytest.approx(0.025, abs=TOL.FP32), (ssim_cost, l1_cost)
