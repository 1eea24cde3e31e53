"""`rainkit benchmark` on bad input: every image that can be scored is, each one that cannot is
listed with its file and reason (console, JSON, CSV) and the exit code is 1; a metric that does
not apply to an image (NIQE on a small one, anything on a uniform one) leaves that cell empty and
says why. Every bad file is made here, small."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import rainy_like
from rainkit.benchmark import run_benchmark
from rainkit.benchmark.report import json_text, write_csv
from rainkit.cli import main
from rainkit.data.datasets import image_folder, paired_folders, resolve_dataset
from rainkit.data.images import to_uint8

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _png(path: Path, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), to_uint8(rainy_like(height, width, seed=seed), "round")[:, :, ::-1])
    return path


def _jpeg_bytes(seed: int = 0) -> bytes:
    ok, data = cv2.imencode(".jpg", to_uint8(rainy_like(40, 48, seed=seed), "round"))
    assert ok
    return data.tobytes()


def _bad_file(path: Path, kind: str) -> str:
    """Write a bad image file of `kind`; returns the reason rainkit gives for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
        return "empty file (0 bytes)"
    if kind == "text":
        path.write_text("not an image, despite the name\n")
        return "not a decodable image"
    if kind == "truncated-jpeg":
        path.write_bytes(_jpeg_bytes()[:300])
        return "truncated JPEG"
    if kind == "corrupt-png":  # a PNG signature and end, garbage between
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"IEND\xaeB`\x82")
        return "not a decodable image"
    if kind == "unreadable":  # the caller denies reading it (`deny_reading`)
        _png(path)
        return "permission denied"
    raise AssertionError(kind)


BAD_KINDS = ["empty", "text", "truncated-jpeg", "corrupt-png", "unreadable"]


@pytest.fixture
def deny_reading(monkeypatch):
    """`deny_reading(path)`: make `path` unreadable. chmod 000 where that works; as root, where it
    does not, opening the file raises the PermissionError a chmod would."""
    import builtins
    import io

    denied: set[str] = set()
    real_open = io.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    if AS_ROOT:
        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)

    locked: list[Path] = []

    def deny(path: Path) -> None:
        if AS_ROOT:
            denied.add(os.path.abspath(path))
        else:
            path.chmod(0)
            locked.append(path)

    yield deny
    for path in locked:
        path.chmod(0o644)


# --- --images (no references) ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BAD_KINDS)
def test_images_folder_scores_around_a_bad_file(kind, tmp_path, deny_reading):
    folder = tmp_path / "real"
    _png(folder / "a.png", 100, 120, seed=1)
    suffix = ".jpg" if kind in ("text", "truncated-jpeg") else ".png"
    reason = _bad_file(folder / f"b{suffix}", kind)
    if kind == "unreadable":
        deny_reading(folder / f"b{suffix}")
    _png(folder / "c.png", 100, 120, seed=2)
    result = run_benchmark(image_folder(folder), ["none"], ["brisque"])
    none = result.model("none")
    assert [im.id for im in none.images] == ["a", "b", "c"]
    assert [label for label, _ in result.failures] == ["none"]
    failed = result.failures[0][1]
    assert failed.id == "b" and failed.scores == {} and reason in failed.error and f"b{suffix}" in failed.error
    assert none.count("brisque") == 2
    assert none.mean("brisque") == pytest.approx(np.mean([none.images[0].scores["brisque"],
                                                          none.images[2].scores["brisque"]]))
    data = json.loads(json_text(result))
    assert data["failures"] == [{"model": "none", "image": "b", "error": failed.error}]
    assert data["models"][0]["counts"] == {"brisque": 2} and data["models"][0]["failed_images"] == 1
    assert data["images"]["none"][1]["brisque"] is None and data["images"]["none"][1]["error"] == failed.error


def test_images_cli_lists_every_failure_and_exits_1(tmp_path, capsys):
    folder = tmp_path / "real"
    _png(folder / "good.png", 100, 120, seed=3)
    reasons = {name: _bad_file(folder / name, kind) for name, kind in
               [("empty.png", "empty"), ("text.jpg", "text"), ("cut.jpg", "truncated-jpeg"),
                ("corrupt.png", "corrupt-png")]}
    out = tmp_path / "out"
    code = main(["benchmark", "--images", str(folder), "--metrics", "brisque", "--json", str(out / "r.json"),
                 "--csv", str(out / "r.csv")])
    text = capsys.readouterr()
    assert code == 1
    printed = text.out + text.err
    for name, reason in reasons.items():
        line = next(line for line in printed.splitlines() if name in line and "failed:" in line)
        assert reason in line
    assert "4 of 5 images could not be scored" in printed
    assert "Traceback" not in printed
    data = json.loads((out / "r.json").read_text())
    assert sorted(Path(f["error"].split(":")[0]).name for f in data["failures"]) == sorted(reasons)
    assert data["means"]["none"]["brisque"] is not None and data["models"][0]["counts"]["brisque"] == 1
    rows = {row["image"]: row for row in csv.DictReader(open(out / "r.csv"))}
    assert rows["good"]["error"] == "" and float(rows["good"]["brisque"]) > 0
    for name, reason in reasons.items():
        row = rows[Path(name).stem]
        assert row["brisque"] == "" and reason in row["error"]


