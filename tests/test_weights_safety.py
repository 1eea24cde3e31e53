"""Bad weights files get one clear line each, through the library and through the CLI (issue 16: 4, 7, 8)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rainkit import registry
from rainkit.cli import main
from rainkit.errors import RainkitWarning, UnsafeCheckpointError, WeightsError
from rainkit.hub import create_model, load_model
from rainkit.hub import weights as weights_mod
from rainkit.hub.checkpoint import ARCH_KEY, KWARGS_KEY, read_state_dict, save_checkpoint
from rainkit.registry import WeightsEntry

TINY_PRENET = {"width": 8, "stages": 2, "blocks": 2}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return path


def _derain(tmp_path: Path, weights: str, model: str = "prenet") -> int:
    return main(["derain", str(_image(tmp_path)), "-o", str(tmp_path / "out"), "--model", model,
                 "--weights", weights, "--device", "cpu"])


def _tiny_prenet(tmp_path: Path, name: str = "tiny-prenet.safetensors") -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / name, create_model("prenet", **TINY_PRENET), "prenet", TINY_PRENET)


def _with_metadata(tmp_path: Path, kwargs_text: str) -> Path:
    """A tiny PReNet whose architecture settings metadata is `kwargs_text`, verbatim."""
    path = tmp_path / "meta.safetensors"
    state = {k: v.contiguous() for k, v in create_model("prenet", **TINY_PRENET).state_dict().items()}
    save_file(state, str(path), metadata={ARCH_KEY: "prenet", KWARGS_KEY: kwargs_text})
    return path


def _register(monkeypatch, content: bytes, name: str = "prenet.testonly", filename: str = "prenet-testonly.safetensors"):
    entry = WeightsEntry(name=name, filename=filename, sha256=hashlib.sha256(content).hexdigest(), url=None,
                         license="test", provenance="made by the test")
    registry.list_weights()  # the built-in entries first
    monkeypatch.setitem(registry._WEIGHTS, entry.name, entry)
    return entry


# --- 4. invalid architecture settings in safetensors metadata ------------------------------------------

@pytest.mark.parametrize("kwargs_text, expected", [
    ('{"width": 8,', r"metadata 'rainkit.arch_kwargs' is not valid JSON \(Expecting"),
    ("[8, 2, 2]", r"must be a JSON object of settings, not a list"),
    ('{"width": 8, "stages": 2, "blocks": 2, "colour": 1}', r"unknown setting\(s\) colour for 'prenet'"),
    ('{"width": "8", "stages": 2, "blocks": 2}', r"'width' must be an integer like 32, not a string \"8\""),
])
def test_bad_arch_kwargs_metadata_is_one_line(tmp_path, capsys, kwargs_text, expected):
    path = _with_metadata(tmp_path, kwargs_text)
    with pytest.raises(WeightsError, match=expected) as caught:
        load_model("prenet", str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert _derain(tmp_path, str(path)) == 1
    err = _one_line_error(capsys)
    assert "rainkit.arch_kwargs" in err and str(path.name) in err


def test_settings_that_do_not_build_the_network_are_one_line(tmp_path):
    path = _with_metadata(tmp_path, '{"width": 8, "stages": 2, "blocks": -3}')
    with pytest.raises(WeightsError, match=r"do not build 'prenet'"):
        load_model("prenet", str(path))


def test_metadata_for_another_architecture_is_refused(tmp_path):
    path = _tiny_prenet(tmp_path)
    with pytest.raises(WeightsError, match="weights are for 'prenet', not 'sapnet'"):
        load_model("sapnet", str(path))


# --- 7. tampered copies and files that claim a registered entry ---------------------------------------

def test_a_tampered_copy_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    good = _tiny_prenet(tmp_path).read_bytes()
    entry = _register(monkeypatch, good)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    tampered = bytearray(good)
    tampered[-10] ^= 0xFF
    (first / entry.filename).write_bytes(bytes(tampered))
    (second / entry.filename).write_bytes(good)
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", os.pathsep.join([str(first), str(second)]))

    with pytest.warns(RainkitWarning, match=rf"skipped {first / entry.filename} has sha256 .* not the .* registered "
                                            rf"for 'prenet.testonly'; using {second / entry.filename}"):
        resolved = weights_mod.resolve_weights(entry.name)
    assert resolved.path == second / entry.filename and resolved.sha256 == entry.sha256

    assert _derain(tmp_path, entry.name) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(first / entry.filename) in warning[0], err
    record = json.loads((tmp_path / "out" / "a.png.json").read_text())
    assert record["weights_sha256"] == entry.sha256

    assert main(["weights", "verify", entry.name]) == 0
    assert "skipped:" in capsys.readouterr().err


def test_an_explicit_path_named_like_a_registered_file_is_verified(tmp_path, capsys):
    impostor = tmp_path / "prenet-rain100l.pth"
    torch.save(create_model("prenet").state_dict(), impostor)
    with pytest.raises(WeightsError, match=r"claims to be registered weights 'prenet.rain100l' .* its sha256 is"):
        load_model("prenet", str(impostor))
    assert _derain(tmp_path, str(impostor)) == 1
    assert "claims to be registered weights 'prenet.rain100l'" in _one_line_error(capsys)

    # the same bytes under a name of the user's own load, and the sha256 of what was loaded is recorded
    own = tmp_path / "my-prenet.pth"
    shutil.copy(impostor, own)
    _, resolved = load_model("prenet", str(own))
    assert resolved.entry is None and resolved.sha256 == hashlib.sha256(own.read_bytes()).hexdigest()


def test_a_mirror_layout_and_a_digest_carrying_name_claim_their_entries(tmp_path):
    mirror = tmp_path / "prenet-official" / "rain100h" / "net_latest.pth"
    mirror.parent.mkdir(parents=True)
    torch.save(create_model("prenet").state_dict(), mirror)
    with pytest.raises(WeightsError, match="'prenet.rain100h'"):
        weights_mod.resolve_weights(mirror)
    fake_vgg = tmp_path / "vgg16-397923af.pth"
    fake_vgg.write_bytes(mirror.read_bytes())
    with pytest.raises(WeightsError, match="'vgg16.imagenet'"):
        weights_mod.resolve_weights(fake_vgg)
    # an upstream name shared by many files (net_latest.pth) claims nothing on its own
    plain = tmp_path / "net_latest.pth"
    plain.write_bytes(mirror.read_bytes())
    assert weights_mod.resolve_weights(plain).entry is None


def test_metadata_that_names_a_registered_entry_is_verified(tmp_path, capsys):
    model = create_model("sapnet", "tiny")
    path = save_checkpoint(tmp_path / "mine.safetensors", model, "sapnet", {"width": 8, "stages": 2, "dilations": [1, 2],
                                                                          "reduction": 4},
                           extra={weights_mod.NAME_KEY: "sapnet.rainkit"})
    with pytest.raises(WeightsError, match=r"claims to be registered weights 'sapnet.rainkit'"):
        load_model("sapnet", str(path))
    assert _derain(tmp_path, str(path), model="sapnet") == 1
    assert "sapnet.rainkit" in _one_line_error(capsys)


def test_a_cached_registered_detector_with_a_wrong_hash_is_an_error(tmp_path, isolated_cache):
    from rainkit.detect.detector import resolve_detector, ultralytics_dir

    cached = ultralytics_dir() / "weights" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the published detector" * 100)
    with pytest.raises(WeightsError, match=r"registered for 'yolo11n.coco'; delete .* download it afresh"):
        resolve_detector("yolo11n.pt", download=False)
    local = tmp_path / "yolo11n.pt"
    local.write_bytes(cached.read_bytes())
    with pytest.raises(WeightsError, match="claims to be registered weights 'yolo11n.coco'"):
        resolve_detector(str(local))


def test_a_wrong_vgg_file_in_torchvisions_cache_is_not_used(tmp_path, monkeypatch):
    from rainkit.losses.perceptual import load_vgg16_features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="'vgg16.imagenet': hash mismatch"):
        load_vgg16_features(None)


# --- 8. refused pickles and files that are not checkpoints -------------------------------------------

class _System:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_names_what_was_blocked_and_how_to_convert(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _System(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError) as caught:
        read_state_dict(evil)
    message = str(caught.value)
    assert f"{evil}: refused: this PyTorch zip checkpoint holds a pickled reference to {os.system.__module__}.system" in message
    assert "rainkit weights convert" in message and "--trust-source" in message and "\n" not in message
    assert "Re-running" not in message
    assert _derain(tmp_path, str(evil)) == 1
    err = _one_line_error(capsys)
    assert f"{os.system.__module__}.system" in err and "rainkit weights convert" in err
    assert not marker.exists(), "the pickled payload ran"


@pytest.mark.parametrize("content, expected", [
    (b"hello, these are not weights\n", "not a PyTorch checkpoint, it is a text file"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "it is an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "a Git LFS pointer file"),
    (b"\x00\x01\x02\x03binary", "unrecognised binary data"),
])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, capsys, content, expected):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=expected) as caught:
        read_state_dict(path)
    assert not isinstance(caught.value, UnsafeCheckpointError)
    assert _derain(tmp_path, str(path)) == 1
    assert expected in _one_line_error(capsys)


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(create_model("prenet", **TINY_PRENET).state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="a damaged or unreadable PyTorch zip checkpoint") as caught:
        read_state_dict(path)
    assert "\n" not in str(caught.value)


def test_convert_a_trusted_old_checkpoint(tmp_path, capsys):
    torch.manual_seed(3)
    model = create_model("prenet", **TINY_PRENET)
    old = tmp_path / "old.pth"
    torch.save(model, old)  # a whole pickled model object, as old research code saved them
    with pytest.raises(UnsafeCheckpointError, match="RecurrentDerainNet"):
        read_state_dict(old)
    new = tmp_path / "old.safetensors"
    assert main(["weights", "convert", str(old), str(new)]) == 2
    assert not new.exists() and "--trust-source" in capsys.readouterr().err
    assert main(["weights", "convert", str(old), str(new), "--trust-source"]) == 0
    assert hashlib.sha256(new.read_bytes()).hexdigest() in capsys.readouterr().err
    loaded, _ = load_model("prenet", str(new), variant="tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# --- registry front door --------------------------------------------------------------------------------

def test_load_model_takes_one_name_or_the_two_argument_form(tmp_path, monkeypatch):
    path = _tiny_prenet(tmp_path)
    entry = _register(monkeypatch, path.read_bytes(), filename=path.name)
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(tmp_path))
    one, resolved = load_model("prenet.testonly")
    two, _ = load_model("prenet", "prenet.testonly")
    assert resolved.entry == entry and type(one).__name__ == "RecurrentDerainNet"
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    with pytest.raises(WeightsError, match="already names the weights"):
        load_model("prenet.testonly", "prenet.rain100l")
    with pytest.raises(WeightsError, match="weights 'prenet.testonly' are for 'prenet', not 'sapnet'"):
        load_model("sapnet", "prenet.testonly")
    with pytest.raises(WeightsError, match="did you mean prenet.testonly"):
        load_model("prenet.testonyl")


def test_registry_refuses_duplicates_and_partial_digests(monkeypatch):
    registry.list_weights()
    monkeypatch.setattr(registry, "_WEIGHTS", dict(registry._WEIGHTS))
    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))
    base = dict(filename="x.pth", sha256="a" * 64, url=None, license="test", provenance="test")
    with pytest.raises(WeightsError, match="already registered"):
        registry.register_weights(WeightsEntry(name="sapnet.official", **base))
    with pytest.raises(WeightsError, match="full 64-hex digest"):
        registry.register_weights(WeightsEntry(name="sapnet.short", **{**base, "sha256": "397923af"}))
    with pytest.raises(WeightsError, match="already that of 'sapnet.official'"):
        registry.register_weights(WeightsEntry(name="sapnet.copy", **{**base, "filename": "sapnet-official.pth"}))
    with pytest.raises(WeightsError, match="declared with architecture 'newnet'"):
        registry.register_arch("newnet", task="derain", summary="test",
                               weights=[WeightsEntry(name="sapnet.other", **base)])(lambda: None)


def test_auxiliary_weights_are_registered_with_full_digests():
    for name, prefix in (("vgg16.imagenet", "397923af"), ("deeplabv3_mobilenet_v3_large.coco-voc", "fc3c493d")):
        entry = registry.get_weights(name)
        assert len(entry.sha256) == 64 and entry.sha256.startswith(prefix)  # torchvision names carry the prefix
        assert prefix in entry.filename and entry.url.endswith(entry.filename)
    for name in ("lpips.vgg-v0.1", "yolo11n.coco"):
        assert len(registry.get_weights(name).sha256) == 64


def test_hub_and_models_do_not_import_each_other():
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted(m for m in ('rainkit.hub', 'rainkit.models') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for module, other in (("rainkit.hub", "rainkit.models"), ("rainkit.models", "rainkit.hub")):
        out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, env=env, check=True)
        assert other not in out.stdout, f"importing {module} imported {other}"


def test_a_registered_detector_on_the_weights_path_is_used_once_verified(tmp_path, monkeypatch):
    from rainkit.detect.detector import resolve_detector

    content = b"a detector the test registers" * 64
    entry = _register(monkeypatch, content, name="yolo11n.testonly", filename="yolo-testonly.pt")
    (tmp_path / entry.filename).write_bytes(content)
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(tmp_path))
    assert resolve_detector(entry.filename, download=False) == tmp_path / entry.filename
