"""The metric table: every metric's facts in one place, and `create_metric(name)` to build one.

A `MetricInfo` says what a metric is (title, unit, direction, whether it needs a clean reference,
decimals shown, the one-line convention recorded with every result) and how to build it. The
benchmark, its reports and the command line ask this table; nothing else lists metrics.

    from rainkit.metrics import create_metric

    psnr_y = create_metric("psnr_y")
    psnr_y(restored_u8, reference=clean_u8)  # 31.42
    niqe = create_metric("niqe")             # imports pyiqa and loads the LIVE parameters
    niqe(photo_u8, name="photo.jpg")         # 3.65; MetricNotApplicable for a uniform image
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable

import numpy as np

from rainkit.errors import ParameterError, RainkitError
from rainkit.metrics import fullref

# builds the scoring function: (image, reference or None, name) -> float
Builder = Callable[[], Callable[[np.ndarray, "np.ndarray | None", str], float]]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    needs_reference: bool
    decimals: int
    convention: str  # one line, recorded in every JSON result
    build: Builder
    default: bool = True  # in the default set of the sets it applies to

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def describe(self) -> dict:
        return {"title": self.title, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "needs_reference": self.needs_reference, "convention": self.convention}


_TABLE: dict[str, MetricInfo] = {}
METRICS = MappingProxyType(_TABLE)  # name -> MetricInfo, in registration order

# Names that could mean either convention: refused with the choice spelled out.
AMBIGUOUS = {"psnr": ("psnr_y", "psnr_rgb"), "ssim": ("ssim_y", "ssim_rgb")}


def register_metric(info: MetricInfo) -> MetricInfo:
    """Add a metric to the table; a name registered twice is an error."""
    if info.name in _TABLE or info.name in AMBIGUOUS:
        raise RainkitError(f"metric '{info.name}' is already registered")
    _TABLE[info.name] = info
    return info


def get_metric(name: str) -> MetricInfo:
    key = name.strip().lower().replace("-", "_")
    if key in AMBIGUOUS:
        y, rgb = AMBIGUOUS[key]
        raise ParameterError("metrics", f"metric '{name}' is ambiguous: say {y} (luma, the literature's "
                                        f"convention) or {rgb}")
    if key not in _TABLE:
        from rainkit.registry import suggest

        raise ParameterError("metrics", f"unknown metric '{name}'{suggest(key, _TABLE)} "
                                        f"(known: {', '.join(_TABLE)}, all, default)")
    return _TABLE[key]


class Metric:
    """A built metric: `metric(image)` for no-reference ones, `metric(image, reference)` for the
    others; images are H x W x 3 uint8 RGB. `name` only labels errors."""

    def __init__(self, info: MetricInfo):
        self.info = info
        self._score = info.build()

    @property
    def name(self) -> str:
        return self.info.name

    def __call__(self, image: np.ndarray, reference: np.ndarray | None = None, *, name: str = "image") -> float:
        if self.info.needs_reference and reference is None:
            raise ValueError(f"{self.name} compares against a clean image: pass reference=")
        if not self.info.needs_reference and reference is not None:
            raise ValueError(f"{self.name} is a no-reference metric: it takes no reference")
        return self._score(image, reference, name)


def create_metric(name: str) -> Metric:
    """The metric `name` from the table, ready to score (as pyiqa's `create_metric`)."""
    return Metric(get_metric(name))


def default_metrics(has_reference: bool) -> list[str]:
    """PSNR/SSIM on Y and RGB for sets with clean references, NIQE and BRISQUE without."""
    return [m for m, info in _TABLE.items() if info.default and info.needs_reference == has_reference]


def parse_metrics(metrics: str | Iterable[str] | None, has_reference: bool) -> list[str]:
    """`"psnr_y,ssim_y"` or `["psnr_y", "ssim_y"]` -> names, checked; None/empty/`default` -> the
    default set; `all` -> every metric the set allows. Metrics needing references are refused on a
    set without them."""
    if metrics is None:
        parts: list[str] = []
    elif isinstance(metrics, str):
        parts = metrics.replace(" ", ",").split(",")
    else:
        parts = [part for item in metrics for part in str(item).replace(" ", ",").split(",")]
    names: list[str] = []
    for part in (p.strip() for p in parts):
        key = part.lower()
        if not key:
            continue
        if key == "all":
            names += [m for m, info in _TABLE.items() if has_reference or not info.needs_reference]
        elif key == "default":
            names += default_metrics(has_reference)
        else:
            names.append(get_metric(part).name)
    names = list(dict.fromkeys(names)) or default_metrics(has_reference)
    needing = [m for m in names if _TABLE[m].needs_reference]
    if needing and not has_reference:
        raise ParameterError("metrics", f"{', '.join(needing)} need clean references, which this set has not; "
                                        f"images without ground truth can be scored with "
                                        f"{', '.join(default_metrics(False))}")
    return names


# --- the metrics ---------------------------------------------------------------------------------

def _full_reference(score: Callable[[np.ndarray, np.ndarray], float], on_luma: bool) -> Builder:
    def build():
        def run(image: np.ndarray, reference: np.ndarray, name: str) -> float:
            if image.shape != reference.shape:
                raise ValueError(f"{name}: images differ in shape: {image.shape} vs {reference.shape}")
            if on_luma:
                return score(fullref.rgb_to_y(image), fullref.rgb_to_y(reference))
            return score(image, reference)
        return run
    return build


def _no_reference(class_name: str) -> Builder:
    def build():
        from rainkit.metrics import noref  # imports pyiqa and torch only when such a metric is built

        scorer = getattr(noref, class_name)()

        def run(image: np.ndarray, reference: None, name: str) -> float:
            return scorer(image, name=name)
        return run
    return build


_Y = "Y of MATLAB rgb2ycbcr (BT.601, 16-235, double precision) of the 8-bit images, peak 255"
_SSIM = "Gaussian SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, 'valid' borders)"

register_metric(MetricInfo("psnr_y", "PSNR-Y", "dB", True, True, 2, f"PSNR on the {_Y}",
                           _full_reference(fullref.psnr, on_luma=True)))
register_metric(MetricInfo("ssim_y", "SSIM-Y", "", True, True, 4, f"{_SSIM} on the {_Y}",
                           _full_reference(fullref.ssim, on_luma=True)))
register_metric(MetricInfo("psnr_rgb", "PSNR-RGB", "dB", True, True, 2,
                           "PSNR over the three 8-bit RGB channels together, peak 255",
                           _full_reference(fullref.psnr, on_luma=False)))
register_metric(MetricInfo("ssim_rgb", "SSIM-RGB", "", True, True, 4,
                           f"{_SSIM} on each 8-bit RGB channel (0-255), averaged",
                           _full_reference(fullref.ssim, on_luma=False)))
register_metric(MetricInfo("niqe", "NIQE", "", False, False, 3,
                           "NIQE (pyiqa, LIVE pristine parameters shipped with rainkit) on the rounded YIQ luma "
                           "of the 8-bit image, 96x96 blocks (images from 96x96); lower is better",
                           _no_reference("Niqe")))
register_metric(MetricInfo("brisque", "BRISQUE", "", False, False, 3,
                           "BRISQUE (pyiqa's features in float32, LIVE SVR model 'allmodel' shipped with rainkit) "
                           "on the rounded YIQ luma of the 8-bit image; lower is better",
                           _no_reference("Brisque")))

DEFAULT_PAIRED_METRICS = tuple(default_metrics(True))
DEFAULT_UNPAIRED_METRICS = tuple(default_metrics(False))
