"""rainkit's one batch layer (`rainkit.io.batch`), through the commands that use it: shards, link loops and
broken links, resume that redoes incomplete outputs, messages that name no flag of another command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rainkit.cli import main
from rainkit.errors import RainkitError
from rainkit.io.batch import Found, ItemResult, Job, Shard, Unmatched, expand_inputs, plan_jobs, run_batch
from tests.conftest import rainy_like

# Keys of a derain sidecar that record how long a run took, not what it wrote.
TIMING_KEYS = ("seconds",)


def _folder(root: Path, count: int = 5, h: int = 20, w: int = 28) -> Path:
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        target = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        cv2.imwrite(str(target), (rainy_like(h, w, seed=i) * 220).astype(np.uint8))
    return folder


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _derain(tiny: Path, *args: str) -> int:
    return main(["derain", *args, "--weights", str(tiny), "--device", "cpu"])


@pytest.fixture
def tiny_espnet_file(tmp_path) -> Path:
    from rainkit.hub import create_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.registry import get_arch

    torch.manual_seed(0)
    kwargs = dict(get_arch("espnet").variants["tiny"])
    return save_checkpoint(tmp_path / "tiny-espnet.safetensors", create_model("espnet", **kwargs), "espnet", kwargs)


# --- shards --------------------------------------------------------------------------------------

def test_shard_parsing_and_environment(monkeypatch):
    assert Shard.parse("2/4") == Shard(2, 4)
    assert Shard.parse("2/4").take(list(range(10))) == [1, 5, 9]
    for bad in ("0/4", "5/4", "1/0", "a/b", "3"):
        with pytest.raises(RainkitError, match="shard"):
            Shard.parse(bad)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert Shard.parse(None).whole
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert Shard.parse(None) == Shard(3, 3)  # torchrun's ranks count from 0
    assert Shard.parse("1/2") == Shard(1, 2)  # an explicit shard wins


def test_two_derain_shards_write_exactly_what_one_run_writes(tmp_path, tiny_sapnet_file):
    folder = _folder(tmp_path)
    assert _derain(tiny_sapnet_file, str(folder), "-r", "-o", str(tmp_path / "one")) == 0
    assert _derain(tiny_sapnet_file, str(folder), "-r", "-o", str(tmp_path / "two"), "--shard", "1/2") == 0
    half = _tree(tmp_path / "two")
    assert 0 < len(half) < len(_tree(tmp_path / "one"))
    assert _derain(tiny_sapnet_file, str(folder), "-r", "-o", str(tmp_path / "two"), "--shard", "2/2") == 0
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 10  # 5 images + 5 sidecars
    for name in one:
        if name.endswith(".json"):
            a, b = json.loads(one[name]), json.loads(two[name])
            for key in TIMING_KEYS:
                a.pop(key), b.pop(key)
            assert Path(a.pop("output")).relative_to(tmp_path / "one") == Path(b.pop("output")).relative_to(tmp_path / "two")
            assert a == b
        else:
            assert one[name] == two[name], name


def test_two_generate_shards_write_exactly_what_one_run_writes(tmp_path):
    folder = _folder(tmp_path)
    common = ["--method", "physics", "--preset", "heavy", "--seed", "4", "--pairs", "-r"]
    assert main(["generate", str(folder), str(tmp_path / "one"), *common]) == 0
    for k in ("2/2", "1/2"):
        assert main(["generate", str(folder), str(tmp_path / "two"), *common, "--shard", k]) == 0
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert len(_tree(tmp_path / "one")) == 11  # 5 rainy + 5 clean + the folder record


def test_two_segment_shards_write_exactly_what_one_run_writes(tmp_path, tiny_espnet_file):
    folder = _folder(tmp_path)
    common = ["--weights", str(tiny_espnet_file), "--device", "cpu", "-r", "--overlay"]
    assert main(["segment", str(folder), "-o", str(tmp_path / "one"), *common]) == 0
    for k in ("1/2", "2/2"):
        assert main(["segment", str(folder), "-o", str(tmp_path / "two"), *common, "--shard", k]) == 0
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert len(_tree(tmp_path / "one")) == 11  # 5 maps + 5 overlays + the folder record


def test_torchrun_ranks_shard_without_the_flag(tmp_path, monkeypatch):
    folder = _folder(tmp_path, count=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["generate", str(folder), str(tmp_path / "out"), "--method", "physics", "-r"]) == 0
    written = sorted(p for p in _tree(tmp_path / "out") if p.endswith(".png"))
    assert len(written) == 2


# --- links ---------------------------------------------------------------------------------------

@pytest.fixture
def linked(tmp_path) -> Path:
    folder = _folder(tmp_path, count=2)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    return folder


def test_link_loops_and_broken_links_are_named_not_dropped(linked):
    found = {Path(f.file).name: f.problem for f in expand_inputs([str(linked)]) if isinstance(f, Found)}
    assert found["img0.png"] is None
    assert "symbolic link loop" in found["loop.png"]
    assert "broken symbolic link" in found["gone.jpg"]
    direct = expand_inputs([str(linked / "loop.png"), str(linked / "missing.png")])
    assert "symbolic link loop" in direct[0].problem
    assert isinstance(direct[1], Unmatched) and "no such file" in direct[1].problem


@pytest.mark.parametrize("command", ["derain", "generate"])
def test_a_link_loop_fails_in_one_line_and_the_batch_goes_on(linked, tmp_path, tiny_sapnet_file, command, capsys):
    out = tmp_path / "out"
    if command == "derain":
        code = _derain(tiny_sapnet_file, str(linked), str(linked / "loop.png"), "-o", str(out), "--json",
                       str(tmp_path / "r.json"))
        items = json.loads((tmp_path / "r.json").read_text())["items"]
        assert sum(i["status"] == "done" for i in items) == 1
    else:
        code = main(["generate", str(linked), str(linked / "loop.png"), str(out), "--method", "physics"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert err.count("symbolic link loop") >= 2 and "broken symbolic link" in err
    assert (out / "img0.png").is_file()


# --- resume --------------------------------------------------------------------------------------

def test_resume_redoes_empty_and_truncated_outputs_and_says_so(tmp_path, tiny_sapnet_file, capsys):
    folder = _folder(tmp_path, count=4)
    out = tmp_path / "out"
    assert _derain(tiny_sapnet_file, str(folder), "-o", str(out)) == 0
    good = {p.name: p.read_bytes() for p in out.glob("*.png")}
    (out / "img0.png").write_bytes(b"")
    (out / "img2.png").write_bytes(good["img2.png"][: len(good["img2.png"]) // 2])
    capsys.readouterr()
    assert _derain(tiny_sapnet_file, str(folder), "-o", str(out), "--json", str(tmp_path / "r.json")) == 0
    items = {Path(i["input"]).name: i for i in json.loads((tmp_path / "r.json").read_text())["items"]}
    assert items["img0.png"]["status"] == "done" and "empty" in items["img0.png"]["note"]
    assert items["img2.png"]["status"] == "done" and "not a complete file" in items["img2.png"]["note"]
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == good
    err = capsys.readouterr().err
    assert "redone" in err and "img0.png" in err


def test_generate_resume_redoes_a_truncated_output(tmp_path):
    folder = _folder(tmp_path, count=2)
    out = tmp_path / "out"
    assert main(["generate", str(folder), str(out), "--method", "physics"]) == 0
    target = out / "img0.png"
    good = target.read_bytes()
    target.write_bytes(good[:100])
    assert main(["generate", str(folder), str(out), "--method", "physics"]) == 0
    assert target.read_bytes() == good


def test_run_batch_keeps_going_and_turns_errors_into_one_line(tmp_path):
    jobs = [Job(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png", "spec") for i in range(3)]

    def process(job: Job) -> ItemResult:
        if job.source.name == "1.png":
            raise RuntimeError("out of memory\nsecond line")
        return ItemResult(job.label, str(job.output), "done")

    result = run_batch(jobs, process)
    assert [i.status for i in result.items] == ["done", "failed", "done"]
    assert result.items[1].error == f"{tmp_path / '1.png'}: RuntimeError: out of memory"
    assert not result.ok


# --- messages ------------------------------------------------------------------------------------

def test_an_output_over_its_input_is_refused_without_naming_a_flag(tmp_path, capsys):
    folder = _folder(tmp_path, count=1)
    before = (folder / "img0.png").read_bytes()
    assert main(["generate", str(folder), str(folder), "--method", "physics"]) == 1
    err = capsys.readouterr().err
    assert "would overwrite an input" in err and "--output" not in err
    jobs = plan_jobs([str(folder)], folder)
    assert "would overwrite an input" in jobs[0].error and "--" not in jobs[0].error
    assert (folder / "img0.png").read_bytes() == before


def test_library_errors_name_parameters_and_the_cli_names_its_flags(tmp_path, capsys):
    from rainkit.errors import ParameterError
    from rainkit.synth.batch import GenerateSettings

    with pytest.raises(ParameterError) as caught:
        GenerateSettings(intensity=2.0).validate()
    assert caught.value.parameter == "intensity" and "--" not in str(caught.value)
    folder = _folder(tmp_path, count=1)
    assert main(["generate", str(folder), str(tmp_path / "out"), "--intensity", "2"]) == 1
    assert "--intensity: must be within 0..1" in capsys.readouterr().err
    assert main(["detect", str(folder), "--derained", str(tmp_path / "nowhere"), "--no-derain"]) != 0
    capsys.readouterr()
    assert main(["detect", str(folder), "--derained", str(tmp_path / "nowhere")]) == 1
    assert f"--derained: {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err.replace("\n", "")


def test_two_inputs_with_one_output_name_fail_the_second(tmp_path, tiny_sapnet_file, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), (rainy_like(20, 28) * 200).astype(np.uint8))
    assert _derain(tiny_sapnet_file, str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                   "-o", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"is also the output of {tmp_path / 'a' / 'x.png'}; rename one input" in err.replace("\n", "")
    assert (tmp_path / "out" / "x.png").is_file()


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    from rainkit.data.images import read_image
    from rainkit.errors import InputError

    target = tmp_path / "locked.png"
    cv2.imwrite(str(target), np.zeros((4, 4, 3), np.uint8))

    def refuse(self):  # chmod does not stop root, so refuse the read itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InputError, match=f"{target}: permission denied"):
        read_image(target)
