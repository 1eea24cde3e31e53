"""Image quality metrics: full-reference (PSNR, SSIM) and no-reference (NIQE, BRISQUE).

Metric names say which convention they follow: `psnr_y`/`ssim_y` are on the luma of MATLAB's
`rgb2ycbcr`, `psnr_rgb`/`ssim_rgb` on the three RGB channels. `rainkit.metrics.noref` imports
pyiqa lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from rainkit.metrics.fullref import FULL_REFERENCE_METRICS, crop_border, full_reference_scores, psnr, rgb_to_y, ssim
from rainkit.metrics.noref import NO_REFERENCE_METRICS, NoReferenceScorer


@dataclass(frozen=True)
class MetricInfo:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    needs_reference: bool
    decimals: int
    convention: str  # one line, recorded in every JSON result

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


_Y = "Y of MATLAB rgb2ycbcr (BT.601, 16-235, double precision) of the 8-bit images, peak 255"
_SSIM = "Gaussian SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, 'valid' borders)"

METRICS: dict[str, MetricInfo] = {
    "psnr_y": MetricInfo("psnr_y", "PSNR-Y", "dB", True, True, 2, f"PSNR on the {_Y}"),
    "ssim_y": MetricInfo("ssim_y", "SSIM-Y", "", True, True, 4, f"{_SSIM} on the {_Y}"),
    "psnr_rgb": MetricInfo("psnr_rgb", "PSNR-RGB", "dB", True, True, 2,
                           "PSNR over the three 8-bit RGB channels together, peak 255"),
    "ssim_rgb": MetricInfo("ssim_rgb", "SSIM-RGB", "", True, True, 4,
                           f"{_SSIM} on each 8-bit RGB channel (0-255), averaged"),
    "niqe": MetricInfo("niqe", "NIQE", "", False, False, 3,
                       "NIQE (pyiqa, LIVE pristine parameters shipped with rainkit) on the YIQ luma of the 8-bit "
                       "image; lower is better"),
    "brisque": MetricInfo("brisque", "BRISQUE", "", False, False, 3,
                          "BRISQUE (pyiqa, LIVE SVR model shipped with rainkit) on the luma of the 8-bit image; "
                          "lower is better"),
}

DEFAULT_PAIRED_METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
DEFAULT_UNPAIRED_METRICS = ("niqe", "brisque")


def parse_metrics(text: str | None, has_reference: bool) -> list[str]:
    """`psnr_y,ssim_y` -> names, checked; None/empty/`default` -> the default set; `all` -> every metric
    the set allows. Full-reference metrics on a set without references are refused."""
    from rainkit.errors import RainkitError

    default = list(DEFAULT_PAIRED_METRICS if has_reference else DEFAULT_UNPAIRED_METRICS)
    if text is None or not text.strip() or text.strip().lower() == "default":
        return default
    names: list[str] = []
    for part in text.replace(" ", ",").split(","):
        name = part.strip().lower().replace("-", "_")
        if not name:
            continue
        if name == "all":
            names += [m for m, info in METRICS.items() if has_reference or not info.needs_reference]
        elif name == "default":
            names += default
        elif name in ("psnr", "ssim"):
            raise RainkitError(f"metric '{name}' is ambiguous: say {name}_y (luma, the literature's convention) "
                               f"or {name}_rgb")
        elif name not in METRICS:
            raise RainkitError(f"unknown metric '{part.strip()}' (known: {', '.join(METRICS)}, all, default)")
        else:
            names.append(name)
    names = list(dict.fromkeys(names))
    if not names:
        return default
    needing = [m for m in names if METRICS[m].needs_reference]
    if needing and not has_reference:
        raise RainkitError(f"{', '.join(needing)} need clean references, which this set has not; "
                           f"images without ground truth can be scored with {', '.join(DEFAULT_UNPAIRED_METRICS)}")
    return names


__all__ = [
    "DEFAULT_PAIRED_METRICS",
    "DEFAULT_UNPAIRED_METRICS",
    "FULL_REFERENCE_METRICS",
    "METRICS",
    "NO_REFERENCE_METRICS",
    "MetricInfo",
    "crop_border",
    "NoReferenceScorer",
    "full_reference_scores",
    "parse_metrics",
    "psnr",
    "rgb_to_y",
    "ssim",
]
