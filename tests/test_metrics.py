"""The metric conventions, pinned with closed-form and golden values.

PSNR/SSIM follow the published deraining evaluations (MATLAB `rgb2ycbcr` luma, peak 255, 11x11
Gaussian SSIM with sigma 1.5, 'valid' borders); NIQE/BRISQUE are pyiqa's with the LIVE parameters
rainkit ships, and must work with the network blocked.
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest

from conftest import shared_file
from rainkit.data.images import read_image, to_uint8
from rainkit.errors import RainkitError
from rainkit.metrics import METRICS, crop_border, full_reference_scores, parse_metrics, psnr, rgb_to_y, ssim

PEAK2 = 255.0 ** 2


# --- Y channel ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rgb, y", [
    ((0, 0, 0), 16.0),
    ((255, 255, 255), 235.0),  # 16 + 219: BT.601 studio range
    ((255, 0, 0), 16.0 + 65.481),
    ((0, 255, 0), 16.0 + 128.553),
    ((0, 0, 255), 16.0 + 24.966),
    ((10, 20, 30), 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255.0),
])
def test_y_is_matlab_rgb2ycbcr_luma(rgb, y):
    image = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    assert rgb_to_y(image)[0, 0] == pytest.approx(y, abs=1e-12)
    # float input on the same 0..255 scale gives the same, unrounded double
    assert rgb_to_y(image.astype(np.float32))[0, 0] == pytest.approx(y, abs=1e-9)
    assert rgb_to_y(image).dtype == np.float64


def test_y_rejects_non_rgb():
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# --- PSNR ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [1, 5, 16])
def test_psnr_of_known_mse(delta):
    a = np.full((8, 9, 3), 100, np.uint8)
    b = a + np.uint8(delta)
    assert psnr(a, b) == pytest.approx(10 * math.log10(PEAK2 / delta ** 2), abs=1e-12)
    # MSE 1 at peak 255 is 48.1308 dB
    if delta == 1:
        assert psnr(a, b) == pytest.approx(48.13080360867910, abs=1e-12)


def test_psnr_mixed_errors_and_identity():
    a = np.zeros((2, 2), np.float64)
    b = np.array([[0.0, 2.0], [4.0, 0.0]])  # MSE = (4 + 16) / 4 = 5
    assert psnr(a, b) == pytest.approx(10 * math.log10(PEAK2 / 5.0), abs=1e-12)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError):
        psnr(a, np.zeros((2, 3)))


def test_psnr_y_and_rgb_of_grey_images_differ_by_the_luma_gain():
    # For grey pixels Y = 16 + v * 219/255, so every error shrinks by 219/255 on Y.
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (40, 48)).astype(np.uint8)
    noisy = np.clip(grey.astype(int) + rng.integers(-9, 10, grey.shape), 0, 255).astype(np.uint8)
    a, b = np.repeat(grey[..., None], 3, 2), np.repeat(noisy[..., None], 3, 2)
    scores = full_reference_scores(a, b)
    assert scores["psnr_y"] - scores["psnr_rgb"] == pytest.approx(-20 * math.log10(219 / 255), abs=1e-9)


# --- SSIM ----------------------------------------------------------------------------------------

def test_ssim_identity_is_one():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 31, 3)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert full_reference_scores(a, a)["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    assert full_reference_scores(a, a)["psnr_y"] == math.inf


def test_ssim_of_constant_images_closed_form():
    # No variance, no covariance: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 110.0)
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1), abs=1e-12)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m, written out with scipy: fspecial('gaussian', 11, 1.5), filter2 'valid'."""
    from scipy.signal import correlate2d

    x = np.arange(11) - 5
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()
    f = lambda z: correlate2d(z, window, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2
    return float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean())


def test_ssim_reference_pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 32)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).round()
    value = ssim(a, b)
    assert value == pytest.approx(_ssim_reference(a, b), abs=1e-12)
    assert value == pytest.approx(0.9718162456651496, abs=1e-12)  # golden
    assert psnr(a, b) == pytest.approx(22.731372843238887, abs=1e-12)


def test_ssim_valid_borders_need_more_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    # 'valid': an 11x11 image has exactly one window position
    rng = np.random.default_rng(3)
    a, b = rng.random((11, 11)) * 255, rng.random((11, 11)) * 255
    assert ssim(a, b) == pytest.approx(_ssim_reference(a, b), abs=1e-12)


