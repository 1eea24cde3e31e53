"""`--max-memory`: a cap on the whole process that the tile choice honours (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tests.tolerances as TOL
from rainkit.derain.engine import Derainer
from rainkit.errors import ParameterError, RainkitError
from rainkit.registry import create_model
from rainkit.tiling import parse_memory_size, resident_bytes
from tests.conftest import rainy_like


def _derainer(max_memory) -> Derainer:
    torch.manual_seed(0)
    model = create_model("sapnet", "tiny").eval().to(memory_format=torch.channels_last)
    return Derainer(model, "cpu", arch="sapnet", halo=32, max_memory=max_memory)


def test_sizes_parse_in_binary_units():
    assert parse_memory_size("3G") == 3 << 30
    assert parse_memory_size("512M") == 512 << 20
    assert parse_memory_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_memory_size("2gb") == 2 << 30
    assert parse_memory_size(12345) == 12345 and parse_memory_size(None) is None
    with pytest.raises(ParameterError, match="max_memory: 'lots' is not a size"):
        parse_memory_size("lots")


def test_a_cap_just_above_what_the_process_holds_tiles_and_keeps_the_output():
    image = rainy_like(400, 480)  # the tiny variant's estimate for it: 74 MB
    whole = _derainer(None).derain(image)
    derainer = _derainer(resident_bytes() + (24 << 20))  # 24 MiB of room beside what the process holds
    tiled = derainer.derain(image)
    assert derainer.last_tile > 0
    mse = float(np.mean((np.clip(tiled, 0, 1) - np.clip(whole, 0, 1)) ** 2))
    assert 10 * np.log10(1 / mse) > TOL.TILED_VS_WHOLE_DB
    roomy = _derainer(resident_bytes() + (4 << 30))
    roomy.derain(image)
    assert roomy.last_tile == 0  # a generous cap runs the image whole


def test_a_cap_below_what_the_process_holds_is_one_line(tmp_path, tiny_sapnet_file, capsys):
    import cv2

    from rainkit.cli import main

    with pytest.raises(RainkitError, match="memory cap of 0.00 GiB is too little for a 200x180 image"):
        _derainer(1 << 20).derain(rainy_like(180, 200))
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), (rainy_like(40, 48) * 255).astype(np.uint8))
    code = main(["derain", str(photo), "-o", str(tmp_path / "out"), "--weights", str(tiny_sapnet_file),
                 "--device", "cpu", "--max-memory", "1M"])
    assert code == 1
    err = capsys.readouterr().err
    assert "memory cap of 0.00 GiB is too little for a 48x40 image" in err.replace("\n", "")
    assert "Traceback" not in err
