"""The metric conventions, pinned with closed-form and golden values.

PSNR/SSIM follow the published deraining evaluations (MATLAB `rgb2ycbcr` luma, peak 255, 11x11
Gaussian SSIM with sigma 1.5, 'valid' borders); NIQE/BRISQUE are pyiqa's with the LIVE parameters
rainkit ships, and must work with the network blocked.
"""

from __future__ import annotations

import math
import socket
from dataclasses import replace

import cv2
import numpy as np
import pytest

from tests.conftest import shared_file
from rainkit.data.images import read_image, to_uint8
from rainkit.errors import MetricNotApplicable, ParameterError, RainkitError
from rainkit.metrics import (METRICS, create_metric, crop_border, full_reference_scores, get_metric, parse_metrics, psnr,
                             register_metric, rgb_to_y, ssim)
import tests.tolerances as TOL

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
    assert rgb_to_y(image)[0, 0] == pytest.approx(y, abs=TOL.EXACT64)
    # float input on the same 0..255 scale gives the same, unrounded double
    assert rgb_to_y(image.astype(np.float32))[0, 0] == pytest.approx(y, abs=TOL.SUM64)
    assert rgb_to_y(image).dtype == np.float64


def test_y_rejects_non_rgb():
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# --- PSNR ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [1, 5, 16])
def test_psnr_of_known_mse(delta):
    a = np.full((8, 9, 3), 100, np.uint8)
    b = a + np.uint8(delta)
    assert psnr(a, b) == pytest.approx(10 * math.log10(PEAK2 / delta ** 2), abs=TOL.EXACT64)
    # MSE 1 at peak 255 is 48.1308 dB
    if delta == 1:
        assert psnr(a, b) == pytest.approx(48.13080360867910, abs=TOL.EXACT64)


def test_psnr_mixed_errors_and_identity():
    a = np.zeros((2, 2), np.float64)
    b = np.array([[0.0, 2.0], [4.0, 0.0]])  # MSE = (4 + 16) / 4 = 5
    assert psnr(a, b) == pytest.approx(10 * math.log10(PEAK2 / 5.0), abs=TOL.EXACT64)
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
    assert scores["psnr_y"] - scores["psnr_rgb"] == pytest.approx(-20 * math.log10(219 / 255), abs=TOL.SUM64)


# --- SSIM ----------------------------------------------------------------------------------------

def test_ssim_identity_is_one():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 31, 3)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=TOL.EXACT64)
    assert full_reference_scores(a, a)["ssim_y"] == pytest.approx(1.0, abs=TOL.EXACT64)
    assert full_reference_scores(a, a)["psnr_y"] == math.inf


def test_ssim_of_constant_images_closed_form():
    # No variance, no covariance: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 110.0)
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1), abs=TOL.EXACT64)


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
    assert value == pytest.approx(_ssim_reference(a, b), abs=TOL.EXACT64)
    assert value == pytest.approx(0.9718162456651496, abs=TOL.EXACT64)  # golden
    assert psnr(a, b) == pytest.approx(22.731372843238887, abs=TOL.EXACT64)


def test_ssim_valid_borders_need_more_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    # 'valid': an 11x11 image has exactly one window position
    rng = np.random.default_rng(3)
    a, b = rng.random((11, 11)) * 255, rng.random((11, 11)) * 255
    assert ssim(a, b) == pytest.approx(_ssim_reference(a, b), abs=TOL.EXACT64)


