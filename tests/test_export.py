"""ONNX export (rainkit.export.onnx) and the onnxruntime deraining backend (rainkit.export.onnx_engine).

Tiny variants with fixed random weights, exported once per module; the graphs run on onnxruntime's CPU
provider at sizes other than the traced one (odd ones included) and are compared with rainkit's torch
output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, rainy_like, shared_file
from rainkit.cli import main
from rainkit.errors import DeviceError, ParameterError, RainkitError, WeightsError
from rainkit.export import onnx as onnx_export
from rainkit.export.onnx import EXAMPLE_SIZE, TOLERANCE, card_path, cpu_session, export_onnx
from rainkit.export.onnx_engine import cached_onnx_path, load_onnx_derainer
from rainkit.hub import create_model
from rainkit.hub.checkpoint import save_checkpoint
from rainkit.registry import get_arch

EXTRA = "needs the export extra (onnx, onnxruntime): pip install 'rainkit[export]'"
pytest.importorskip("onnx", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)

ARCHS = ("sapnet", "prenet", "tpsence")
SIZES = ((37, 53), (30, 71))  # neither is the traced size; odd sides, and sides that are not multiples of 4
assert all(size != EXAMPLE_SIZE for size in SIZES)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    files = {}
    for seed, arch in enumerate(ARCHS):
        torch.manual_seed(seed)
        kwargs = dict(get_arch(arch).variants["tiny"])
        files[arch] = save_checkpoint(folder / f"tiny-{arch}.safetensors", create_model(arch, **kwargs), arch, kwargs)
    return files


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {arch: export_onnx(arch, str(path), folder / f"{arch}.onnx") for arch, path in tiny_checkpoints.items()}


def torch_output(arch: str, checkpoint, rgb: np.ndarray) -> np.ndarray:
    """rainkit's own whole-image output, in the graph's conventions (NCHW; [-1, 1] for the generator)."""
    if arch == "tpsence":
        from rainkit.hub import load_model
        from rainkit.synth.tpsence import pad_to_multiple

        net, _ = load_model("tpsence", str(checkpoint))
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None] * 2 - 1
        with torch.inference_mode():
            return net(pad_to_multiple(x))[:, :, :rgb.shape[0], :rgb.shape[1]].numpy()
    from rainkit.derain import load_derainer

    return load_derainer(arch, str(checkpoint), device="cpu", tile=0).derain(rgb).transpose(2, 0, 1)[None]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_writes_a_graph_with_dynamic_size_that_matches_torch(arch, exported, tiny_checkpoints):
    result = exported[arch]
    card = json.loads(card_path(result.onnx_path).read_text())
    assert card == result.card
    assert card["arch"] == arch and card["arch_kwargs"] == json.loads(json.dumps(get_arch(arch).variants["tiny"]))
    assert card["weights_sha256"] == sha256(tiny_checkpoints[arch])
    assert card["onnx_sha256"] == sha256(result.onnx_path) and card["onnx_file"] == result.onnx_path.name
    assert card["opset"] == 17 and card["dtype"] == "fp32" and card["rainkit_version"]
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert any("tiling" in note for note in card["not_in_graph"])
    (inp,), (out,) = card["inputs"], card["outputs"]
    assert inp["layout"] == "NCHW" and inp["channels"] == "RGB" and inp["shape"] == ["batch", 3, "height", "width"]
    low = -1.0 if arch == "tpsence" else 0.0
    assert inp["range"] == out["range"] == [low, 1.0]

    session = cpu_session(result.onnx_path, "test")
    for seed, (height, width) in enumerate(SIZES):
        rgb = rainy_like(height, width, seed=seed)
        x = rgb.transpose(2, 0, 1)[None].copy()
        produced = session.run(None, {inp["name"]: x * 2 - 1 if arch == "tpsence" else x})[0]
        expected = torch_output(arch, tiny_checkpoints[arch], rgb)
        assert produced.shape == (1, 3, height, width)
        assert np.abs(produced - expected).max() <= 1e-4, (arch, height, width)


def test_generator_graph_takes_the_smallest_size_the_generator_takes(exported, tiny_checkpoints):
    rgb = rainy_like(5, 7)
    produced = cpu_session(exported["tpsence"].onnx_path, "test").run(
        None, {"clear": rgb.transpose(2, 0, 1)[None] * 2 - 1})[0]
    assert np.abs(produced - torch_output("tpsence", tiny_checkpoints["tpsence"], rgb)).max() <= 1e-4


def test_graphs_take_a_batch(exported):
    session = cpu_session(exported["sapnet"].onnx_path, "test")
    batch = np.stack([rainy_like(33, 41, seed=s).transpose(2, 0, 1) for s in range(2)])
    together = session.run(None, {"rainy": batch})[0]
    alone = session.run(None, {"rainy": batch[1:]})[0]
    assert np.abs(together[1:] - alone).max() <= 1e-5, "channel attention pools per image, not over the batch"


@pytest.mark.parametrize("arch", ("sapnet", "tpsence"))
def test_fp16_graph_holds_its_stated_tolerance(arch, tiny_checkpoints, tmp_path):
    import onnx

    result = export_onnx(arch, str(tiny_checkpoints[arch]), tmp_path / "half.onnx", dtype="fp16")
    assert result.card["dtype"] == "fp16" and result.card["parity"]["tolerance"] == TOLERANCE["fp16"]
    assert "slower" in result.card["dtype_note"]
    model = onnx.load(str(result.onnx_path))
    kinds = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}, "convolution weights are stored in fp16"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "inputs stay float32"
    rgb = rainy_like(*SIZES[0])
    x = rgb.transpose(2, 0, 1)[None].copy()
    produced = cpu_session(result.onnx_path, "test").run(None, {result.card["inputs"][0]["name"]:
                                                                x * 2 - 1 if arch == "tpsence" else x})[0]
    assert np.abs(produced - torch_output(arch, tiny_checkpoints[arch], rgb)).max() <= TOLERANCE["fp16"]


def test_a_graph_that_does_not_hold_is_not_written(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", -1.0)
    target = tmp_path / "prenet.onnx"
    with pytest.raises(RainkitError, match="does not hold.*nothing was written"):
        export_onnx("prenet", str(tiny_checkpoints["prenet"]), target)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_requests_in_one_line(tiny_checkpoints, tmp_path):
    weights = str(tiny_checkpoints["sapnet"])
    with pytest.raises(ParameterError, match="cannot be exported") as info:
        export_onnx("espnet", None, tmp_path / "e.onnx")
    assert info.value.parameter == "arch"
    with pytest.raises(ParameterError, match="dtype"):
        export_onnx("sapnet", weights, tmp_path / "s.onnx", dtype="bf16")
    with pytest.raises(ParameterError, match="opset"):
        export_onnx("sapnet", weights, tmp_path / "s.onnx", opset=7)
    with pytest.raises(ParameterError, match="is a folder"):
        export_onnx("sapnet", weights, tmp_path)
    with pytest.raises(ParameterError, match="ends in .onnx"):
        export_onnx("sapnet", weights, tmp_path / "s.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        export_onnx("sapnet", str(tmp_path / "missing.safetensors"), tmp_path / "s.onnx")
    with pytest.raises(WeightsError, match="not 'sapnet'"):
        export_onnx("sapnet", str(tiny_checkpoints["tpsence"]), tmp_path / "s.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_packages_name_the_extra(monkeypatch, tiny_checkpoints, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RainkitError, match=r"rainkit\[export\]"):
        export_onnx("sapnet", str(tiny_checkpoints["sapnet"]), tmp_path / "s.onnx")
    with pytest.raises(RainkitError, match=r"rainkit\[export\]"):
        load_onnx_derainer("sapnet", str(tiny_checkpoints["sapnet"]))


def test_backend_exports_into_the_cache_once_and_derains_like_torch(tiny_checkpoints, tmp_path, isolated_cache):
    from rainkit.derain.batch import derain_paths

    source = tmp_path / "rain.png"
    cv2.imwrite(str(source), (rainy_like(41, 57)[:, :, ::-1] * 255).round().astype(np.uint8))
    weights = str(tiny_checkpoints["sapnet"])
    first = derain_paths([str(source)], tmp_path / "onnx", weights=weights, device="cpu", backend="onnxruntime")
    assert first.ok and first.settings["onnx_exported"] is True
    cached = cached_onnx_path("sapnet", sha256(tiny_checkpoints["sapnet"]))
    assert cached.is_relative_to(isolated_cache) and cached.is_file()
    card = json.loads(card_path(cached).read_text())
    sidecar = json.loads((tmp_path / "onnx" / "rain.png.json").read_text())
    assert sidecar["backend"] == "onnxruntime" and sidecar["provider"] == "CPUExecutionProvider"
    assert sidecar["onnx_sha256"] == card["onnx_sha256"] == sha256(cached) and sidecar["tile"] == 0

    again = derain_paths([str(source)], tmp_path / "onnx", weights=weights, device="cpu", backend="onnxruntime",
                         overwrite=True)
    assert again.ok and again.settings["onnx_exported"] is False
    reference = derain_paths([str(source)], tmp_path / "torch", weights=weights, device="cpu", tile=0)
    assert reference.ok and "backend" not in reference.settings
    a = cv2.imread(str(tmp_path / "onnx" / "rain.png")).astype(int)
    b = cv2.imread(str(tmp_path / "torch" / "rain.png")).astype(int)
    assert np.abs(a - b).max() <= 1, "8-bit outputs agree to rounding"


def test_a_damaged_cache_entry_is_exported_again(tiny_checkpoints, tmp_path):
    weights = str(tiny_checkpoints["prenet"])
    assert load_onnx_derainer("prenet", weights).exported_now
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(tiny_checkpoints["prenet"].read_bytes())
    again = load_onnx_derainer("prenet", str(moved))
    assert not again.exported_now and again.describe()["weights"] == str(moved), "same sha256: the same graph"
    cached = cached_onnx_path("prenet", sha256(tiny_checkpoints["prenet"]))
    cached.write_bytes(cached.read_bytes()[:100])  # a truncated file
    derainer = load_onnx_derainer("prenet", weights)
    assert derainer.exported_now and derainer.onnx_sha256 == sha256(cached)
    card_path(cached).write_text("{not json")
    assert load_onnx_derainer("prenet", weights).exported_now
    assert not load_onnx_derainer("prenet", weights).exported_now


def test_backend_takes_an_exported_file(exported, tiny_checkpoints, tmp_path):
    path = exported["prenet"].onnx_path
    derainer = load_onnx_derainer("prenet", str(path))
    assert derainer.describe()["onnx_sha256"] == sha256(path) and not derainer.exported_now
    assert derainer.describe()["weights_sha256"] == sha256(tiny_checkpoints["prenet"])
    rgb = rainy_like(29, 35)
    expected = torch_output("prenet", tiny_checkpoints["prenet"], rgb)[0].transpose(1, 2, 0)
    assert np.abs(derainer.derain(rgb) - expected).max() <= 1e-4
    with pytest.raises(WeightsError, match="the graph is 'prenet', not 'sapnet'"):
        load_onnx_derainer("sapnet", str(path))
    import onnx

    foreign = onnx.load(str(path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(WeightsError, match="foreign.onnx: not an ONNX file exported by rainkit"):
        load_onnx_derainer("prenet", str(tmp_path / "foreign.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(WeightsError, match="garbage.onnx: not a readable ONNX file"):
        load_onnx_derainer("prenet", str(garbage))
    with pytest.raises(WeightsError, match="no such ONNX file"):
        load_onnx_derainer("prenet", str(tmp_path / "missing.onnx"))


def test_an_image_too_big_for_memory_fails_alone_and_the_batch_goes_on(exported, tmp_path):
    from rainkit.derain.batch import derain_files
    from rainkit.io.batch import plan_jobs

    for name, (height, width) in {"small.png": (20, 30), "big.png": (60, 90)}.items():
        cv2.imwrite(str(tmp_path / name), (rainy_like(height, width) * 255).astype(np.uint8))
    derainer = load_onnx_derainer("sapnet", str(exported["sapnet"].onnx_path))
    derainer.memory_budget = 40 * 60 * 1450 * 8 // 32  # room for 40x60 pixels at the tiny width of 8
    jobs = plan_jobs([str(tmp_path / "big.png"), str(tmp_path / "small.png")], tmp_path / "out", fmt="png",
                     beside_suffix="_derained")
    result = derain_files(derainer, jobs)
    status = {item.input: item for item in result.items}
    assert not result.ok and (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "big.png").exists()
    failed = status[str(tmp_path / "big.png")]
    assert failed.status == "failed" and "90x60 image needs about" in failed.error and "--backend torch" in failed.error


def test_backend_refuses_what_it_cannot_do(tiny_checkpoints):
    weights = str(tiny_checkpoints["sapnet"])
    with pytest.raises(ParameterError, match="whole images") as info:
        load_onnx_derainer("sapnet", weights, tile=256)
    assert info.value.parameter == "tile"
    with pytest.raises(DeviceError, match="on the CPU"):
        load_onnx_derainer("sapnet", weights, device="cuda")
    with pytest.raises(ParameterError, match="fp32"):
        load_onnx_derainer("sapnet", weights, precision="bf16")
    with pytest.raises(RainkitError, match="not a deraining network"):
        load_onnx_derainer("tpsence", str(tiny_checkpoints["tpsence"]))


def test_cli_export_and_derain_with_onnxruntime(tiny_checkpoints, tmp_path, capsys):
    target = tmp_path / "out" / "prenet.onnx"
    assert main(["export", "prenet", "--weights", str(tiny_checkpoints["prenet"]), "-o", str(target)]) == 0
    assert "exported" in capsys.readouterr().err and card_path(target).is_file()
    source = tmp_path / "rain.png"
    cv2.imwrite(str(source), (rainy_like(24, 32) * 255).astype(np.uint8))
    assert main(["derain", str(source), "-o", str(tmp_path / "d"), "-m", "prenet", "--weights", str(target),
                 "--backend", "onnxruntime"]) == 0
    err = capsys.readouterr().err
    assert "onnxruntime (CPUExecutionProvider)" in err and (tmp_path / "d" / "rain.png").is_file()
    assert main(["derain", str(source), "-o", str(tmp_path / "d"), "--backend", "tensorflow"]) == 1
    err = capsys.readouterr().err
    assert "--backend" in err and "Traceback" not in err
    assert main(["derain", str(source), "-o", str(tmp_path / "d"), "--weights", str(target), "-m", "prenet",
                 "--backend", "onnxruntime", "--tile", "64"]) == 1
    assert "--tile" in capsys.readouterr().err
    assert main(["export", "espnet", "-o", str(tmp_path / "e.onnx")]) == 1
    assert "MODEL: 'espnet' cannot be exported" in capsys.readouterr().err


def test_export_help_imports_neither_torch_nor_onnx():
    code = ("import sys; from rainkit.cli import main; main(['export', '--help']); "
            "assert not {'torch', 'onnx', 'onnxruntime'} & set(sys.modules), 'heavy import'")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--dtype" in run.stdout


@pytest.mark.slow
def test_official_sapnet_graph_matches_torch_on_a_rain100l_crop(shared_weights_path, tmp_path):
    rainy = cv2.imread(str(shared_file("data/rain100l/rainy/rain-001.png")))[:, :, ::-1]
    rgb = np.ascontiguousarray(rainy[:121, :163], dtype=np.float32) / 255.0
    result = export_onnx("sapnet", "sapnet.official", tmp_path / "sapnet.onnx")
    assert result.card["weights"] == "sapnet.official" and result.card["parity"]["max_abs_diff"] <= 1e-4
    from rainkit.derain import load_derainer

    expected = load_derainer("sapnet", "sapnet.official", device="cpu", tile=0).derain(rgb)
    produced = load_onnx_derainer("sapnet", str(result.onnx_path)).derain(rgb)
    assert np.abs(produced - expected).max() <= 1e-4
