"""ESPNet segmenter: architecture, normalisation, strict loading of the official Cityscapes weights."""

from __future__ import annotations

import numpy as np
import torch

from rainkit.hub import create_model
from rainkit.models.espnet import ESPNET_MEAN_BGR, ESPNET_STD_BGR, ROAD, SKY, Segmenter, load_segmenter, normalize_rgb
from tests.conftest import rainy_like, shared_file
import tests.tolerances as TOL

CAMVID_FRAME = "data/weather/clear/camvid_segnet/0006R0_f02130.jpg"


def test_tiny_espnet_keeps_the_input_resolution():
    torch.manual_seed(0)
    model = create_model("espnet", "tiny").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 40, 56)).shape == (1, 20, 40, 56)
    labels = Segmenter(model).segment(rainy_like(37, 53))  # not a multiple of 8: padded, then cropped back
    assert labels.shape == (37, 53) and labels.dtype == np.uint8 and labels.max() < 20


def test_normalisation_is_the_official_scripts():
    rgb = torch.rand(1, 3, 4, 5)
    bgr255 = rgb.flip(1)[0].numpy().transpose(1, 2, 0) * 255.0
    expected = (bgr255 - np.array(ESPNET_MEAN_BGR)) / np.array(ESPNET_STD_BGR) / 255.0
    np.testing.assert_allclose(normalize_rgb(rgb)[0].numpy().transpose(1, 2, 0), expected, rtol=TOL.FP32_SUM, atol=TOL.FP32)


def test_catalog_entry_names_the_upstream_file():
    from rainkit.hub import get_weights

    entry = get_weights("espnet.cityscapes")
    assert entry.arch == "espnet" and entry.license == "MIT" and len(entry.sha256) == 64
    assert entry.url.endswith("afe71c38edaee3514ca44e0adcafdf36109bf437/pretrained/decoder/espnet_p_2_q_8.pth")
    assert entry.mirror_paths == ("espnet-cityscapes/espnet_p_2_q_8.pth",)


def test_official_weights_load_strictly_and_find_road_and_sky(shared_weights_path):
    from rainkit.data.images import read_image
    from rainkit.hub import check_weights, get_weights, load_model
    from rainkit.hub.checkpoint import read_state_dict

    status = check_weights(get_weights("espnet.cityscapes"))
    assert status.state == "verified", status.detail
    model, resolved = load_model("espnet", "espnet.cityscapes")  # strict: every key and shape must match
    assert set(model.state_dict()) == set(read_state_dict(resolved.path))
    segmenter = load_segmenter("espnet.cityscapes")
    labels = segmenter.segment(read_image(shared_file(CAMVID_FRAME)).rgb)
    height, width = labels.shape
    bottom = labels[int(height * 0.85):int(height * 0.95), int(width * 0.4):int(width * 0.6)]
    top = labels[int(height * 0.02):int(height * 0.12), int(width * 0.4):int(width * 0.6)]
    # Observed on this 480x360 CamVid frame: 100% road bottom-centre, 100% sky top-centre.
    assert (bottom == ROAD).mean() > 0.8, np.bincount(bottom.ravel(), minlength=20)
    assert (top == SKY).mean() > 0.8, np.bincount(top.ravel(), minlength=20)
