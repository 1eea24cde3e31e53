"""Physics-based weather synthesis on float32 RGB images in [0, 1].

Rain follows the way Rain100L/Rain100H-style data is made: sparse seeds of random brightness,
stretched into streaks by a line-shaped motion-blur kernel, composited additively over the
background; light rain has one layer in one direction, heavy rain several layers at different
depths (near: long, wide, bright; far: short, thin, faint) and directions, plus the veiling of
the rain volume, I = J t + A (1 - t). Real rain (preset `real`) adds what photos of it show beyond
streaks: flatter, greyer light under the clouds, a veil that thickens with distance (the image's
height is the depth proxy: the top is far), and drops on the lens, out of focus. Snow scatters soft flakes at several depths; fog applies a
smooth transmission field; night lowers the exposure, shifts the white balance, adds sensor noise
and glow around bright sources.

Every random draw comes from one `numpy.random.Generator`, so a seed fixes the output. Images are
generated at their native resolution; streak sizes scale with the image's short side relative to
a 480-pixel reference so that a 4K photo gets rain of the same look, not confetti.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import cv2
import numpy as np

DOMAINS = ("rain", "snow", "fog", "night")
REFERENCE_SIDE = 480.0


@dataclass(frozen=True)
class RainParams:
    density: float = 0.006  # fraction of pixels seeding a streak, per layer
    length: float = 20.0  # streak length in pixels at the 480 px reference
    width: float = 1.0  # streak width in pixels at the reference
    angle: float = 0.0  # degrees from vertical, positive leans right
    angle_spread: float = 4.0  # per-layer jitter of the angle, degrees
    brightness: float = 0.55  # peak streak intensity added
    blur: float = 0.6  # Gaussian softening of streaks, pixels at the reference
    layers: int = 1
    veil: float = 0.0  # strength of the rain-volume veiling, 0..1
    directions: int = 1  # distinct wind directions across layers (heavy rain: several)
    # Real rain beyond streaks; the defaults leave them out, so the presets above keep their output.
    depth_veil: float = 0.0  # 0..1: share of the veil that grows with distance (towards the image top)
    airlight: tuple[float, float] | None = None  # grey-level range the veil's light is drawn from (None: 0.84)
    desaturate: float = 0.0  # 0..1: colour lost under overcast rain light
    dim: float = 0.0  # 0..1: light lost under the clouds
    drops: float = 0.0  # out-of-focus drops on the lens, per 480x480 of image


PRESETS: dict[str, RainParams] = {
    "light": RainParams(),
    # Coverage grows as density x length x width x layers: heavier presets trade density for size.
    "heavy": RainParams(density=0.0035, length=34.0, width=1.6, angle_spread=8.0, brightness=0.5, blur=0.9,
                        layers=3, veil=0.2, directions=2),
    "storm": RainParams(density=0.003, length=48.0, width=2.2, angle=12.0, angle_spread=14.0, brightness=0.5, blur=1.2,
                        layers=4, veil=0.38, directions=3),
    # Rain100H-style downpour: dense, long, bright, sharp streaks in one main direction over a thin veil. Matched
    # to the Rain100H sample's rain (rainy minus clean, mean over 10 images: 0.21 brighter, 68% of the pixels by
    # more than 0.1 and 28% by more than 0.3, the 10th percentile 0.03, contrast 1.19x the clean image's): this
    # preset gives 0.22 / 64% / 31% / 0.03 / 1.27x. The earlier veil of 0.3 (a 10th percentile of 0.07, contrast
    # 1.01x) taught models to subtract a veil Rain100H does not have.
    "downpour": RainParams(density=0.0042, length=96.0, width=2.2, angle_spread=6.0, brightness=0.85, blur=0.5,
                           layers=2, veil=0.08, directions=1),
    # What photos of real rain show: faint streaks of every size, and most of the change in the light: a veil
    # that grows with distance (its grey drawn from dull to bright), lost colour, and a few drops on the lens.
    "real": RainParams(density=0.004, length=18.0, width=1.0, angle_spread=10.0, brightness=0.15, blur=1.0,
                       layers=3, veil=0.15, directions=2, depth_veil=0.5, airlight=(0.5, 0.95), desaturate=0.15,
                       dim=0.05, drops=2.0),
}


def rain_params(preset: str = "light", intensity: float | None = None) -> RainParams:
    """A preset, optionally rescaled by `intensity` in [0, 1] (0.5 leaves the preset unchanged)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown rain preset '{preset}' (use {', '.join(PRESETS)})")
    params = PRESETS[preset]
    if intensity is None:
        return params
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be within 0..1, got {intensity}")
    k = 2.0 * intensity  # 0 -> nothing, 1 -> preset, 2 -> twice as dense and bright
    return replace(params, density=params.density * k, brightness=min(1.0, params.brightness * (0.5 + 0.5 * k)),
                   veil=min(0.9, params.veil * k), desaturate=min(1.0, params.desaturate * k),
                   dim=min(0.9, params.dim * k), drops=params.drops * k)


