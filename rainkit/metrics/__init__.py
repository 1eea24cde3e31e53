"""Image quality metrics: full-reference (PSNR, SSIM) and no-reference (NIQE, BRISQUE).

Every metric lives in one table (`rainkit.metrics.table`): `METRICS[name]` holds its facts and
`create_metric(name)` builds it. Metric names say which convention they follow: `psnr_y`/`ssim_y`
are on the luma of MATLAB's `rgb2ycbcr`, `psnr_rgb`/`ssim_rgb` on the three RGB channels.
NIQE and BRISQUE import pyiqa when they are built, so importing this package stays cheap.
"""

from __future__ import annotations

from rainkit.errors import MetricNotApplicable
from rainkit.metrics.fullref import crop_border, full_reference_scores, psnr, rgb_to_y, ssim
from rainkit.metrics.table import (
    DEFAULT_PAIRED_METRICS,
    DEFAULT_UNPAIRED_METRICS,
    METRICS,
    Metric,
    MetricInfo,
    create_metric,
    default_metrics,
    get_metric,
    parse_metrics,
    register_metric,
)

__all__ = [
    "DEFAULT_PAIRED_METRICS",
    "DEFAULT_UNPAIRED_METRICS",
    "METRICS",
    "Metric",
    "MetricInfo",
    "MetricNotApplicable",
    "create_metric",
    "crop_border",
    "default_metrics",
    "full_reference_scores",
    "get_metric",
    "parse_metrics",
    "psnr",
    "register_metric",
    "rgb_to_y",
    "ssim",
]