def test_ssim_rgb_averages_channels():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (20, 22, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    per_channel = [_ssim_reference(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert full_reference_scores(a, b)["ssim_rgb"] == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_crop_border():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    b = a.copy()
    b[:3] = 0  # damage only the border
    assert full_reference_scores(a, b, ["psnr_rgb"], border=3)["psnr_rgb"] == math.inf
    assert full_reference_scores(a, b, ["psnr_rgb"], border=2)["psnr_rgb"] < 30
    assert crop_border(a, 4).shape == (22, 32, 3)
    with pytest.raises(ValueError):
        crop_border(a, 15)


def test_quantisation_truncates_like_the_official_scripts():
    x = np.array([[[0.999, 0.5, 1.7]]], np.float32)
    assert to_uint8(x, "truncate").tolist() == [[[254, 127, 255]]]
    assert to_uint8(x, "round").tolist() == [[[255, 128, 255]]]
    # 8-bit levels survive the float round trip exactly with either mode
    levels = (np.arange(256, dtype=np.float32) / 255.0).reshape(1, 256, 1)
    assert (to_uint8(levels, "truncate")[0, :, 0] == np.arange(256)).all()


def test_metric_table_names_conventions_and_directions():
    assert list(METRICS) == ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "niqe", "brisque"]
    assert not METRICS["niqe"].higher_is_better and not METRICS["brisque"].higher_is_better
    assert METRICS["niqe"].direction == "lower is better"
    assert all(METRICS[m].higher_is_better and METRICS[m].needs_reference for m in ("psnr_y", "ssim_y"))
    assert "rgb2ycbcr" in METRICS["psnr_y"].convention and "sigma 1.5" in METRICS["ssim_y"].convention


def test_parse_metrics():
    assert parse_metrics(None, True) == ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]
    assert parse_metrics(None, False) == ["niqe", "brisque"]
    assert parse_metrics("ssim_y, PSNR-Y", True) == ["ssim_y", "psnr_y"]
    assert parse_metrics("all", False) == ["niqe", "brisque"]
    with pytest.raises(RainkitError, match="ambiguous"):
        parse_metrics("psnr", True)
    with pytest.raises(RainkitError, match="unknown metric"):
        parse_metrics("lpips", True)
    with pytest.raises(RainkitError, match="need clean references"):
        parse_metrics("psnr_y,niqe", False)


# --- golden values on real data (../shared) -------------------------------------------------------

RAIN100L_RAINY = {  # the rainy inputs against the clean images, per image
    1: (27.300847546647958, 0.8584515908692734, 25.97249871950766, 0.8509095145999336),
    2: (29.00067060194132, 0.8641259172805977, 27.678837047994378, 0.8516384239846886),
    3: (33.8423156185734, 0.9446157465247718, 32.46732681775552, 0.9355548884328903),
}


@pytest.mark.parametrize("number", sorted(RAIN100L_RAINY))
def test_rain100l_rainy_inputs_golden(number):
    rainy = shared_file(f"data/rain100l/rainy/rain-{number:03d}.png")
    clean = shared_file(f"data/rain100l/norain/norain-{number:03d}.png")
    a, b = to_uint8(read_image(rainy).rgb, "round"), to_uint8(read_image(clean).rgb, "round")
    scores = full_reference_scores(a, b)
    expected = dict(zip(["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"], RAIN100L_RAINY[number]))
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-9), name


# --- NIQE / BRISQUE ---------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection, or to reach pyiqa's downloader, fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import pyiqa.utils.download_util as download_util

    monkeypatch.setattr(download_util, "load_file_from_url", refuse)
    monkeypatch.setattr(download_util, "download_file_from_google_drive", refuse, raising=False)


# pyiqa with the LIVE parameters, from ../shared/README.md
CALIBRATION = {"I03": (15.6538, 94.6443), "I04": (3.6549, -0.1068)}


@pytest.mark.slow
def test_niqe_brisque_calibration_offline(no_network):
    from rainkit.metrics import NoReferenceScorer

    images = {name: shared_file(f"iqa/calibration/{name}.bmp") for name in CALIBRATION}
    scorer = NoReferenceScorer(["niqe", "brisque"])
    for name, path in images.items():
        scores = scorer(to_uint8(read_image(path).rgb, "round"), name=name)
        niqe, brisque = CALIBRATION[name]
        assert scores["niqe"] == pytest.approx(niqe, abs=0.01), name
        assert scores["brisque"] == pytest.approx(brisque, abs=0.01), name


@pytest.mark.slow
def test_niqe_refuses_tiny_images_and_checks_input(no_network):
    from rainkit.metrics import NoReferenceScorer

    scorer = NoReferenceScorer(["niqe"])
    with pytest.raises(RainkitError, match="too small for NIQE"):
        scorer(np.zeros((64, 64, 3), np.uint8), name="tiny.png")
    with pytest.raises(ValueError):
        scorer(np.zeros((200, 200, 3), np.float32))
    with pytest.raises(ValueError):
        NoReferenceScorer(["psnr_y"])
