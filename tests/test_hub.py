"""Device/precision resolution, the architecture and weights registries, safe checkpoint loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from rainkit.errors import DeviceError, RainkitError, UnsafeCheckpointError, WeightsError
from rainkit.hub import create_model, load_model, resolve_device, resolve_precision
from rainkit.hub import weights as weights_mod
from rainkit.hub.checkpoint import load_state_dict_strict, normalize_state_dict, read_state_dict, save_checkpoint
from rainkit import registry
from rainkit.registry import register_arch


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expected, "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the unavailable-device error cannot be shown")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_explicit_cuda_without_cuda_is_an_error(spec):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(spec)


def test_unknown_device_and_precision():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision("int4", torch.device("cpu"))


def test_fp16_on_cpu_is_refused_and_bf16_allowed():
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    assert resolve_precision(None, torch.device("cpu")).name == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch, native):
    import warnings

    from rainkit.errors import RainkitWarning
    from rainkit.hub import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_bf16_is_native", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
        resolve_precision("fp32", torch.device("cpu"))
    emulated = [w for w in caught if issubclass(w.category, RainkitWarning) and "emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


def test_registry_rejects_duplicates_and_suggests_names():
    create_model("sapnet", "tiny")  # makes sure the built-ins are registered
    with pytest.raises(RainkitError, match="already registered"):
        register_arch("sapnet", task="derain", summary="dup")(lambda: None)
    with pytest.raises(RainkitError, match="did you mean sapnet"):
        create_model("sapnte")
    with pytest.raises(RainkitError, match="no variant 'tinny'.*did you mean tiny"):
        create_model("sapnet", "tinny")


def test_tiny_variants_are_small():
    assert sum(p.numel() for p in create_model("sapnet", "tiny").parameters()) < 10_000
    assert sum(p.numel() for p in create_model("prenet", "tiny").parameters()) < 10_000


def test_module_prefix_is_stripped_and_wrappers_unwrapped():
    state = {"module.conv.weight": torch.zeros(1), "module.conv.bias": torch.ones(1)}
    assert set(normalize_state_dict({"state_dict": state})) == {"conv.weight", "conv.bias"}


def test_strict_loading_lists_missing_and_unexpected_keys():
    model = create_model("prenet", "tiny")
    state = dict(model.state_dict())
    state.pop("conv.0.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing 1: conv\.0\.weight.*unexpected 1: extra\.weight"):
        load_state_dict_strict(model, state, "ckpt.pth")


class _Payload:
    """Unpickling this would create a marker file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_state_dict(evil)
    assert not marker.exists(), "the pickled payload ran"


def test_safetensors_roundtrip_records_architecture(tmp_path):
    torch.manual_seed(1)
    model = create_model("sapnet", width=8, stages=2, dilations=(1, 2), reduction=4)
    path = save_checkpoint(tmp_path / "m.safetensors", model, "sapnet", {"width": 8, "stages": 2, "dilations": [1, 2], "reduction": 4})
    loaded, resolved = load_model("sapnet", str(path))
    assert resolved.entry is None and len(resolved.sha256) == 64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(WeightsError, match="for 'sapnet', not 'prenet'"):
        load_model("prenet", str(path))


def _temp_entry(monkeypatch, tmp_path, content: bytes, url: str | None):
    entry = weights_mod.WeightsEntry(
        name="prenet.testonly", filename="prenet-testonly.pth", sha256=hashlib.sha256(content).hexdigest(),
        url=url, license="test", provenance="test")
    registry.list_weights()  # the built-in entries first
    monkeypatch.setitem(registry._WEIGHTS, entry.name, entry)
    return entry


def test_hash_mismatch_is_an_error(tmp_path, monkeypatch):
    entry = _temp_entry(monkeypatch, tmp_path, b"good weights", None)
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / entry.filename).write_bytes(b"tampered weights")
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(folder))
    assert weights_mod.check_weights(entry).state == "bad"
    with pytest.raises(WeightsError, match="hash mismatch"):
        weights_mod.resolve_weights(entry.name)


def test_a_file_kept_under_its_upstream_name_is_found(tmp_path, monkeypatch):
    entry = _temp_entry(monkeypatch, tmp_path, b"upstream weights", "https://example.invalid/dl/net_v1.pth")
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "net_v1.pth").write_bytes(b"upstream weights")
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(folder))
    assert weights_mod.resolve_weights(entry.name).path == folder / "net_v1.pth"


def test_missing_weights_say_how_to_get_them(monkeypatch, tmp_path):
    entry = _temp_entry(monkeypatch, tmp_path, b"x", "https://example.invalid/w.pth")
    with pytest.raises(WeightsError, match=r"rainkit weights fetch prenet\.testonly.*https://example\.invalid/w\.pth"):
        weights_mod.resolve_weights(entry.name)


def test_fetch_verifies_then_renames(tmp_path, monkeypatch, isolated_cache):
    source = tmp_path / "upstream.pth"
    source.write_bytes(b"real weights")
    entry = _temp_entry(monkeypatch, tmp_path, b"real weights", source.as_uri())
    path = weights_mod.fetch_weights(entry.name)
    assert path.read_bytes() == b"real weights" and path.parent == weights_mod.cache_dir()
    # a corrupted upstream is rejected and leaves nothing behind
    source.write_bytes(b"corrupted")
    with pytest.raises(WeightsError, match="expected"):
        weights_mod.fetch_weights(entry.name, force=True)
    assert sorted(p.name for p in weights_mod.cache_dir().iterdir()) == [entry.filename]


def test_fetch_offline_names_url_and_destination(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    entry = _temp_entry(monkeypatch, tmp_path, b"x", "https://example.invalid/w.pth")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsError, match=r"https://example\.invalid/w\.pth.*save it as .*prenet-testonly\.pth"):
        weights_mod.fetch_weights(entry.name)


def test_official_checkpoints_verify_from_the_mirror(shared_weights_path):
    for name in ("sapnet.official", "prenet.rain100l", "prenet.rain100h"):
        status = weights_mod.check_weights(weights_mod.get_weights(name))
        assert status.state == "verified", status.detail


def test_verify_cli_fails_on_a_tampered_copy(shared, tmp_path, monkeypatch):
    from rainkit.cli import main

    mirror = tmp_path / "mirror" / "sapnet-official"
    mirror.mkdir(parents=True)
    data = bytearray((shared / "weights/sapnet-official/net_latest.pth").read_bytes())
    data[-100] ^= 0xFF
    (mirror / "net_latest.pth").write_bytes(bytes(data))
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(tmp_path / "mirror"))
    assert main(["weights", "verify", "sapnet.official"]) == 1
    monkeypatch.setenv("RAINKIT_WEIGHTS_PATH", str(shared / "weights"))
    assert main(["weights", "verify", "sapnet.official"]) == 0
