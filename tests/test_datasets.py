"""Dataset registry, layout detection, pairing by name/number, refusal of incomplete sets, fingerprints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import shared_root
from rainkit.data.datasets import (
    DATASETS,
    DatasetSpec,
    detect_layout,
    image_folder,
    pair_files,
    paired_folders,
    resolve_dataset,
)
from rainkit.errors import DatasetError


def write_png(path: Path, value: int, size=(12, 10)) -> Path:
    """A small image whose pixels all equal `value` (so a pair can be checked by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))
    return path


def pixel(path: Path) -> int:
    return int(cv2.imread(str(path))[0, 0, 0])


def make_prenet_set(root: Path, numbers, rainy_fmt="rain-{}.png", clean_fmt="norain-{:03d}.png", size=(12, 10)):
    for n in numbers:
        write_png(root / "rainy" / rainy_fmt.format(n), n, size)
        write_png(root / "norain" / clean_fmt.format(n), n, size)
    return root


def test_pairs_by_number_not_by_sorted_position(tmp_path):
    # rain-10 sorts before rain-2 as text, and the clean side is zero-padded: only numbers line up.
    root = make_prenet_set(tmp_path / "set", range(1, 13))
    data = resolve_dataset(str(root))
    assert data.pairing == "number"
    assert len(data) == 12
    assert [p.id for p in data.pairs][:3] == ["rain-1", "rain-2", "rain-3"]  # natural order
    for pair in data.pairs:
        assert pixel(pair.rainy) == pixel(pair.clean)


def test_prenet_test_folder_keeps_clean_images_beside_rainy(tmp_path):
    # PReNet's datasets/test/Rain100H: rainy/rain-001.png and norain-001.png in the set folder itself
    root = tmp_path / "Rain100H"
    for n in range(1, 4):
        write_png(root / "rainy" / f"rain-{n:03d}.png", n)
        write_png(root / f"norain-{n:03d}.png", n)
    data = resolve_dataset(str(root))
    assert data.pairing == "number" and len(data) == 3 and data.clean_dir == root
    assert "PReNet" in data.layout
    assert all(pixel(p.rainy) == pixel(p.clean) for p in data.pairs)


def test_pairs_by_name_with_input_target_folders(tmp_path):
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        write_png(tmp_path / "ds" / "input" / name, 10 * i)
        write_png(tmp_path / "ds" / "target" / name, 10 * i)
    data = resolve_dataset(str(tmp_path / "ds"))
    assert data.pairing == "name" and data.layout == "input/ + target/"
    assert [p.id for p in data.pairs] == ["a", "b", "c"]
    assert all(pixel(p.rainy) == pixel(p.clean) for p in data.pairs)


def test_paired_folders_with_different_extensions_pairs_by_stem(tmp_path):
    for i in range(3):
        write_png(tmp_path / "r" / f"img{i}.png", i * 20)
        path = tmp_path / "c" / f"img{i}.bmp"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((10, 12, 3), i * 20, np.uint8))
    data = paired_folders(tmp_path / "r", tmp_path / "c")
    assert data.pairing == "name" and len(data) == 3
    assert all(p.clean.suffix == ".bmp" for p in data.pairs)


def test_missing_files_are_listed(tmp_path):
    root = make_prenet_set(tmp_path / "set", range(1, 6))
    (root / "norain" / "norain-003.png").unlink()
    (root / "rainy" / "rain-5.png").unlink()
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(root))
    message = str(info.value)
    assert "incomplete" in message and "rain-3.png" in message and "norain-005.png" in message
    assert "\n" not in message


def test_registered_set_counts_and_numbers(tmp_path, monkeypatch):
    monkeypatch.delenv("RAINKIT_DATA", raising=False)
    make_prenet_set(tmp_path / "Rain12", range(1, 13))
    data = resolve_dataset("rain12", tmp_path)
    assert data.name == "rain12" and len(data) == 12 and data.spec is DATASETS["rain12"]
    (tmp_path / "Rain12" / "rainy" / "rain-7.png").unlink()
    with pytest.raises(DatasetError, match=r"rain12 .*incomplete.*no rainy image for number\(s\) 7"):
        resolve_dataset("rain12", tmp_path)