def test_permission_denied_is_one_failure_in_the_cli(tmp_path, capsys, deny_reading):
    folder = tmp_path / "real"
    _png(folder / "a.png", 100, 120)
    _bad_file(folder / "locked.png", "unreadable")
    deny_reading(folder / "locked.png")
    assert main(["benchmark", "--images", str(folder), "--metrics", "brisque"]) == 1
    printed = capsys.readouterr()
    assert "locked.png: permission denied" in printed.out + printed.err


# --- metrics that do not apply: sizes and uniform images -------------------------------------------

def test_niqe_on_small_images_leaves_the_cell_empty_and_says_why(tmp_path):
    folder = tmp_path / "sizes"
    sizes = {"1x1": (1, 1), "3x2": (2, 3), "8000x16": (16, 8000), "160x107": (107, 160), "200x120": (120, 200)}
    for name, (height, width) in sizes.items():
        _png(folder / f"{name}.png", height, width, seed=height + width)
    result = run_benchmark(image_folder(folder), ["none"], ["niqe", "brisque"])
    images = {im.id: im for im in result.model("none").images}
    assert not result.failures
    for name in ("1x1", "3x2", "8000x16"):
        assert "niqe" not in images[name].scores
        assert "smaller than its 96x96 block" in images[name].not_scored["niqe"]
    for name in ("1x1", "3x2"):
        assert "smaller than its 7x7 window" in images[name].not_scored["brisque"]
    assert math.isfinite(images["8000x16"].scores["brisque"])
    # 160x107 holds one 96x96 block, which pyiqa (and so rainkit) takes as enough
    for name in ("160x107", "200x120"):
        assert math.isfinite(images[name].scores["niqe"]) and not images[name].not_scored
    none = result.model("none")
    assert none.count("niqe") == 2 and none.count("brisque") == 3
    assert none.mean("niqe") == pytest.approx(np.mean([images["160x107"].scores["niqe"],
                                                       images["200x120"].scores["niqe"]]))
    data = json.loads(json_text(result))
    assert data["models"][0]["counts"] == {"niqe": 2, "brisque": 3}
    assert {(n["image"], n["metric"]) for n in data["not_scored"]} == {
        ("1x1", "niqe"), ("3x2", "niqe"), ("8000x16", "niqe"), ("1x1", "brisque"), ("3x2", "brisque")}
    write_csv(result, tmp_path / "r.csv")
    rows = {row["image"]: row for row in csv.DictReader(open(tmp_path / "r.csv"))}
    assert rows["3x2"]["niqe"] == "" and "niqe: 3x2 is smaller than its 96x96 block" in rows["3x2"]["not_scored"]


