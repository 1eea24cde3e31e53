"""`rainkit derain` on every kind of input a user may throw at it: each works correctly or fails
with one line naming the file, the batch goes on, the exit code says whether anything failed, and
no input is ever overwritten or output half-written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from rainkit.cli import main
from rainkit.data.images import read_image
from tests.conftest import rainy_like


def _u8(h=24, w=32, seed=0) -> np.ndarray:
    return (rainy_like(h, w, seed) * 255).astype(np.uint8)


def _derain(tiny_sapnet_file: Path, *args: str) -> int:
    return main(["derain", *args, "--model", "sapnet", "--weights", str(tiny_sapnet_file), "--device", "cpu"])


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    files: dict[str, Path] = {}
    rgb = _u8()
    files["ok"] = folder / "ok.png"
    cv2.imwrite(str(files["ok"]), rgb[:, :, ::-1])
    files["rgba"] = folder / "rgba.png"
    alpha = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    cv2.imwrite(str(files["rgba"]), np.dstack([rgb[:, :, ::-1], alpha]))
    files["sixteen"] = folder / "sixteen.png"
    cv2.imwrite(str(files["sixteen"]), rgb[:, :, ::-1].astype(np.uint16) * 257)
    files["gray"] = folder / "gray.png"
    cv2.imwrite(str(files["gray"]), rgb[:, :, 0])
    files["cmyk"] = folder / "cmyk.jpg"
    PILImage.fromarray(rgb).convert("CMYK").save(files["cmyk"], quality=95)
    files["exif"] = folder / "exif.jpg"
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    PILImage.fromarray(rgb).save(files["exif"], quality=95, exif=exif.tobytes())
    files["tiny"] = folder / "tiny.png"
    cv2.imwrite(str(files["tiny"]), rgb[:1, :1, ::-1])
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    files["text"] = folder / "text.jpg"
    files["text"].write_text("this is not an image\n")
    good_jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    files["truncated_jpg"] = folder / "truncated.jpg"
    files["truncated_jpg"].write_bytes(good_jpeg[: len(good_jpeg) // 2])
    good_png = cv2.imencode(".png", rgb)[1].tobytes()
    files["truncated_png"] = folder / "truncated_png.png"
    files["truncated_png"].write_bytes(good_png[: len(good_png) - 30])
    files["corrupt"] = folder / "corrupt.png"
    files["corrupt"].write_bytes(good_png[:40] + bytes(range(256)) * 4 + good_png[-12:])
    files["dir"] = folder / "folder.png"
    files["dir"].mkdir()
    return files


FAILS = {"empty": "empty file", "text": "not a decodable image", "truncated_jpg": "truncated JPEG",
         "truncated_png": "truncated PNG", "corrupt": "not a decodable image", "dir": "no images in folder"}


def test_bad_input_matrix(inputs, tmp_path, tiny_sapnet_file, capsys):
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in inputs.values() if p.is_file()}
    missing = str(tmp_path / "does-not-exist.png")
    code = _derain(tiny_sapnet_file, *[str(p) for p in inputs.values()], missing, "-o", str(out), "--json", str(tmp_path / "s.json"))
    assert code == 1, "a batch with failures must exit non-zero"
    summary = json.loads((tmp_path / "s.json").read_text())
    status = {Path(item["input"]).name: item for item in summary["items"]}
    for key, reason in FAILS.items():
        item = status[inputs[key].name]
        assert item["status"] == "failed" and reason in item["error"] and inputs[key].name in item["error"], item
        assert "\n" not in item["error"]
        assert not (out / (inputs[key].stem + ".png")).exists()
    assert status["does-not-exist.png"]["status"] == "failed" and "no such file" in status["does-not-exist.png"]["error"]
    for key in ("ok", "rgba", "sixteen", "gray", "cmyk", "exif", "tiny"):
        assert status[inputs[key].name]["status"] == "done", status[inputs[key].name]
    # inputs untouched, no temporary files left
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]

    rgba = cv2.imread(str(out / "rgba.png"), cv2.IMREAD_UNCHANGED)
    original_alpha = cv2.imread(str(inputs["rgba"]), cv2.IMREAD_UNCHANGED)[:, :, 3]
    assert rgba.shape == (24, 32, 4) and np.array_equal(rgba[:, :, 3], original_alpha)
    sixteen = cv2.imread(str(out / "sixteen.png"), cv2.IMREAD_UNCHANGED)
    assert sixteen.dtype == np.uint16 and sixteen.shape == (24, 32, 3)
    assert cv2.imread(str(out / "gray.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    assert cv2.imread(str(out / "exif.png")).shape[:2] == (32, 24), "EXIF orientation must be applied"
    assert cv2.imread(str(out / "tiny.png")).shape[:2] == (1, 1)
    sidecar = json.loads((out / "ok.png.json").read_text())
    assert sidecar["model"] == "sapnet" and len(sidecar["weights_sha256"]) == 64 and sidecar["rainkit_version"]
    err = capsys.readouterr().err
    assert "truncated JPEG" in err


def test_cmyk_and_exif_decode_to_the_right_pixels(inputs):
    original = _u8().astype(np.float32) / 255
    cmyk = read_image(inputs["cmyk"]).rgb
    assert np.abs(cmyk - original).mean() < 0.03  # JPEG loss only, no inverted or swapped channels
    rotated = read_image(inputs["exif"]).rgb
    assert np.abs(rotated - np.rot90(original, k=-1)).mean() < 0.03


def test_resume_skips_existing_outputs_and_overwrite_redoes_them(inputs, tmp_path, tiny_sapnet_file):
    out = tmp_path / "out"
    assert _derain(tiny_sapnet_file, str(inputs["ok"]), "-o", str(out)) == 0
    target = out / "ok.png"
    cv2.imwrite(str(target), _u8())  # a complete image someone else left there: kept
    sentinel = target.read_bytes()
    assert _derain(tiny_sapnet_file, str(inputs["ok"]), "-o", str(out), "--json", str(tmp_path / "a.json")) == 0
    assert target.read_bytes() == sentinel
    assert json.loads((tmp_path / "a.json").read_text())["items"][0]["status"] == "skipped"
    assert _derain(tiny_sapnet_file, str(inputs["ok"]), "-o", str(out), "--overwrite") == 0
    assert target.read_bytes() != sentinel


def test_single_file_without_output_goes_beside_it(inputs, tiny_sapnet_file):
    assert _derain(tiny_sapnet_file, str(inputs["ok"])) == 0
    assert (inputs["ok"].parent / "ok_derained.png").is_file()


def test_an_input_is_never_overwritten(tmp_path, tiny_sapnet_file):
    source = tmp_path / "photo.png"
    cv2.imwrite(str(source), _u8())
    data = source.read_bytes()
    assert _derain(tiny_sapnet_file, str(source), "-o", str(tmp_path), "--overwrite") == 1
    assert source.read_bytes() == data


def test_folders_globs_recursion_and_formats(tmp_path, tiny_sapnet_file):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), _u8())
    cv2.imwrite(str(root / "sub" / "b.jpg"), _u8(seed=1))
    out = tmp_path / "out"
    assert _derain(tiny_sapnet_file, str(root), "-o", str(out), "--recursive", "--format", "jpg", "--quality", "80") == 0
    assert (out / "a.jpg").is_file() and (out / "sub" / "b.jpg").is_file()
    assert _derain(tiny_sapnet_file, str(root / "*.png"), "-o", str(tmp_path / "glob"), "--format", "webp") == 0
    assert (tmp_path / "glob" / "a.webp").is_file()


def test_no_default_weights_is_one_clear_line(tmp_path, capsys):
    source = tmp_path / "photo.png"
    cv2.imwrite(str(source), _u8())
    assert main(["derain", str(source), "--model", "prenet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no default weights for 'prenet'" in err and "--weights" in err


def test_default_sapnet_weights_ship_verified_and_derain_the_sample(tmp_path):
    from rainkit.hub import check_weights, default_weights_for

    entry = default_weights_for("sapnet")
    assert entry is not None and entry.name == "sapnet.rainkit"
    status = check_weights(entry)
    assert status.state == "verified", status.detail
    assert main(["derain", "--sample", "-o", str(tmp_path), "--device", "cpu"]) == 0
    sidecar = json.loads((tmp_path / "rainy-grace-hopper.png.json").read_text())
    assert sidecar["weights"] == "sapnet.rainkit" and sidecar["weights_sha256"] == entry.sha256


def test_version_and_help_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from rainkit.cli import main; main(['--help']); assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "derain" in result.stdout
    version = subprocess.run([sys.executable, "-m", "rainkit", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("rainkit ")