def image_seed(seed: int, name: str) -> int:
    """A per-image seed from the run seed and the image's name: independent of batch order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    size = max(3, int(np.ceil(length)) | 1)
    kernel = np.zeros((size, size), np.float32)
    centre = size // 2
    rad = np.deg2rad(angle_deg)
    dx, dy = np.sin(rad), np.cos(rad)
    half = (length - 1) / 2.0
    for t in np.linspace(-half, half, max(2, int(np.ceil(length)) * 2)):
        x, y = centre + t * dx, centre + t * dy
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for xi, yi, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xi < size and 0 <= yi < size:
                kernel[yi, xi] += w
    return kernel / kernel.sum()


def periodic(fn, array: np.ndarray, pad: int) -> np.ndarray:
    """Apply a local filter `fn` as if `array` tiled the plane: pad it with its own opposite edges, filter,
    crop. The result wraps seamlessly, so it can be shifted (np.roll) without a seam: a moving field."""
    pad = int(min(pad, array.shape[0], array.shape[1]))
    if pad <= 0:
        return fn(array)
    return fn(np.pad(array, pad, mode="wrap"))[pad:-pad, pad:-pad]


def rain_layer(shape: tuple[int, int], params: RainParams, rng: np.random.Generator, *, angle: float,
               depth: float, scale: float, wrap: bool = False) -> np.ndarray:
    """One layer of streaks (H x W, float32 >= 0). depth 1 = nearest, smaller = farther. With `wrap`, the
    layer tiles the plane seamlessly (for rain that moves across video frames)."""
    height, width = shape
    seeds = rng.random((height, width), dtype=np.float32)
    density = params.density * (0.6 + 0.4 * depth)
    mask = seeds < density
    strength = np.zeros((height, width), np.float32)
    strength[mask] = 0.5 + 0.5 * (seeds[mask] / max(density, 1e-9))  # reuse the draw: brightness per seed
    thickness = params.width * scale * (0.5 + 0.5 * depth)
    length = max(3.0, params.length * scale * (0.4 + 0.6 * depth))
    sigma = params.blur * scale * (1.5 - 0.5 * depth)
    radius = int(round(thickness / 2)) if thickness > 1.0 else 0
    kernel = _line_kernel(length, angle)

    def streaks_of(field: np.ndarray) -> np.ndarray:
        if radius:
            field = cv2.dilate(field, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
        field = cv2.filter2D(field, -1, kernel, borderType=cv2.BORDER_REFLECT)
        return cv2.GaussianBlur(field, (0, 0), sigma) if sigma > 0.3 else field

    if wrap:
        streaks = periodic(streaks_of, strength, radius + kernel.shape[0] + int(np.ceil(4 * sigma)) + 1)
    else:
        streaks = streaks_of(strength)
    peak = float(np.percentile(streaks[streaks > 0], 99.5)) if np.any(streaks > 0) else 1.0
    return np.clip(streaks / max(peak, 1e-6), 0.0, 1.0) * params.brightness * (0.5 + 0.5 * depth)


def add_rain(rgb: np.ndarray, params: RainParams, rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """`scale` sizes the streaks (default: the image's short side over 480); pass the full photo's
    scale when raining on a crop of it."""
    height, width = rgb.shape[:2]
    scale = min(height, width) / REFERENCE_SIDE if scale is None else scale
    directions = [params.angle + rng.uniform(-params.angle_spread, params.angle_spread) for _ in range(max(1, params.directions))]
    total = np.zeros((height, width), np.float32)
    for layer in range(params.layers):
        depth = 1.0 - layer / max(1, params.layers)  # nearest first
        angle = directions[layer % len(directions)] + rng.uniform(-1.0, 1.0)
        total += rain_layer((height, width), params, rng, angle=angle, depth=depth, scale=max(scale, 0.25))
    rainy = rain_light(rgb, params) + total[:, :, None]
    return rain_atmosphere(rainy, params, rng, scale=max(scale, 0.25))


def rain_light(rgb: np.ndarray, params: RainParams) -> np.ndarray:
    """The scene under rain clouds, before streaks and veil: less light and less colour."""
    if params.desaturate <= 0 and params.dim <= 0:
        return rgb
    luminance = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = luminance[:, :, None] + (rgb - luminance[:, :, None]) * (1.0 - params.desaturate)
    return (grey * (1.0 - params.dim)).astype(np.float32)


def rain_atmosphere(rainy: np.ndarray, params: RainParams, rng: np.random.Generator, *, scale: float) -> np.ndarray:
    """The rain volume's veil and the drops on the lens over a streaked image, clipped to [0, 1]."""
    if params.veil > 0:
        rainy = _veil(rainy, strength=params.veil, rng=rng, smooth=0.25, depth=params.depth_veil,
                      airlight=_draw_airlight(params.airlight, rng))
    if params.drops > 0:
        rainy = lens_drops(rainy, params.drops, rng, scale=scale)
    return np.clip(rainy, 0.0, 1.0).astype(np.float32)


def _draw_airlight(span: tuple[float, float] | None, rng: np.random.Generator) -> tuple[float, float, float] | None:
    if span is None:
        return None
    level = float(rng.uniform(*span))
    tint = float(rng.uniform(0.0, 0.04))  # overcast light leans slightly blue
    return (level - tint, level, level + tint)


def lens_drops(rgb: np.ndarray, per_reference: float, rng: np.random.Generator, *, scale: float) -> np.ndarray:
    """Drops on the lens, far out of focus: soft discs showing a blurred, slightly brighter view of the scene."""
    height, width = rgb.shape[:2]
    count = int(rng.poisson(per_reference * height * width / REFERENCE_SIDE**2))
    if count == 0:
        return rgb
    alpha = np.zeros((height, width), np.float32)
    radii = rng.uniform(4.0, 18.0, count) * scale
    for y, x, radius, opacity in zip(rng.integers(0, height, count), rng.integers(0, width, count), radii,
                                     rng.uniform(0.5, 0.9, count)):
        cv2.circle(alpha, (int(x), int(y)), max(1, int(round(radius))), float(opacity), -1, lineType=cv2.LINE_AA)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.8, float(np.median(radii)) / 3.0))
    seen = cv2.GaussianBlur(rgb, (0, 0), max(1.0, 6.0 * scale)) * 1.08 + 0.03
    return rgb * (1.0 - alpha[:, :, None]) + seen * alpha[:, :, None]


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Low-frequency noise in [0, 1] at native resolution (a coarse random grid, upsampled and blurred)."""
    height, width = shape
    aspect = width / max(height, 1)
    grid = rng.random((cells, max(2, int(round(cells * aspect)))), dtype=np.float32)
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), max(height, width) / (cells * 2.0))
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _veil(rgb: np.ndarray, *, strength: float, rng: np.random.Generator, smooth: float,
          airlight: tuple[float, float, float] | None = None, depth: float = 0.0) -> np.ndarray:
    field = _smooth_field(rgb.shape[:2], rng)
    cover = 1.0 - smooth + smooth * field
    if depth > 0:
        # Distance grows towards the top of the frame: the veil there is up to twice the mean, at the bottom thin.
        height = rgb.shape[0]
        distance = np.linspace(2.0, 0.0, height, dtype=np.float32)[:, None]
        cover = (1.0 - depth) * cover + depth * cover * distance
    t = np.clip(1.0 - strength * cover, 0.05, 1.0)  # transmission, lower where the field is high
    a = np.array(airlight if airlight is not None else [0.82, 0.84, 0.86], np.float32) * rng.uniform(0.95, 1.05)
    return rgb * t[:, :, None] + a[None, None, :] * (1.0 - t[:, :, None])


SNOW_DEPTHS = (0.35, 0.6, 1.0)  # far, middle, near flakes


def snow_layer(shape: tuple[int, int], intensity: float, rng: np.random.Generator, *, depth: float, scale: float,
               wrap: bool = False) -> np.ndarray:
    """Flakes at one depth (H x W in [0, 1]); with `wrap`, flakes cut by an edge continue at the opposite one,
    so the layer tiles the plane (for snow that falls across video frames)."""
    height, width = shape
    count = int(height * width * 0.0015 * intensity * (1.6 - depth))
    radius = max(0.6, 2.2 * scale * depth)
    ys = rng.integers(0, height, count)
    xs = rng.integers(0, width, count)
    levels = rng.uniform(0.5, 1.0, count).astype(np.float32)
    sigma = max(0.5, radius * (1.2 - depth))
    drift = _line_kernel(max(3.0, 6 * scale * depth), rng.uniform(-25, 25))
    pad = int(np.ceil(radius)) + int(np.ceil(4 * sigma)) + drift.shape[0] + 1 if wrap else 0
    pad = min(pad, height, width)
    layer = np.zeros((height + 2 * pad, width + 2 * pad), np.float32)
    for y, x, v in zip(ys, xs, levels):
        cv2.circle(layer, (int(x) + pad, int(y) + pad), int(np.ceil(radius)), float(v), -1, lineType=cv2.LINE_AA)
    if pad:
        layer = _fold(layer, pad)
    layer = periodic(lambda f: cv2.GaussianBlur(f, (0, 0), sigma), layer, pad) if wrap else \
        cv2.GaussianBlur(layer, (0, 0), sigma)
    layer = periodic(lambda f: cv2.filter2D(f, -1, drift), layer, pad) if wrap else cv2.filter2D(layer, -1, drift)
    return layer * (0.6 + 0.4 * depth)


def _fold(canvas: np.ndarray, pad: int) -> np.ndarray:
    """The core of a canvas drawn with a margin of `pad`, with what fell in the margins added onto the
    opposite side (brightest wins, as flakes combine)."""
    core = canvas[pad:-pad, pad:-pad].copy()
    height, width = core.shape
    wrapped = np.zeros_like(core)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            ys = slice(pad + dy * height, pad + dy * height + height)
            xs = slice(pad + dx * width, pad + dx * width + width)
            src = np.zeros_like(core)
            y0, y1 = max(ys.start, 0), min(ys.stop, canvas.shape[0])
            x0, x1 = max(xs.start, 0), min(xs.stop, canvas.shape[1])
            if y0 < y1 and x0 < x1:
                src[y0 - ys.start:y1 - ys.start, x0 - xs.start:x1 - xs.start] = canvas[y0:y1, x0:x1]
                wrapped = np.maximum(wrapped, src)
    return np.maximum(core, wrapped)


def composite_snow(rgb: np.ndarray, snow: np.ndarray, intensity: float, rng: np.random.Generator) -> np.ndarray:
    out = _veil(rgb, strength=0.25 * intensity, rng=rng, smooth=0.3, airlight=(0.9, 0.92, 0.95))
    return np.clip(out + (1.0 - out) * np.clip(snow, 0, 1)[:, :, None], 0.0, 1.0).astype(np.float32)


def add_snow(rgb: np.ndarray, intensity: float, rng: np.random.Generator) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = max(min(height, width) / REFERENCE_SIDE, 0.25)
    snow = np.zeros((height, width), np.float32)
    for depth in SNOW_DEPTHS:
        snow = np.maximum(snow, snow_layer((height, width), intensity, rng, depth=depth, scale=scale))
    return composite_snow(rgb, snow, intensity, rng)


def add_fog(rgb: np.ndarray, intensity: float, rng: np.random.Generator) -> np.ndarray:
    out = _veil(rgb, strength=0.75 * intensity, rng=rng, smooth=0.5)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def add_night(rgb: np.ndarray, intensity: float, rng: np.random.Generator,
              noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """`noise_rng` draws the sensor noise (default: `rng`); video frames pass their own, so the noise changes
    from frame to frame while the exposure and white balance of the clip stay put."""
    noise_rng = noise_rng or rng
    linear = np.power(np.clip(rgb, 0, 1), 2.2)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    sources = np.clip((luminance - 0.6) / 0.4, 0.0, 1.0)
    exposure = 10.0 ** (-2.0 * intensity)  # intensity 0.6: about 4 stops down
    balance = np.array([0.85, 0.95, 1.25], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    dark = linear * exposure * balance
    side = max(rgb.shape[:2])
    glow = cv2.GaussianBlur(sources, (0, 0), side / 60.0) * intensity
    dark += glow[:, :, None] * np.array([1.0, 0.75, 0.45], np.float32) * 1.5
    dark += sources[:, :, None] * linear * 0.9  # lamps stay lit
    shot = noise_rng.normal(0.0, 1.0, dark.shape).astype(np.float32) * np.sqrt(np.clip(dark, 0, 1) * 0.002 * intensity)
    read = noise_rng.normal(0.0, 0.004 * intensity, dark.shape).astype(np.float32)
    out = np.power(np.clip(dark + shot + read, 0.0, 1.0), 1 / 2.2)
    return out.astype(np.float32)


def synthesize(rgb: np.ndarray, domain: str = "rain", *, preset: str = "light", intensity: float | None = None,
               seed: int = 0, scale: float | None = None) -> np.ndarray:
    """Add weather to an H x W x 3 float32 RGB image in [0, 1]; the same seed gives the same output."""
    rng = np.random.default_rng(seed)
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    if domain == "rain":
        return add_rain(rgb, rain_params(preset, intensity), rng, scale=scale)
    level = 0.6 if intensity is None else float(intensity)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"intensity must be within 0..1, got {level}")
    if domain == "snow":
        return add_snow(rgb, level, rng)
    if domain == "fog":
        return add_fog(rgb, level, rng)
    if domain == "night":
        return add_night(rgb, level, rng)
    raise ValueError(f"unknown domain '{domain}' (use {', '.join(DOMAINS)})")