def test_registered_set_unexpected_numbers(tmp_path):
    make_prenet_set(tmp_path / "rain12", range(1, 14))
    with pytest.raises(DatasetError, match="unexpected file.*rain-13.png"):
        resolve_dataset("rain12", tmp_path)


def test_data_root_order_and_not_found_message(tmp_path, monkeypatch):
    env_root = tmp_path / "env"
    make_prenet_set(env_root / "rain12", range(1, 13))
    monkeypatch.setenv("RAINKIT_DATA", str(env_root))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_dataset("rain12").root == env_root / "rain12"
    # --data-root wins, and the message says where it looked and what layout it expects
    with pytest.raises(DatasetError) as info:
        resolve_dataset("rain100l", tmp_path / "elsewhere")
    message = str(info.value)
    assert "not found" in message and str(tmp_path / "elsewhere") in message and "--data-root" in message
    assert "rainy/rain-NNN.png with norain-NNN.png beside rainy/" in message
    # without --data-root: RAINKIT_DATA, then the user data folder
    with pytest.raises(DatasetError) as info:
        resolve_dataset("rain100h")
    assert str(env_root) in str(info.value) and str(tmp_path / "xdg" / "rainkit" / "datasets") in str(info.value)
    # the user data folder is searched too
    monkeypatch.delenv("RAINKIT_DATA")
    make_prenet_set(tmp_path / "xdg" / "rainkit" / "datasets" / "rain12", range(1, 13))
    assert resolve_dataset("rain12").root == tmp_path / "xdg" / "rainkit" / "datasets" / "rain12"


def test_data_root_may_be_the_set_itself(tmp_path):
    make_prenet_set(tmp_path / "rain12", range(1, 13))
    assert len(resolve_dataset("rain12", tmp_path / "rain12")) == 12


def test_rain100_sizes_release_and_crop():
    for name in ("rain100l", "rain100h"):
        spec = DATASETS[name]
        for size in ((481, 321), (321, 481), (480, 320), (320, 480)):
            assert spec.accepts_size(size), (name, size)
        assert not spec.accepts_size((512, 384))
        assert spec.rainy_count == spec.clean_count == 100
    assert DATASETS["rain1400"].rainy_count == 1400 and DATASETS["rain1400"].versions == 14


def test_size_mismatch_within_a_pair_is_refused(tmp_path):
    root = make_prenet_set(tmp_path / "set", range(1, 4))
    write_png(root / "norain" / "norain-002.png", 2, size=(13, 10))
    with pytest.raises(DatasetError, match=r"sizes differ.*rain-2.png is 12x10 but norain-002.png is 13x10"):
        resolve_dataset(str(root))


def test_registered_size_check():
    spec = DatasetSpec("toy", "toy", ("toy",), 2, 2, "x", numbers=range(1, 3), sizes=((12, 10),))
    assert spec.accepts_size((12, 10)) and not spec.accepts_size((10, 12))


def test_pair_files_with_a_spec(tmp_path):
    spec = DatasetSpec("toy", "toy", ("toy",), 3, 3, "x", numbers=range(1, 4))
    root = make_prenet_set(tmp_path / "toy", range(1, 4))
    rainy = sorted((root / "rainy").iterdir())
    clean = sorted((root / "norain").iterdir())
    pairs, rule = pair_files(rainy, clean, root / "rainy", root / "norain", spec)
    assert rule.name == "number" and len(pairs) == 3
    with pytest.raises(DatasetError, match="no clean image for number"):
        pair_files(rainy, clean[:2], root / "rainy", root / "norain", spec)


def test_rain1400_pairs_versions(tmp_path):
    root = tmp_path / "rain1400"
    for n in (901, 902):
        write_png(root / "ground_truth" / f"{n}.jpg", n % 256)
        for k in range(1, 15):
            write_png(root / "rainy_image" / f"{n}_{k}.jpg", n % 256)
    data = resolve_dataset(str(root))
    assert data.pairing == "rain1400" and len(data) == 28
    assert {p.clean.name for p in data.pairs if p.id.startswith("901_")} == {"901.jpg"}
    # as the registered set it must be complete (1400 rainy, 100 clean)
    with pytest.raises(DatasetError, match="expected 1400 rainy and 100 clean"):
        resolve_dataset("rain1400", tmp_path)


