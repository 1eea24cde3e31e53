"""The TPSeNCE command line: `rainkit train tpsence`, `rainkit generate --method tpsence/auto`,
`rainkit segment`. Tiny networks on tiny images; no network access."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from rainkit.cli import main
from rainkit.train.tpsence_config import TINY_OVERRIDES
from tests.conftest import rainy_like, shared_file
import tests.tolerances as TOL

# batch 2, 2 samples an epoch: 1 step per epoch, 2 epochs (1 constant + 1 decay)
TINY = [arg for o in TINY_OVERRIDES + ["samples_per_epoch=2", "plot_curves=false"] for arg in ("--set", o)]


def _write_folder(folder, n, height, width, offset, labels_folder=None):
    folder.mkdir(parents=True)
    for i in range(n):
        rgb = (rainy_like(height, width, seed=offset + i) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i}.jpg" if i % 2 else folder / f"img{i}.png"), rgb[:, :, ::-1])
        if labels_folder is not None:
            labels_folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(labels_folder / f"img{i}.png"), (rgb[:, :, i % 3] > 128).astype(np.uint8) * (i + 1))


@pytest.fixture
def unpaired(tmp_path):
    root = tmp_path / "data"
    _write_folder(root / "clear", 3, 40, 48, 0, root / "seg-clear")
    _write_folder(root / "rain", 3, 36, 44, 10, root / "seg-rain")
    return root


def _data_args(root, labels=True):
    args = ["--clear", str(root / "clear"), "--target", str(root / "rain")]
    return args + (["--seg-clear", str(root / "seg-clear"), "--seg-target", str(root / "seg-rain")] if labels else [])


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


@pytest.fixture
def tiny_generator_file(tmp_path):
    from rainkit.hub import create_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.models.tpsence import init_weights

    torch.manual_seed(0)
    kwargs = {"ngf": 4, "n_blocks": 1}
    model = init_weights(create_model("tpsence", **kwargs), 0.5)
    return save_checkpoint(tmp_path / "tiny-generator.safetensors", model, "tpsence", kwargs)


@pytest.fixture
def tiny_espnet_file(tmp_path):
    from rainkit.hub import create_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.registry import get_arch

    torch.manual_seed(0)
    kwargs = dict(get_arch("espnet").variants["tiny"])
    return save_checkpoint(tmp_path / "tiny-espnet.safetensors", create_model("espnet", **kwargs).eval(), "espnet", kwargs)


def _photo(tmp_path, name="a.png", h=37, w=53, seed=0):
    path = tmp_path / name
    cv2.imwrite(str(path), (rainy_like(h, w, seed) * 200).astype(np.uint8))
    return path


# ---------------------------------------------------------------------------------------------- train tpsence
def test_train_tpsence_end_to_end_then_resume_continues_exactly(unpaired, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert main(["train", "tpsence", *_data_args(unpaired), "--out", str(straight), *TINY,
                 "--set", "sample_every=1", "--set", "plot_curves=true"]) == 0
    for name in ("last.pt", "train.log", "curves.png", "generator.safetensors", "generator.json", "config.json",
                 "data.json", "samples/step_0000001.png", "samples/step_0000002.png"):
        assert (straight / name).is_file(), name
    card = json.loads((straight / "generator.json").read_text())
    assert card["step"] == 2 and card["data"]["domain"] == "rain" and "label maps" in card["data"]["labels"]
    assert "rainkit generate --method tpsence" in capsys.readouterr().err

    # interrupted after one step (max_steps), then resumed from the run folder alone
    run = tmp_path / "run"
    assert main(["train", "tpsence", *_data_args(unpaired), "--out", str(run), *TINY, "--set", "max_steps=1"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 1
    assert main(["train", "tpsence", "--resume", "--out", str(run), "--set", "max_steps=0"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["global_step"], state["epoch"]) == (2, 2)
    a, b = _tensors(straight / "generator.safetensors"), _tensors(run / "generator.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume must continue bit for bit"


def test_train_tpsence_plain_patchnce_needs_no_maps(unpaired, tmp_path, capsys):
    assert main(["train", "tpsence", *_data_args(unpaired, labels=False), "--out", str(tmp_path / "r"), *TINY]) == 1
    err = _one_line_error(capsys)
    assert "--seg-clear" in err and "--segmenter espnet" in err and "sence=false" in err
    assert main(["train", "tpsence", *_data_args(unpaired, labels=False), "--out", str(tmp_path / "r"), *TINY,
                 "--set", "sence=false", "--set", "max_steps=1", "--domain", "snow"]) == 0
    assert json.loads((tmp_path / "r" / "generator.json").read_text())["data"]["domain"] == "snow"


def test_missing_or_mismatched_label_maps_are_one_error(unpaired, tmp_path, capsys):
    (unpaired / "seg-rain" / "img1.png").unlink()
    assert main(["train", "tpsence", *_data_args(unpaired), "--out", str(tmp_path / "r"), *TINY]) == 1
    err = _one_line_error(capsys)
    assert "--seg-target" in err and "img1.png" in err and "1 of 3" in err
    cv2.imwrite(str(unpaired / "seg-rain" / "img1.png"), np.zeros((10, 12), np.uint8))
    assert main(["train", "tpsence", *_data_args(unpaired), "--out", str(tmp_path / "r"), *TINY]) == 1
    err = _one_line_error(capsys)
    assert "img1.jpg" in err and "image 44x36, map 12x10" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_segment_then_train_with_its_maps_and_with_the_segmenter(unpaired, tiny_espnet_file, tmp_path, capsys):
    for what in ("clear", "rain"):
        assert main(["segment", str(unpaired / what), "-o", str(tmp_path / f"maps-{what}"), "--weights",
                     str(tiny_espnet_file), "--device", "cpu", "--overlay"]) == 0
    labels = cv2.imread(str(tmp_path / "maps-clear" / "img1.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (40, 48) and labels.dtype == np.uint8 and labels.max() < 20
    assert cv2.imread(str(tmp_path / "maps-clear" / "overlay" / "img1.png")).shape == (40, 48, 3)
    record = json.loads((tmp_path / "maps-clear" / "rainkit-segment.json").read_text())
    assert record["model"] == "espnet" and len(record["weights_sha256"]) == 64
    args = ["--clear", str(unpaired / "clear"), "--target", str(unpaired / "rain"), *TINY, "--set", "max_steps=1"]
    assert main(["train", "tpsence", *args, "--out", str(tmp_path / "a"), "--seg-clear", str(tmp_path / "maps-clear"),
                 "--seg-target", str(tmp_path / "maps-rain")]) == 0
    assert main(["train", "tpsence", *args, "--out", str(tmp_path / "b"), "--segmenter", "espnet",
                 "--segmenter-weights", str(tiny_espnet_file)]) == 0
    cached = sorted((tmp_path / "b" / "labels").rglob("*.png"))
    assert len(cached) == 6
    # the segmenter and `rainkit segment` give the same maps
    same = next(p for p in cached if p.parent.name == "clear" and p.name == "img1.jpg.png")
    assert np.array_equal(cv2.imread(str(same), cv2.IMREAD_UNCHANGED), labels)


def test_segmenter_weights_missing_says_how_to_get_them(unpaired, tmp_path, capsys):
    assert main(["train", "tpsence", *_data_args(unpaired, labels=False), "--segmenter", "espnet",
                 "--out", str(tmp_path / "r"), *TINY]) == 1
    err = _one_line_error(capsys)
    assert "espnet.cityscapes" in err and "rainkit weights fetch espnet.cityscapes" in err


def test_segment_with_the_official_espnet(shared_weights_path, tmp_path):
    shared_file("weights/espnet-cityscapes/espnet_p_2_q_8.pth")
    image = shared_file("data/rain100l/norain/norain-001.png")
    assert main(["segment", str(image), "-o", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    labels = cv2.imread(str(tmp_path / "maps" / "norain-001.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == cv2.imread(str(image)).shape[:2] and labels.max() <= 19
    assert len(np.unique(labels)) >= 2
    assert json.loads((tmp_path / "maps" / "rainkit-segment.json").read_text())["weights"] == "espnet.cityscapes"


# ---------------------------------------------------------------------------------------------- generate
def test_generate_tpsence_without_weights_is_one_line(tmp_path, capsys):
    src = _photo(tmp_path)
    assert main(["generate", str(src), str(tmp_path / "out"), "--method", "tpsence"]) == 1
    err = _one_line_error(capsys)
    assert "--method physics" in err and "rainkit train tpsence" in err
    assert not (tmp_path / "out").exists()


def test_generate_auto_without_weights_falls_back_to_physics(tmp_path, capsys):
    src = _photo(tmp_path)
    assert main(["generate", str(src), str(tmp_path / "auto"), "--method", "auto", "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert "method: physics" in err and "no learned rain weights" in err
    assert main(["generate", str(src), str(tmp_path / "physics"), "--seed", "5"]) == 0
    assert (tmp_path / "auto" / "a.png").read_bytes() == (tmp_path / "physics" / "a.png").read_bytes()
    assert json.loads((tmp_path / "auto" / "rainkit-generate.json").read_text())["method"] == "physics"


def test_generate_tpsence_native_resolution_reproducible_and_recorded(tiny_generator_file, tmp_path, capsys):
    from rainkit.hub.weights import sha256_file

    src = _photo(tmp_path, h=37, w=53)
    common = ["--method", "tpsence", "--weights", str(tiny_generator_file), "--device", "cpu", "--seed", "3"]
    assert main(["generate", str(src), str(tmp_path / "one"), *common]) == 0
    assert main(["generate", str(src), str(tmp_path / "two"), *common]) == 0
    one = tmp_path / "one" / "a.png"
    assert one.read_bytes() == (tmp_path / "two" / "a.png").read_bytes()
    out = cv2.imread(str(one))
    assert out.shape == (37, 53, 3) and not np.array_equal(out, cv2.imread(str(src)))
    record = json.loads((tmp_path / "one" / "rainkit-generate.json").read_text())
    assert record["method"] == "tpsence" and record["model"] == "tpsence" and record["seed"] == 3
    assert record["weights_sha256"] == sha256_file(tiny_generator_file)
    assert "method: tpsence" in capsys.readouterr().err
    # seam-free tiles, pairs layout
    assert main(["generate", str(src), str(tmp_path / "tiled"), *common, "--tile", "16", "--pairs"]) == 0
    tiled = cv2.imread(str(tmp_path / "tiled" / "rain" / "a.png"))
    assert np.abs(tiled.astype(int) - out.astype(int)).max() <= 1
    assert np.array_equal(cv2.imread(str(tmp_path / "tiled" / "norain" / "a.png")), cv2.imread(str(src)))
    # another generator into the same folder is refused, not mixed
    assert main(["generate", str(src), str(tmp_path / "one"), "--seed", "3"]) == 1


def test_generate_names_the_tile_plan_and_honours_max_memory(tiny_generator_file, tmp_path, capsys):
    from rainkit.synth.batch import GenerateSettings, generate_paths

    src = _photo(tmp_path, h=37, w=53)
    settings = GenerateSettings(method="tpsence", weights=str(tiny_generator_file), device="cpu", tile=16)
    plans = []
    result = generate_paths([str(src)], tmp_path / "tiled", settings, on_tile=lambda done, total, plan: plans.append(plan))
    assert result.ok and result.items[0].tile == 16 and set(plans) == {"tiles of 16 px, single pass"}
    code = main(["generate", str(src), str(tmp_path / "capped"), "--method", "tpsence", "--weights",
                 str(tiny_generator_file), "--device", "cpu", "--max-memory", "1M"])
    assert code == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "memory cap of 0.00 GiB is too little for a 56x40 image" in err and "Traceback" not in err


def test_work_width_adds_weather_made_at_that_width_to_the_full_resolution_photo(tiny_generator_file, tmp_path):
    from rainkit.synth.tpsence import load_generator

    rgb = cv2.cvtColor(cv2.imread(str(_photo(tmp_path, h=60, w=80))), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    native = load_generator(tiny_generator_file)
    scaled = load_generator(tiny_generator_file, work_width=40)
    out = scaled.generate(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    # exactly: the photo plus the generator's change at 40x30, resized back
    small = cv2.resize(rgb, (40, 30), interpolation=cv2.INTER_AREA)
    change = cv2.resize(native.generate(small) - small, (80, 60), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(out, np.clip(rgb + change, 0, 1), atol=TOL.FP32)
    assert not np.allclose(out, native.generate(rgb), atol=TOL.CONVERGED)
    # a work width at or above the image's width is the native pass
    assert np.array_equal(load_generator(tiny_generator_file, work_width=80).generate(rgb), native.generate(rgb))
    src = tmp_path / "a.png"
    common = ["--method", "tpsence", "--weights", str(tiny_generator_file), "--device", "cpu"]
    assert main(["generate", str(src), str(tmp_path / "w"), *common, "--work-width", "40"]) == 0
    assert json.loads((tmp_path / "w" / "rainkit-generate.json").read_text())["work_width"] == 40
    assert cv2.imread(str(tmp_path / "w" / "a.png")).shape == (60, 80, 3)


def test_registered_weights_bring_their_own_work_width_and_an_explicit_one_wins(tiny_generator_file, tmp_path,
                                                                                   monkeypatch):
    from rainkit import registry
    from rainkit.hub.weights import sha256_file
    from rainkit.registry import WeightsEntry, list_weights

    src = _photo(tmp_path, h=64, w=80)
    # a file no entry names runs at native resolution unless told otherwise
    assert main(["generate", str(src), str(tmp_path / "file"), "--weights", str(tiny_generator_file),
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "file" / "rainkit-generate.json").read_text())["work_width"] == 0

    list_weights()  # the built-in entries first
    entry = WeightsEntry(name="tpsence.snow", filename="tpsence-snow.safetensors", sha256=sha256_file(tiny_generator_file),
                         url=None, license="test", provenance="tiny test generator", work_width=40)
    monkeypatch.setitem(registry._WEIGHTS, entry.name, entry)
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / entry.filename).write_bytes(tiny_generator_file.read_bytes())
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(folder))
    common = ["--method", "tpsence", "--domain", "snow", "--device", "cpu"]
    for extra, expected in (([], 40), (["--work-width", "0"], 0), (["--work-width", "24"], 24)):
        out = tmp_path / f"w{expected}"
        assert main(["generate", str(src), str(out), *common, *extra]) == 0
        assert json.loads((out / "rainkit-generate.json").read_text())["work_width"] == expected


def test_a_tone_generator_at_a_work_width_tones_the_full_resolution_photo_with_its_resized_maps(tmp_path):
    """Tone maps are made at the work width, resized, and applied to the photo's own pixels: a grey photo
    stays grey and every pixel follows the imaging model with the resized maps (a 40 x 32 working image: no
    padding to a multiple of 4 to mirror here)."""
    import torch.nn.functional as F

    from rainkit.hub import create_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.models.tpsence import init_weights
    from rainkit.synth.tpsence import load_generator

    torch.manual_seed(0)
    kwargs = {"ngf": 4, "n_blocks": 1, "residual": True, "change": "tone"}
    model = init_weights(create_model("tpsence", **kwargs), 0.5)
    weights = save_checkpoint(tmp_path / "tone.safetensors", model, "tpsence", kwargs)
    rgb = cv2.cvtColor(cv2.imread(str(_photo(tmp_path, h=64, w=80))), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    out = load_generator(weights, work_width=40).generate(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    small = cv2.resize(rgb, (40, 32), interpolation=cv2.INTER_AREA)
    model.eval()
    with torch.no_grad():
        maps = model.model(torch.from_numpy(small.transpose(2, 0, 1))[None] * 2 - 1)
        maps = F.interpolate(maps, size=(64, 80), mode="bilinear", align_corners=False)
        expected = model.apply_change(torch.from_numpy(rgb.transpose(2, 0, 1))[None] * 2 - 1, maps)
    expected = ((expected[0] + 1) / 2).clamp(0, 1).numpy().transpose(1, 2, 0)
    assert np.allclose(out, expected, atol=TOL.FP32)
    grey = np.repeat(rgb.mean(2, keepdims=True), 3, axis=2)
    toned = load_generator(weights, work_width=40).generate(grey)
    assert np.allclose(toned[..., 0], toned[..., 1], atol=TOL.FP32) and np.allclose(toned[..., 1], toned[..., 2],
                                                                                    atol=TOL.FP32)


def test_registered_domain_weights_are_used_by_tpsence_and_auto(tiny_generator_file, tmp_path, monkeypatch, capsys):
    """Registering `tpsence.<domain>` is all it takes: no other code knows the names."""
    from rainkit import registry
    from rainkit.hub.weights import sha256_file
    from rainkit.registry import WeightsEntry, list_weights
    from rainkit.synth.tpsence import default_generator_weights

    assert default_generator_weights("snow") is None
    list_weights()  # the built-in entries first
    entry = WeightsEntry(name="tpsence.snow", filename="tpsence-snow.safetensors", sha256=sha256_file(tiny_generator_file),
                         url=None, license="test", provenance="tiny test generator")
    monkeypatch.setitem(registry._WEIGHTS, entry.name, entry)
    assert default_generator_weights("snow") == entry
    src = _photo(tmp_path)

    # registered but not on this machine: auto falls back and says so; tpsence gives the registry's message
    assert main(["generate", str(src), str(tmp_path / "fallback"), "--method", "auto", "--domain", "snow"]) == 0
    assert "tpsence.snow" in capsys.readouterr().err
    assert json.loads((tmp_path / "fallback" / "rainkit-generate.json").read_text())["method"] == "physics"
    assert main(["generate", str(src), str(tmp_path / "x"), "--method", "tpsence", "--domain", "snow"]) == 1
    assert "weights 'tpsence.snow' not found" in _one_line_error(capsys)

    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / entry.filename).write_bytes(tiny_generator_file.read_bytes())
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(folder))
    for method in ("auto", "tpsence"):
        assert main(["generate", str(src), str(tmp_path / method), "--method", method, "--domain", "snow",
                     "--device", "cpu"]) == 0
        record = json.loads((tmp_path / method / "rainkit-generate.json").read_text())
        assert record["method"] == "tpsence" and record["weights"] == "tpsence.snow"
    assert (tmp_path / "auto" / "a.png").read_bytes() == (tmp_path / "tpsence" / "a.png").read_bytes()
