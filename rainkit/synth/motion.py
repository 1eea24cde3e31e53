"""Weather that moves across the frames of a video, instead of a fresh random pattern per frame.

Rain and snow are drawn once per clip as seamless (wrapping) layers at several depths; frame t shows
each layer shifted along its fall direction by t times its speed (nearer layers fall faster), so
streaks and flakes travel down the frame from one frame to the next. The veil, fog and night's exposure
and white balance are fixed for the clip; night's sensor noise is drawn anew per frame, as a sensor's is.
Everything derives from one seed, so a clip's weather is reproducible frame for frame, and any frame can
be made on its own (which is what lets a killed video job resume mid-clip with identical output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rainkit.synth.physics import (REFERENCE_SIDE, SNOW_DEPTHS, add_fog, add_night, composite_snow, image_seed,
                                   rain_atmosphere, rain_layer, rain_light, rain_params, snow_layer)

# Pixels a frame at the 480-pixel reference: the nearest rain layer, and snow (which drifts down slowly).
DEFAULT_RAIN_FALL = 24.0
SNOW_FALL_SHARE = 0.12


@dataclass(frozen=True)
class _Layer:
    field: np.ndarray  # H x W, wraps seamlessly
    dy: float  # pixels a frame
    dx: float


class MovingWeather:
    """The weather of one clip: `frame(rgb, t)` adds it to frame t (float32 RGB in [0, 1])."""

    def __init__(self, shape: tuple[int, int], domain: str, *, preset: str = "light", intensity: float | None = None,
                 seed: int = 0, fall_speed: float = DEFAULT_RAIN_FALL):
        self.shape = tuple(shape)
        self.domain = domain
        self.seed = seed
        self.intensity = intensity
        height, width = self.shape
        scale = max(min(height, width) / REFERENCE_SIDE, 0.25)
        self.scale = scale
        rng = np.random.default_rng(seed)
        self.layers: list[_Layer] = []
        if domain == "rain":
            params = rain_params(preset, intensity)
            self.params = params
            directions = [params.angle + rng.uniform(-params.angle_spread, params.angle_spread)
                          for _ in range(max(1, params.directions))]
            for layer in range(params.layers):
                depth = 1.0 - layer / max(1, params.layers)
                angle = directions[layer % len(directions)] + rng.uniform(-1.0, 1.0)
                field = rain_layer(self.shape, params, rng, angle=angle, depth=depth, scale=scale, wrap=True)
                speed = fall_speed * scale * (0.4 + 0.6 * depth)
                rad = np.deg2rad(angle)
                self.layers.append(_Layer(field, speed * np.cos(rad), speed * np.sin(rad)))
        elif domain == "snow":
            level = 0.6 if intensity is None else float(intensity)
            self.level = level
            for depth in SNOW_DEPTHS:
                field = snow_layer(self.shape, level, rng, depth=depth, scale=scale, wrap=True)
                speed = fall_speed * SNOW_FALL_SHARE * scale * (0.4 + 0.6 * depth)
                self.layers.append(_Layer(field, speed, speed * rng.uniform(-0.3, 0.3)))
        elif domain not in ("fog", "night"):
            raise ValueError(f"unknown domain '{domain}'")
        # What stays put for the clip (veil, fog, exposure) is drawn from its own seed, the same every frame.
        self._static_seed = image_seed(seed, "static")

    def layer(self, t: int) -> np.ndarray:
        """The moving part at frame t: H x W (rain adds it; snow blends it in)."""
        total = np.zeros(self.shape, np.float32)
        for layer in self.layers:
            shifted = np.roll(layer.field, (int(round(t * layer.dy)), int(round(t * layer.dx))), axis=(0, 1))
            total = total + shifted if self.domain == "rain" else np.maximum(total, shifted)
        return total

    def frame(self, rgb: np.ndarray, t: int) -> np.ndarray:
        if rgb.shape[:2] != self.shape:
            raise ValueError(f"frame {t} is {rgb.shape[1]}x{rgb.shape[0]}, the clip {self.shape[1]}x{self.shape[0]}")
        static = np.random.default_rng(self._static_seed)
        if self.domain == "rain":
            # The veil, the light and the drops on the lens stay put for the clip; the streaks move.
            rainy = rain_light(rgb, self.params) + self.layer(t)[:, :, None]
            return rain_atmosphere(rainy, self.params, static, scale=self.scale)
        if self.domain == "snow":
            return composite_snow(rgb, self.layer(t), self.level, static)
        level = 0.6 if self.intensity is None else float(self.intensity)
        if self.domain == "fog":
            return add_fog(rgb, level, static)
        return add_night(rgb, level, static, noise_rng=np.random.default_rng(image_seed(self.seed, f"noise/{t}")))


def flicker(layers: list[np.ndarray]) -> float:
    """Mean absolute frame-to-frame change of an added weather layer (in [0, 1] units), over a clip."""
    if len(layers) < 2:
        return 0.0
    return float(np.mean([np.mean(np.abs(b - a)) for a, b in zip(layers[:-1], layers[1:])]))