def test_uniform_image_is_not_scored_by_niqe_or_brisque(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), np.full((200, 200, 3), 128, np.uint8))
    _png(folder / "photo.png", 120, 200, seed=5)
    code = main(["benchmark", "--images", str(folder), "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr()
    assert code == 0  # every image was read; a metric that does not apply is a note, not a failure
    assert "grey.png: niqe not scored: undefined on a uniform image" in printed.err
    assert "grey.png: brisque not scored: undefined on a uniform image" in printed.err
    assert "over 1/2" in printed.out and "Traceback" not in printed.out + printed.err
    data = json.loads((tmp_path / "r.json").read_text())
    grey = data["images"]["none"][0]
    assert grey["id"] == "grey" and grey["niqe"] is None and "uniform" in grey["not_scored"]["niqe"]
    assert data["models"][0]["counts"] == {"niqe": 1, "brisque": 1}


def test_not_scored_cells_come_back_from_the_resume_cache(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), np.full((100, 100, 3), 60, np.uint8))
    _bad_file(folder / "empty.png", "empty")
    cache = tmp_path / "r.json.cache.jsonl"
    run_benchmark(image_folder(folder), ["none"], ["niqe"], resume_cache=cache, resume=False)
    assert len(cache.read_text().splitlines()) == 1  # the failed image is not cached: tried again next time
    again = run_benchmark(image_folder(folder), ["none"], ["niqe"], resume_cache=cache)
    empty, grey = again.model("none").images
    assert grey.cached and "uniform" in grey.not_scored["niqe"]
    assert not empty.cached and "empty file" in empty.error


# --- --pairs and --dataset --------------------------------------------------------------------------

def test_pairs_score_around_bad_rainy_and_clean_files(tmp_path, capsys):
    rainy, clean = tmp_path / "rainy", tmp_path / "clean"
    for n in range(1, 5):
        _png(clean / f"{n}.png", seed=n)
        _png(rainy / f"{n}.png", seed=n + 10)
    _bad_file(rainy / "2.png", "empty")
    _bad_file(clean / "3.png", "corrupt-png")
    cut = _jpeg_bytes(4)
    (rainy / "4.png").unlink()
    (clean / "4.png").unlink()
    (rainy / "4.jpg").write_bytes(cut[:200])
    _png(clean / "4.png", seed=4)
    out = tmp_path / "out"
    code = main(["benchmark", "--pairs", str(rainy), str(clean), "--json", str(out / "r.json"),
                 "--csv", str(out / "r.csv")])
    printed = capsys.readouterr().err
    assert code == 1
    assert f"{rainy / '2.png'}: empty file (0 bytes)" in printed
    assert f"{clean / '3.png'}: not a decodable image" in printed
    assert f"{rainy / '4.jpg'}: truncated JPEG" in printed
    data = json.loads((out / "r.json").read_text())
    assert [f["image"] for f in data["failures"]] == ["2", "3", "4"]
    assert data["models"][0]["counts"]["psnr_y"] == 1 and data["means"]["none"]["psnr_y"] > 0
    rows = list(csv.DictReader(open(out / "r.csv")))
    assert [bool(row["error"]) for row in rows] == [False, True, True, True]


def test_dataset_folder_scores_around_a_bad_file(tmp_path, capsys):
    root = tmp_path / "toy"
    for n in range(1, 4):
        _png(root / "norain" / f"norain-{n:03d}.png", seed=n)
        _png(root / "rainy" / f"rain-{n:03d}.png", seed=n + 20)
    _bad_file(root / "rainy" / "rain-002.png", "text")
    data = resolve_dataset(str(root))
    assert data.sizes == {"48x40": 2, "unreadable": 1}
    result = run_benchmark(data, ["none"], ["psnr_y", "ssim_y"], save_images=tmp_path / "img", grid_images=3)
    assert [im.id for _, im in result.failures] == ["rain-002"]
    assert result.model("none").count("psnr_y") == 2
    assert main(["benchmark", "--dataset", str(root), "--metrics", "psnr_y"]) == 1
    assert "rain-002.png: not a decodable image" in capsys.readouterr().err


def test_unreadable_file_does_not_stop_the_dataset_fingerprint(tmp_path, deny_reading):
    rainy, clean = tmp_path / "rainy", tmp_path / "clean"
    for n in range(1, 3):
        _png(clean / f"{n}.png", seed=n)
        _png(rainy / f"{n}.png", seed=n)
    _bad_file(rainy / "2.png", "unreadable")
    deny_reading(rainy / "2.png")
    data = paired_folders(rainy, clean)
    assert data.sizes == {"48x40": 1, "unreadable": 1} and len(data.fingerprint) == 64
    result = run_benchmark(data, ["none"], ["psnr_y"])
    assert [im.id for _, im in result.failures] == ["2"] and "2.png: permission denied" in result.failures[0][1].error
    assert result.model("none").count("psnr_y") == 1


def test_a_bad_file_fails_once_per_model_and_is_listed_once(tmp_path, tiny_sapnet_file, capsys):
    rainy, clean = tmp_path / "rainy", tmp_path / "clean"
    for n in range(1, 4):
        _png(clean / f"{n}.png", seed=n)
        _png(rainy / f"{n}.png", seed=n + 30)
    _bad_file(rainy / "3.png", "empty")
    code = main(["benchmark", "--pairs", str(rainy), str(clean), "--model", "none",
                 "--model", f"sapnet={tiny_sapnet_file}", "--device", "cpu", "--tile", "0", "--metrics", "psnr_y",
                 "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().err
    assert code == 1
    assert printed.count(f"{rainy / '3.png'}: empty file (0 bytes)") == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert [(f["model"], f["image"]) for f in data["failures"]] == [("none", "3"), ("sapnet", "3")]
    assert [m["counts"]["psnr_y"] for m in data["models"]] == [2, 2]
    assert data["models"][1]["seconds_per_image"] > 0