def test_ssim_rgb_averages_channels():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (20, 22, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    per_channel = [_ssim_reference(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert full_reference_scores(a, b)["ssim_rgb"] == pytest.approx(np.mean(per_channel), abs=TOL.EXACT64)


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
    assert parse_metrics(["ssim_y", "niqe"], True) == ["ssim_y", "niqe"]
    assert parse_metrics("all", False) == ["niqe", "brisque"]
    with pytest.raises(RainkitError, match="ambiguous"):
        parse_metrics("psnr", True)
    with pytest.raises(RainkitError, match="unknown metric"):
        parse_metrics("lpips", True)
    with pytest.raises(RainkitError, match="need clean references"):
        parse_metrics("psnr_y,niqe", False)


def test_metric_errors_name_the_parameter_and_suggest():
    with pytest.raises(ParameterError) as caught:
        parse_metrics("nique", False)
    assert caught.value.parameter == "metrics" and str(caught.value).startswith("metrics: unknown metric 'nique'")
    assert "did you mean niqe" in str(caught.value)
    assert str(caught.value.for_option("--metrics")).startswith("--metrics: unknown metric")
    with pytest.raises(ParameterError, match="did you mean ssim_y"):
        get_metric("ssim-yy")


def test_metric_table_refuses_a_name_twice():
    with pytest.raises(RainkitError, match="already registered"):
        register_metric(METRICS["psnr_y"])
    with pytest.raises(RainkitError, match="already registered"):
        register_metric(replace(METRICS["psnr_y"], name="psnr"))  # an ambiguous name is taken too
    assert list(METRICS) == ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "niqe", "brisque"]


def test_create_metric_scores_as_the_functions_do():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (24, 30, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert create_metric("psnr_y")(a, b) == psnr(rgb_to_y(a), rgb_to_y(b))
    assert create_metric("ssim_rgb")(a, b) == ssim(a, b)
    assert create_metric("PSNR-RGB").name == "psnr_rgb"
    with pytest.raises(ValueError, match="reference="):
        create_metric("ssim_y")(a)


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
        assert scores[name] == pytest.approx(value, abs=TOL.SUM64), name


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


# pyiqa with its own LIVE parameter files (IQA-PyTorch ResultsCalibra/calibration_summary.csv, rows
# niqe(ours) and brisque(ours)); ../shared/README.md has them beside the MATLAB code's.
CALIBRATION = {
    "I03": (15.6538, 94.6443),
    "I04": (3.6549, -0.1068),
    "I06": (3.2342, 1.0732),
    "I08": (3.1922, 5.1447),
    "I19": (9.0722, 66.8415),
}


@pytest.fixture(scope="module")
def no_reference_metrics():
    from rainkit.metrics import create_metric

    return create_metric("niqe"), create_metric("brisque")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CALIBRATION))
def test_niqe_brisque_calibration_offline(name, no_network, no_reference_metrics):
    path = shared_file(f"iqa/calibration/{name}.bmp")
    niqe, brisque = no_reference_metrics
    rgb = to_uint8(read_image(path).rgb, "round")
    expected_niqe, expected_brisque = CALIBRATION[name]
    assert niqe(rgb, name=name) == pytest.approx(expected_niqe, abs=TOL.IQA_CALIBRATION)
    assert brisque(rgb, name=name) == pytest.approx(expected_brisque, abs=TOL.IQA_CALIBRATION)


def test_niqe_and_brisque_refuse_what_they_cannot_score(no_network, no_reference_metrics):
    niqe, brisque = no_reference_metrics
    rng = np.random.default_rng(6)
    texture = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    for shape, metric, reason in [((95, 300), niqe, "smaller than its 96x96 block"),
                                  ((1, 1), niqe, "smaller than its 96x96 block"),
                                  ((16, 8000), niqe, "smaller than its 96x96 block"),
                                  ((6, 64), brisque, "smaller than its 7x7 window"),
                                  ((2, 3), brisque, "smaller than its 7x7 window")]:
        image = np.resize(texture, (*shape, 3))
        with pytest.raises(MetricNotApplicable, match=reason) as caught:
            metric(image, name="small.png")
        assert caught.value.metric == metric.name and str(caught.value).startswith("small.png: ")
    flat = np.full((200, 200, 3), 128, np.uint8)
    for metric in (niqe, brisque):
        with pytest.raises(MetricNotApplicable, match="uniform"):
            metric(flat, name="flat.png")
    with pytest.raises(ValueError):
        niqe(np.zeros((200, 200, 3), np.float32))


def test_niqe_scores_one_block_as_pyiqa_does(no_network, no_reference_metrics):
    """pyiqa fits NIQE over 96x96 blocks and takes one block as enough (the covariance of a single
    block's features is zero), so 160x107 and 96x96 are scored: only the first block counts."""
    niqe, _ = no_reference_metrics
    rng = np.random.default_rng(8)
    image = cv2.GaussianBlur(rng.integers(0, 256, (107, 160, 3)).astype(np.uint8), (5, 5), 1.0)
    value = niqe(image, name="160x107.png")
    assert math.isfinite(value)
    assert niqe(np.ascontiguousarray(image[:96, :96]), name="96x96.png") == pytest.approx(value, abs=TOL.SUM64)
