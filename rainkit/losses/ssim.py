"""Differentiable SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM over the 'valid' region of every channel, per batch item: shape (N,)."""
    channels = x.shape[1]
    w = _gaussian_window(window, sigma, channels, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x = F.conv2d(x, w, groups=channels)
    mu_y = F.conv2d(y, w, groups=channels)
    sxx = F.conv2d(x * x, w, groups=channels) - mu_x**2
    syy = F.conv2d(y * y, w, groups=channels) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=channels) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return value.flatten(1).mean(1)


class SSIMLoss(nn.Module):
    """Negative SSIM, the SAPNet/PReNet reconstruction loss."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -ssim(output, target).mean()
