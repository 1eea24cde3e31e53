"""No-reference metrics (NIQE, BRISQUE) through pyiqa, with the LIVE parameters shipped in rainkit.

pyiqa's `NIQE` and `BRISQUE` modules take their parameters from a file path or download them on
first use. rainkit calls the functions underneath them instead (`calculate_niqe`, `brisque`) and
passes the LIVE parameters embedded in `rainkit/assets/iqa/` as tensors, so pyiqa's downloader
is never reached and no network is needed. pyiqa (and torch) are imported only when a scorer is
built, because importing pyiqa takes seconds.

Both scores are lower-is-better.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from rainkit.errors import InputError

NO_REFERENCE_METRICS = ("niqe", "brisque")

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "iqa"
NIQE_PARAMS = ASSETS / "niqe_live_pristine.json"
BRISQUE_MODEL = ASSETS / "brisque_live_svr.json"

# NIQE works on 96x96 patches and fits a covariance over them (at two scales), so it needs at least
# two patches along one side and one along the other.
NIQE_BLOCK = 96


@lru_cache(maxsize=None)
def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load IQA parameters ({exc}); reinstall rainkit") from None


class NoReferenceScorer:
    """Scores 8-bit RGB images with NIQE and/or BRISQUE: `NoReferenceScorer(["niqe"])(rgb_u8)`."""

    def __init__(self, metrics: Iterable[str] = NO_REFERENCE_METRICS):
        self.metrics = list(metrics)
        unknown = [m for m in self.metrics if m not in NO_REFERENCE_METRICS]
        if unknown:
            raise ValueError(f"unknown no-reference metric(s) {', '.join(unknown)}")
        import torch

        from rainkit.extras import require

        self._torch = torch
        if "niqe" in self.metrics:
            self._niqe = require("pyiqa.archs.niqe_arch", extra="iqa", for_what="NIQE/BRISQUE").calculate_niqe
            params = _load_json(NIQE_PARAMS)
            self._mu = torch.tensor(params["mu_pris_param"], dtype=torch.float64)
            self._cov = torch.tensor(params["cov_pris_param"], dtype=torch.float64)
        if "brisque" in self.metrics:
            self._brisque = require("pyiqa.archs.brisque_arch", extra="iqa", for_what="NIQE/BRISQUE").brisque
            model = _load_json(BRISQUE_MODEL)
            self._sv_coef = torch.tensor(model["sv_coef"], dtype=torch.float64)
            self._sv = torch.tensor(model["sv"], dtype=torch.float64)
            self._gamma = float(model["gamma"])
            self._rho = float(model["rho"])

    def __call__(self, rgb: np.ndarray, name: str = "image") -> dict[str, float]:
        """NIQE/BRISQUE of an H x W x 3 uint8 RGB image; `name` only labels errors."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{name}: expected an H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
        torch = self._torch
        height, width = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float() / 255.0
        scores: dict[str, float] = {}
        with torch.inference_mode():
            if "niqe" in self.metrics:
                if min(height, width) < NIQE_BLOCK or max(height, width) < 2 * NIQE_BLOCK:
                    raise InputError(f"{name}: {width}x{height} is too small for NIQE "
                                     f"(needs at least {NIQE_BLOCK}x{2 * NIQE_BLOCK} pixels)")
                # pyiqa's default NIQE: luma of YIQ (MATLAB rgb2gray's weights), rounded to integers.
                niqe = self._niqe(x, 0, True, "yiq", self._mu, self._cov)
                scores["niqe"] = float(niqe)
            if "brisque" in self.metrics:
                # The image enters as pyiqa's loaders give it (float32 in [0, 1]), so the rounded Y
                # matches pyiqa's; the rest runs in float64, where the SVR sum (774 terms of
                # magnitude up to 1024) is stable.
                value = self._brisque(x.double(), sv_coef=self._sv_coef, sv=self._sv,
                                      gamma=self._gamma, rho=self._rho)
                scores["brisque"] = float(value.reshape(-1)[0])
        return {m: scores[m] for m in self.metrics}