def test_gt_rain_flat_layout(tmp_path):
    for scene in ("A", "B"):
        write_png(tmp_path / "g" / f"{scene}-C-000.png", 1)
        for k in range(3):
            write_png(tmp_path / "g" / f"{scene}-R-{k:03d}.png", 1)
    data = resolve_dataset(str(tmp_path / "g"))
    assert data.pairing == "gt-rain" and len(data) == 6
    assert all(p.clean.name.split("-")[0] == p.id.split("-")[0] for p in data.pairs)


def test_jorder_scale_suffix_and_nested_folder(tmp_path):
    root = tmp_path / "rain_data_test_Light"
    for n in range(1, 4):
        write_png(root / "rain" / "X2" / f"norain-{n}x2.png", n)
        write_png(root / "norain" / f"norain-{n}.png", n)
    data = resolve_dataset(str(root))
    assert len(data) == 3 and data.pairing == "number"
    assert all(pixel(p.rainy) == pixel(p.clean) for p in data.pairs)


def test_ambiguous_names_refused(tmp_path):
    root = make_prenet_set(tmp_path / "set", range(1, 3))
    write_png(root / "rainy" / "rain-01.png", 1)  # a second file numbered 1
    with pytest.raises(DatasetError, match="ambiguous"):
        resolve_dataset(str(root))


def test_unpairable_names_refused(tmp_path):
    write_png(tmp_path / "r" / "alpha.png", 1)
    write_png(tmp_path / "c" / "beta.png", 1)
    with pytest.raises(DatasetError, match="cannot pair"):
        paired_folders(tmp_path / "r", tmp_path / "c")


def test_unknown_layout_lists_what_is_accepted(tmp_path):
    write_png(tmp_path / "weird" / "x" / "1.png", 1)
    write_png(tmp_path / "weird" / "y" / "1.png", 1)
    with pytest.raises(DatasetError, match="no known dataset layout.*input/ \\+ target/"):
        detect_layout(tmp_path / "weird")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        resolve_dataset("nope", tmp_path)


def test_image_folder_has_no_reference(tmp_path):
    for i in range(3):
        write_png(tmp_path / "real" / f"{i}.jpg", i)
    data = image_folder(tmp_path / "real")
    assert not data.has_reference and len(data) == 3 and data.pairs[0].clean is None
    with pytest.raises(DatasetError, match="no images"):
        image_folder(tmp_path / "real" / "..")


def test_fingerprint_follows_bytes_not_names(tmp_path):
    a = make_prenet_set(tmp_path / "a", range(1, 4))
    b = tmp_path / "b"
    for n in range(1, 4):  # same bytes under other names
        write_png(b / "input" / f"{n}.png", n)
        write_png(b / "target" / f"{n}.png", n)
    fa, fb = resolve_dataset(str(a)).fingerprint, resolve_dataset(str(b)).fingerprint
    assert fa == fb and len(fa) == 64
    write_png(b / "target" / "2.png", 99)
    assert resolve_dataset(str(b)).fingerprint != fa
    data = resolve_dataset(str(a))
    assert data.describe()["fingerprint"] == fa and data.describe()["files"] == 6
    assert data.subset(2).fingerprint != fa and len(data.subset(2)) == 2


def test_shared_rain100l_resolves():
    root = shared_root()
    if root is None or not (root / "data" / "rain100l").is_dir():
        pytest.skip("../shared/data/rain100l is not available")
    data = resolve_dataset("rain100l", root / "data")
    assert len(data) == 100 and data.pairing == "number"
    assert data.sizes == {"321x481": 34, "481x321": 66}
    assert data.fingerprint == "11e08fcfe1b543c12fda733f68b4a8940e505f31ae4a0d1066fa535c90290624"
    # the 10-pair Rain100H sample (480x320 crops) is not the registered set: as a folder it pairs fine
    sample = resolve_dataset(str(root / "data" / "rain100h-sample"))
    assert len(sample) == 10 and set(sample.sizes) <= {"480x320", "320x480"}
