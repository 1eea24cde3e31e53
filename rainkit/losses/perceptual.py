"""SAPNet's auxiliary losses: perceptual contrastive (VGG-16), LPIPS, and segmentation focal loss.

Every loss takes its (frozen) feature network as a constructor argument and is built once per
training run. Unlike the official code, the output's features are never detached or turned into
Python floats, so every term reaches the derain network (tests/test_losses.py proves it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rainkit.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features.
VGG16_RELU = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
VGG16_WEIGHTS = "vgg16.imagenet"  # registered in rainkit/models/auxiliary.py
LPIPS_WEIGHTS = "lpips.vgg-v0.1"


class VGGFeatures(nn.Module):
    """Frozen VGG-16 trunk returning the activations after the named ReLUs (inputs in [0, 1])."""

    def __init__(self, features: nn.Sequential, layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")):
        super().__init__()
        self.indices = [VGG16_RELU[name] for name in layers]
        self.trunk = features[: max(self.indices) + 1]
        for module in self.trunk:
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.trunk.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: no dropout/batch-norm updates whatever the caller does
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        outputs = []
        for index, module in enumerate(self.trunk):
            x = module(x)
            if index in self.indices:
                outputs.append(x)
        return outputs


def load_vgg16_features(path: str | Path | None = None) -> nn.Sequential:
    """torchvision's VGG-16 trunk with ImageNet weights, verified by sha256; never downloads.

    `path` is a file or a registered name; by default the registered `vgg16.imagenet`
    (torchvision's `vgg16-397923af.pth`) is looked for on the weights search path, which
    includes torchvision's own cache.
    """
    from torchvision.models import vgg16

    from rainkit.hub.checkpoint import load_state_dict_strict, read_state_dict
    from rainkit.hub.weights import resolve_auxiliary

    resolved = resolve_auxiliary(path, VGG16_WEIGHTS, "--vgg-weights",
                                  "--set loss.contrastive=0 --set loss.lpips=0")
    model = vgg16(weights=None)
    load_state_dict_strict(model, read_state_dict(resolved.path), source=resolved.path)
    return model.features


class ContrastiveLoss(nn.Module):
    """Perceptual contrastive loss: sum_i w_i |f_i(out) - f_i(clean)|_1 / |f_i(out) - f_i(rainy)|_1.

    Pulls the output towards the clean image (positive) and away from the rainy input (negative)
    in VGG feature space; layer weights 1/32, 1/16, 1/8, 1/4 as in the SAPNet paper.
    """

    def __init__(self, features: VGGFeatures, layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4), eps: float = 1e-7):
        super().__init__()
        if len(layer_weights) != len(features.indices):
            raise ValueError("one layer weight per VGG layer")
        self.features = features
        self.layer_weights = tuple(layer_weights)
        self.eps = eps

    def forward(self, output: torch.Tensor, clean: torch.Tensor, rainy: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            positives = self.features(clean)
            negatives = self.features(rainy)
        anchors = self.features(output)
        total = output.new_zeros(())
        for weight, a, p, n in zip(self.layer_weights, anchors, positives, negatives):
            total = total + weight * F.l1_loss(a, p) / (F.l1_loss(a, n) + self.eps)
        return total


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018), VGG variant: unit-normalised features, learned non-negative 1x1 weights."""

    def __init__(self, features: VGGFeatures, linear_weights: list[torch.Tensor]):
        super().__init__()
        if len(linear_weights) != len(features.indices):
            raise ValueError("one linear layer per VGG layer")
        self.features = features
        self.lins = nn.ParameterList([nn.Parameter(w.reshape(1, -1, 1, 1).clone(), requires_grad=False) for w in linear_weights])

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # LPIPS expects inputs in [-1, 1] mapped through its own scaling layer; VGGFeatures takes [0, 1]
        # and applies ImageNet normalisation, which the scaling layer approximates.
        with torch.no_grad():
            reference = self.features(target)
        total = output.new_zeros(())
        for lin, a, b in zip(self.lins, self.features(output), reference):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((a - b) ** 2 * lin).sum(1).mean()
        return total


def load_lpips_linear(path: str | Path | None = None) -> list[torch.Tensor]:
    """The five `lin` weights of LPIPS-VGG v0.1 (keys lin0..lin4 .model.1.weight), verified by sha256.

    `path` is a file or a registered name; by default the registered `lpips.vgg-v0.1` (the lpips
    package's weights/v0.1/vgg.pth) is looked for on the weights search path.
    """
    from rainkit.hub.checkpoint import read_state_dict
    from rainkit.hub.weights import resolve_auxiliary

    resolved = resolve_auxiliary(path, LPIPS_WEIGHTS, "--lpips-weights", "--set loss.lpips=0")
    state = read_state_dict(resolved.path)
    weights = []
    for index in range(5):
        key = next((k for k in state if k.startswith(f"lin{index}.") and k.endswith("weight")), None)
        if key is None:
            raise WeightsError(f"{resolved.path}: no lin{index} weight; not an LPIPS v0.1 VGG file")
        weights.append(state[key].flatten())
    return weights


class SegmentationFocalLoss(nn.Module):
    """Unsupervised background-segmentation loss: focal loss (gamma 2) of the segmenter's prediction on the
    derained image against its own labels on the clean image (no annotations needed)."""

    def __init__(self, segmenter: nn.Module, gamma: float = 2.0):
        super().__init__()
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.gamma = gamma

    def train(self, mode: bool = True):
        super().train(mode)
        self.segmenter.eval()
        return self

    def forward(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            labels = self.segmenter(clean).argmax(1)
        logits = self.segmenter(output)
        log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        return (-(1 - log_p.exp()) ** self.gamma * log_p).mean()
