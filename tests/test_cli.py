"""Command-line behaviour shared by every command: usage errors, the shipped sample."""

from __future__ import annotations

import stat

import cv2

from rainkit.cli import main
from rainkit.data.images import SAMPLE_RAINY_IMAGE


def test_usage_errors_are_one_message_and_exit_code_2(capsys, tmp_path):
    assert main(["derain"]) == 2
    assert "--sample" in capsys.readouterr().err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["derain", "a.png", "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
    assert main(["no-such-command"]) == 2


def test_sample_image_ships_and_derains_into_the_output_folder(tmp_path, tiny_sapnet_file):
    image = cv2.imread(str(SAMPLE_RAINY_IMAGE))
    assert image is not None and image.shape == (600, 512, 3)
    assert main(["derain", "--sample", "-o", str(tmp_path), "--weights", str(tiny_sapnet_file), "--device", "cpu",
                 "--tile", "256"]) == 0
    output = tmp_path / f"{SAMPLE_RAINY_IMAGE.stem}.png"
    assert cv2.imread(str(output)).shape == (600, 512, 3)
    mode = stat.S_IMODE(output.stat().st_mode)
    assert mode & stat.S_IRGRP, "outputs are readable like any file the user creates, not mkstemp's 0600"
