"""PSNR and SSIM in the convention of the published deraining evaluations.

The figures in the Rain100L/Rain100H literature come from MATLAB scripts (e.g. PReNet's
`statistic_rain100L.m`): the restored image is saved as 8 bits, both images go through
`rgb2ycbcr` after `im2double`, and PSNR/SSIM are taken on the luma channel with peak 255 and
the 11x11 Gaussian SSIM of Wang et al. (sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering).

The luma is kept in double precision, not rounded back to 8 bits: on Rain100L the rainy inputs
then score 26.9007 dB / 0.83837, the published 26.90 / 0.8384, where a uint8-rounded Y gives
26.8980 / 0.83822.
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# MATLAB rgb2ycbcr (ITU-R BT.601, studio range): Y = 16 + (65.481 R + 128.553 G + 24.966 B) for
# R, G, B in [0, 1]; with 8-bit inputs that is the same sum divided by 255.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
_Y_OFFSET = 16.0

_GAUSS = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of MATLAB `rgb2ycbcr(im2double(rgb))` on the 0..255 scale (16..235), as float64.

    `rgb` is H x W x 3 in RGB order with values on the 0..255 scale (uint8 or float).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
    return rgb.astype(np.float64) @ _Y_WEIGHTS + _Y_OFFSET


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """Drop `border` pixels on every side (the usual `crop_border` of super-resolution/deraining scripts)."""
    if border < 0:
        raise ValueError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise ValueError(f"crop border {border} leaves nothing of a {image.shape[1]}x{image.shape[0]} image")
    return image[border:-border, border:-border]


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """10 log10(peak^2 / MSE) over all pixels and channels; inf for identical images."""
    _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def _ssim_channel(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    c1 = (SSIM_K1 * peak) ** 2
    c2 = (SSIM_K2 * peak) ** 2
    r = SSIM_WINDOW // 2
    if a.shape[0] <= 2 * r or a.shape[1] <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[1]}x{a.shape[0]}")

    def blur(x: np.ndarray) -> np.ndarray:
        # The window is separable, and only fully covered pixels are kept ('valid'), so the
        # border extrapolation mode never reaches the result.
        return cv2.sepFilter2D(x, cv2.CV_64F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    mu_a, mu_b = blur(a), blur(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = blur(a * a) - mu_aa
    var_b = blur(b * b) - mu_bb
    cov = blur(a * b) - mu_ab
    ssim_map = ((2.0 * mu_ab + c1) * (2.0 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """Gaussian SSIM (Wang et al. 2004) with 'valid' borders; multi-channel images average their channels."""
    _check_pair(a, b)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        return _ssim_channel(a, b, peak)
    return float(np.mean([_ssim_channel(np.ascontiguousarray(a[..., c]), np.ascontiguousarray(b[..., c]), peak)
                          for c in range(a.shape[2])]))


def full_reference_scores(restored: np.ndarray, clean: np.ndarray,
                          metrics: Iterable[str] = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"),
                          border: int = 0) -> dict[str, float]:
    """Score an 8-bit RGB restoration against its 8-bit RGB reference with full-reference metrics
    of the metric table (`rainkit.metrics.create_metric`).

    Both are H x W x 3 uint8 (quantise model outputs first, see `rainkit.data.images.to_uint8`);
    `border` pixels are cropped on every side before scoring.
    """
    from rainkit.metrics.table import METRICS, create_metric

    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS or not METRICS[m].needs_reference]
    if unknown:
        raise ValueError(f"unknown full-reference metric(s) {', '.join(unknown)}")
    _check_pair(restored, clean)
    restored = crop_border(restored, border)
    clean = crop_border(clean, border)
    return {m: create_metric(m)(restored, clean) for m in metrics}
