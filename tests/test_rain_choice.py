"""The per-image choice between light- and heavy-rain weights (`rainkit derain --rain auto|light|heavy`)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from rainkit.cli import main
from rainkit.derain.engine import STRENGTH_SIDE, Derainer, load_derainer
from rainkit.errors import ParameterError
from rainkit.hub import create_model
from rainkit.registry import get_weights
from rainkit.synth import synthesize
from tests.conftest import rainy_like


def _tiny(seed: int) -> Derainer:
    torch.manual_seed(seed)
    return Derainer(create_model("sapnet", "tiny").eval(), "cpu", arch="sapnet")


def _strength_by_hand(derainer: Derainer, rgb: np.ndarray) -> float:
    height, width = rgb.shape[:2]
    scale = min(1.0, STRENGTH_SIDE / max(height, width))
    small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    out = derainer.model(torch.from_numpy(small.transpose(2, 0, 1).copy())[None]).detach()[0].numpy().transpose(1, 2, 0)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.maximum((small - out) @ luma, 0).mean())


def test_strength_is_the_rain_the_light_model_removes_on_a_small_copy():
    light = _tiny(0)
    for height, width in ((60, 80), (420, 900)):  # run as it is; area-downscaled to 400 px
        rgb = rainy_like(height, width)
        strength, output = light.rain_strength(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
        assert strength == pytest.approx(_strength_by_hand(light, rgb), abs=2e-3)
        assert (output is None) == (max(height, width) > STRENGTH_SIDE)


def test_images_go_to_the_heavy_model_above_the_threshold_only():
    light, heavy = _tiny(0), _tiny(1)
    rgb = rainy_like(64, 96)
    strength, _ = light.rain_strength(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
    for threshold, expected in ((strength - 1e-4, heavy), (strength + 1e-4, light)):
        chooser = _tiny(0)
        chooser.use_heavy(heavy, threshold)
        out = chooser.derain(rgb)
        assert np.array_equal(out, expected.derain(rgb))
        assert chooser.last_choice == {"rain": "heavy" if expected is heavy else "light",
                                       "rain_strength": round(strength, 5)}
        described = chooser.describe()
        assert described["rain"] == "auto" and described["heavy_threshold"] == threshold


def test_shipped_default_names_its_heavy_rain_weights():
    light = get_weights("sapnet.rainkit")
    heavy = get_weights(light.heavy_weights)
    assert heavy.name == "sapnet.rainkit-heavy" and 0 < light.heavy_threshold < 0.2


def test_the_shipped_pair_splits_light_from_heavy_rain(tmp_path):
    """The default weights' choice on a clean photo, light and heavy physics rain, and the sidecar's record."""
    clean = cv2.resize(rainy_like(120, 160, seed=3), (320, 240))
    for name, rgb in (("clean", clean), ("light", synthesize(clean, "rain", preset="light", seed=0)),
                      ("heavy", synthesize(clean, "rain", preset="downpour", seed=0))):
        cv2.imwrite(str(tmp_path / f"{name}.png"), (rgb[:, :, ::-1] * 255).round().astype(np.uint8))
    assert main(["derain", str(tmp_path / "clean.png"), str(tmp_path / "light.png"), str(tmp_path / "heavy.png"),
                 "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    choices = {name: json.loads((tmp_path / "out" / f"{name}.png.json").read_text()) for name in ("clean", "light", "heavy")}
    assert [choices[name]["rain"] for name in ("clean", "light", "heavy")] == ["light", "light", "heavy"]
    assert choices["heavy"]["heavy_weights"] == "sapnet.rainkit-heavy"


def test_rain_option_is_checked():
    with pytest.raises(ParameterError, match="rain: 'storm' is not one of auto, light, heavy"):
        load_derainer("sapnet", rain="storm", device="cpu")


def test_heavy_needs_weights_that_name_heavy_ones(tiny_sapnet_file):
    with pytest.raises(ParameterError, match="'heavy' needs weights that name heavy-rain weights"):
        load_derainer("sapnet", str(tiny_sapnet_file), device="cpu", rain="heavy")
    assert load_derainer("sapnet", str(tiny_sapnet_file), device="cpu").heavy is None
