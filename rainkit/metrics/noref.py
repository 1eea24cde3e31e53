"""No-reference metrics (NIQE, BRISQUE) through pyiqa, with the LIVE parameters shipped in rainkit.

pyiqa's `NIQE` and `BRISQUE` modules take their parameters from a file path or download them on
first use. rainkit calls the functions underneath them instead and passes the LIVE parameters
embedded in `rainkit/assets/iqa/` as tensors, so pyiqa's downloader is never reached and no
network is needed. pyiqa (and torch) are imported only when a metric is built, because importing
pyiqa takes seconds.

BRISQUE's features are computed in float32, as pyiqa computes them. The precision matters: in
flat areas the normalised luma (I - mu) / (sigma + 1) is zero up to rounding, and whether those
pixels come out as exact zeros or as +-1e-7 decides which side of the asymmetric generalised
Gaussian fits they count on. On IQA-PyTorch's calibration image I19 (about 30% flat), float32
features give 66.84 like pyiqa, float64 ones 63.93, the MATLAB code 72.26. The SVR sum (774 RBF
terms with coefficients up to 1024) then runs in float64, where it is stable.

Both scores are lower-is-better. An image a metric cannot score (smaller than the metric's
window or block, or uniform) raises `MetricNotApplicable` with the reason.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from rainkit.errors import InputError, MetricNotApplicable

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "iqa"
NIQE_PARAMS = ASSETS / "niqe_live_pristine.json"
BRISQUE_MODEL = ASSETS / "brisque_live_svr.json"

# NIQE fits its features over 96x96 blocks; pyiqa (like MATLAB) scores an image from one block.
NIQE_BLOCK = 96
# BRISQUE normalises the luma with a 7x7 Gaussian window; pyiqa fails on anything smaller.
BRISQUE_WINDOW = 7


@lru_cache(maxsize=None)
def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load IQA parameters ({exc}); reinstall rainkit") from None


def _check_rgb(rgb: np.ndarray, name: str) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name}: expected an H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")


def _check_scorable(metric: str, rgb: np.ndarray, name: str, side: int, unit: str) -> None:
    """What NIQE and BRISQUE both need: an 8-bit RGB image of at least `side` x `side` (its `unit`, block or
    window) that is not uniform; otherwise the metric is not applicable to it, with the reason."""
    _check_rgb(rgb, name)
    height, width = rgb.shape[:2]
    if height < side or width < side:
        raise MetricNotApplicable(metric, name, f"{width}x{height} is smaller than its {side}x{side} {unit}")
    if rgb.min() == rgb.max():
        raise MetricNotApplicable(metric, name, "undefined on a uniform image")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def _to_tensor(rgb: np.ndarray):
    import torch

    # As pyiqa's loaders give images: float32 in [0, 1], N x C x H x W.
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float() / 255.0


class Niqe:
    """NIQE of an H x W x 3 uint8 RGB image: `Niqe()(rgb, name="a.png")`."""

    name = "niqe"

    def __init__(self):
        import torch

        from rainkit.extras import require

        calculate_niqe = require("pyiqa.archs.niqe_arch", extra="iqa", for_what="NIQE/BRISQUE").calculate_niqe
        params = _load_json(NIQE_PARAMS)
        self._torch = torch
        self._niqe = calculate_niqe
        self._mu = torch.tensor(params["mu_pris_param"], dtype=torch.float64)
        self._cov = torch.tensor(params["cov_pris_param"], dtype=torch.float64)

    def __call__(self, rgb: np.ndarray, name: str = "image") -> float:
        _check_scorable(self.name, rgb, name, NIQE_BLOCK, "block")
        try:
            with self._torch.inference_mode():
                # pyiqa's default NIQE: luma of YIQ (MATLAB rgb2gray's weights), rounded to integers.
                value = float(self._niqe(_to_tensor(rgb), 0, True, "yiq", self._mu, self._cov))
        except RuntimeError as exc:  # torch's LinAlgError when no block has texture
            raise MetricNotApplicable(self.name, name, f"no value ({_first_line(exc)})") from None
        if not math.isfinite(value):
            raise MetricNotApplicable(self.name, name, f"undefined: no {NIQE_BLOCK}x{NIQE_BLOCK} block has texture")
        return value


class Brisque:
    """BRISQUE of an H x W x 3 uint8 RGB image: `Brisque()(rgb, name="a.png")`."""

    name = "brisque"

    def __init__(self):
        import torch

        from rainkit.extras import require

        require("pyiqa", extra="iqa", for_what="NIQE/BRISQUE")
        from pyiqa.archs.brisque_arch import natural_scene_statistics, rbf_kernel, scale_features
        from pyiqa.matlab_utils import imresize
        from pyiqa.utils.color_util import to_y_channel

        model = _load_json(BRISQUE_MODEL)
        self._torch = torch
        self._nss = natural_scene_statistics
        self._rbf = rbf_kernel
        self._scale = scale_features
        self._imresize = imresize
        self._luma = to_y_channel
        self._sv_coef = torch.tensor(model["sv_coef"], dtype=torch.float64)
        self._sv_t = torch.tensor(model["sv"], dtype=torch.float64).t()
        self._gamma = float(model["gamma"])
        self._rho = float(model["rho"])

    def features(self, rgb: np.ndarray):
        """The 36 features (two scales of 18), float32 as pyiqa computes them."""
        torch = self._torch
        with torch.inference_mode():
            luma = self._luma(_to_tensor(rgb), 255.0)  # YIQ luma on 0..255, rounded (pyiqa's default)
            first = self._nss(luma)
            half = self._imresize(luma, scale=0.5, antialiasing=True)  # MATLAB imresize: bicubic, antialiased
            return torch.cat([first, self._nss(half)], dim=-1)

    def __call__(self, rgb: np.ndarray, name: str = "image") -> float:
        _check_scorable(self.name, rgb, name, BRISQUE_WINDOW, "window")
        with self._torch.inference_mode():
            scaled = self._scale(self.features(rgb).double())  # to [-1, 1] by LIVE's feature ranges
            value = float((self._rbf(scaled, self._sv_t, self._gamma) @ self._sv_coef - self._rho).reshape(-1)[0])
        if not math.isfinite(value):
            raise MetricNotApplicable(self.name, name, "undefined: too little texture for its fits")
        return value
