"""Optional extras: a plain install leaves out pyiqa and Ultralytics, and a command that needs one says which extra."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from rainkit.errors import MissingExtraError
from rainkit.extras import require

ROOT = Path(__file__).resolve().parent.parent


def _hide(monkeypatch, package: str) -> None:
    """Make `package` and every submodule unimportable, as if it were not installed."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "pyiqa")
    with pytest.raises(MissingExtraError) as caught:
        require("pyiqa.archs.niqe_arch", extra="iqa", for_what="NIQE/BRISQUE")
    assert str(caught.value) == "NIQE/BRISQUE need pyiqa: pip install 'rainkit[iqa]'"


def test_require_says_when_the_package_itself_lacks_a_dependency(monkeypatch, tmp_path):
    (tmp_path / "halfinstalled").mkdir()
    (tmp_path / "halfinstalled" / "__init__.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"need halfinstalled, which could not import not_a_real_dependency_xyz: "
                                                r"pip install 'rainkit\[iqa\]'"):
        require("halfinstalled", extra="iqa", for_what="NIQE/BRISQUE")


def test_require_returns_the_module():
    assert require("json", extra="iqa", for_what="test").dumps([1]) == "[1]"


def test_no_reference_metrics_without_pyiqa(monkeypatch):
    from rainkit.metrics import create_metric

    _hide(monkeypatch, "pyiqa")
    for metric in ("niqe", "brisque"):
        with pytest.raises(MissingExtraError, match=r"NIQE/BRISQUE need pyiqa: pip install 'rainkit\[iqa\]'"):
            create_metric(metric)


def test_cli_benchmark_and_detect_without_their_extras(monkeypatch, tmp_path, capsys):
    from rainkit.cli import main

    images = tmp_path / "real"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    _hide(monkeypatch, "pyiqa")
    assert main(["benchmark", "--images", str(images)]) == 1
    err = capsys.readouterr().err
    assert "error: NIQE/BRISQUE need pyiqa: pip install 'rainkit[iqa]'" in err and "Traceback" not in err

    _hide(monkeypatch, "ultralytics")
    monkeypatch.setattr("rainkit.detect.detector._quieted", False)
    assert main(["detect", str(images), "--no-derain"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: YOLO detectors need ultralytics: pip install 'rainkit[detect]'"


def test_derain_and_generate_run_with_neither_extra_importable(monkeypatch, tmp_path):
    """What `pip install rainkit` gives: deraining and generation work with pyiqa and Ultralytics absent."""
    from rainkit.cli import main

    _hide(monkeypatch, "pyiqa")
    _hide(monkeypatch, "ultralytics")
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    assert main(["derain", str(photo), "-o", str(tmp_path / "derained"), "--device", "cpu"]) == 0
    assert main(["generate", str(photo), str(tmp_path / "rained"), "--device", "cpu"]) == 0
    assert (tmp_path / "derained" / "a.png").is_file() and (tmp_path / "rained" / "a.png").is_file()


def test_packaging_keeps_licensed_packages_optional():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "pyiqa" not in base and "ultralytics" not in base and "matplotlib" in base
    extras = project["optional-dependencies"]
    assert any(d.startswith("pyiqa") for d in extras["iqa"])
    assert any(d.startswith("ultralytics") for d in extras["detect"])
    assert len(extras["all"]) == 1 and {"iqa", "detect", "video", "export"} == set(
        extras["all"][0].removeprefix("rainkit[").removesuffix("]").split(","))
    assert any(d.startswith("av") for d in extras["video"])
    assert "rainkit[all]" in extras["test"] and any(d.startswith("pytest") for d in extras["test"])
    assert "openvino" in extras["test"]
