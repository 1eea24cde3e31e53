"""`rainkit benchmark`: model specs, the runner (inference through the derain pipeline, scoring,
resume cache, images and grids), outputs, and the command line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, rainy_like, shared_root
from rainkit.benchmark import ModelSpec, command_line_order, model_specs, parse_model, run_benchmark
from rainkit.benchmark.report import json_text, plot_means, write_csv
from rainkit.cli import main
from rainkit.data.datasets import image_folder, paired_folders, resolve_dataset
from rainkit.data.images import read_image, to_uint8
from rainkit.errors import ParameterError, RainkitError
from rainkit.metrics import full_reference_scores
import tests.tolerances as TOL

PAIRED_METRICS = ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]


def _write(path: Path, rgb_float: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), to_uint8(rgb_float, "round")[:, :, ::-1])
    return path


@pytest.fixture
def paired_set(tmp_path) -> Path:
    """Four 40x48 pairs in PReNet's layout: clean images plus streaks for the rainy side."""
    root = tmp_path / "toy"
    rng = np.random.default_rng(7)
    for n in range(1, 5):
        clean = rainy_like(40, 48, seed=n) * 0.8
        streaks = (rng.random((40, 48)) > 0.97)[:, :, None] * 0.3
        _write(root / "norain" / f"norain-{n:03d}.png", clean)
        _write(root / "rainy" / f"rain-{n:03d}.png", np.clip(clean + streaks, 0, 1))
    return root


# --- model specs ---------------------------------------------------------------------------------

def test_parse_model():
    assert parse_model("none") == ModelSpec("none")
    assert parse_model("PReNet=a/b.pth") == ModelSpec("prenet", "a/b.pth")
    assert parse_model("sapnet") == ModelSpec("sapnet", None)
    for bad in ("none=x", "prenet=", "=x"):
        with pytest.raises(RainkitError):
            parse_model(bad)


def test_model_specs_follow_the_command_line_order():
    args = ["--dataset", "x", "--model", "none", "-m", "prenet=p.pth", "--model", "sapnet", "--weights", "s.pth",
            "--model=prenet", "-w", "prenet.rain100h"]
    order = command_line_order(args)
    models = [v for k, v in order if k == "model"]
    weights = [v for k, v in order if k == "weights"]
    specs = model_specs(models, weights, order)
    assert [(s.model, s.weights) for s in specs] == [("none", None), ("prenet", "p.pth"), ("sapnet", "s.pth"),
                                                     ("prenet", "prenet.rain100h")]
    assert [s.label for s in specs] == ["none", "prenet:p", "sapnet", "prenet:prenet.rain100h"]


def test_model_specs_single_weights_and_errors():
    assert model_specs(["prenet"], ["w.pth"])[0].weights == "w.pth"
    assert model_specs(["none", "prenet"], ["w.pth"])[1].weights == "w.pth"  # the only model that can take it
    assert model_specs([], [])[0].is_input  # default: the rainy input
    with pytest.raises(RainkitError, match="several models"):
        model_specs(["prenet", "sapnet"], ["w.pth"])
    with pytest.raises(RainkitError, match="already names its weights"):
        model_specs(["prenet=a.pth"], ["b.pth"], [("model", "prenet=a.pth"), ("weights", "b.pth")])
    with pytest.raises(RainkitError, match="takes no weights"):
        model_specs(["none"], ["b.pth"], [("model", "none"), ("weights", "b.pth")])
    with pytest.raises(RainkitError, match="listed twice"):
        model_specs(["none", "none"])


# --- the runner ------------------------------------------------------------------------------------

def test_rainy_input_scores_equal_direct_metrics(paired_set):
    data = resolve_dataset(str(paired_set))
    result = run_benchmark(data, ["none"])
    assert result.metrics == PAIRED_METRICS
    none = result.model("none")
    assert len(none.images) == 4 and none.params is None and none.seconds_per_image is None
    for pair, image in zip(data.pairs, none.images):
        rainy, clean = (to_uint8(read_image(p).rgb, "round") for p in (pair.rainy, pair.clean))
        assert image.id == pair.id
        assert image.scores == pytest.approx(full_reference_scores(rainy, clean))
    assert result.means()["none"]["psnr_y"] == pytest.approx(np.mean([im.scores["psnr_y"] for im in none.images]))


def test_models_run_through_the_derain_pipeline(paired_set, tiny_sapnet_file, tmp_path):
    from rainkit.derain import load_derainer

    data = resolve_dataset(str(paired_set))
    spec = f"sapnet={tiny_sapnet_file}"
    trunc = run_benchmark(data, ["none", spec], device="cpu", tile=0, save_images=tmp_path / "out", grid_images=2)
    rounded = run_benchmark(data, [spec], device="cpu", tile=0, quantize="round", overlap=False)
    derainer = load_derainer("sapnet", str(tiny_sapnet_file), "cpu", "fp32", tile=0)
    model = trunc.model("sapnet")
    assert model.params == derainer.num_params and model.weights_sha256 == derainer.weights_sha256
    assert model.device == "cpu" and model.seconds_per_image > 0
    for pair, image, image_round in zip(data.pairs, model.images, rounded.model("sapnet").images):
        output = derainer.derain(read_image(pair.rainy).rgb)
        clean = to_uint8(read_image(pair.clean).rgb, "round")
        assert image.scores == pytest.approx(full_reference_scores(to_uint8(output, "truncate"), clean))
        assert image_round.scores == pytest.approx(full_reference_scores(to_uint8(output, "round"), clean))
        saved = cv2.imread(str(tmp_path / "out" / "sapnet" / f"{pair.id}.png"))[:, :, ::-1]
        assert np.array_equal(saved, to_uint8(output, "truncate"))
    assert trunc.model("sapnet").mean("psnr_y") != rounded.model("sapnet").mean("psnr_y")
    # grids: rainy | sapnet | clean, with a label band on top
    assert [p.name for p in trunc.grids] == ["rain-001.png", "rain-002.png"]
    grid = cv2.imread(str(trunc.grids[0]))
    assert grid.shape == (40 + 28, 3 * 48 + 2 * 4, 3)
    assert not (tmp_path / "out" / "none").exists()  # the rainy input is not saved again


def test_json_csv_and_plot(paired_set, tmp_path):
    data = resolve_dataset(str(paired_set))
    result = run_benchmark(data, ["none"])
    data_json = json.loads(json_text(result, {"command": ["x"]}))
    assert data_json["rainkit_version"] and data_json["settings"]["quantize"] == "truncate"
    assert data_json["settings"]["command"] == ["x"]
    assert data_json["dataset"]["fingerprint"] == data.fingerprint
    assert set(data_json["means"]["none"]) == set(PAIRED_METRICS)
    assert data_json["metrics"]["psnr_y"]["higher_is_better"] is True
    assert "rgb2ycbcr" in data_json["metrics"]["ssim_y"]["convention"]
    assert [im["id"] for im in data_json["images"]["none"]] == [p.id for p in data.pairs]
    assert data_json["models"][0]["std"]["psnr_y"] > 0
    write_csv(result, tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 4 and rows[0]["model"] == "none" and float(rows[0]["psnr_y"]) == pytest.approx(
        result.model("none").images[0].scores["psnr_y"])
    plot_means(result, tmp_path / "r.png")
    assert cv2.imread(str(tmp_path / "r.png")).shape[2] == 3


def test_identical_images_give_inf_psnr_and_valid_json(tmp_path):
    for n in range(1, 3):
        image = rainy_like(32, 32, seed=n)
        _write(tmp_path / "r" / f"{n}.png", image)
        _write(tmp_path / "c" / f"{n}.png", image)
    result = run_benchmark(paired_folders(tmp_path / "r", tmp_path / "c"), ["none"])
    assert result.model("none").mean("psnr_y") == math.inf
    data = json.loads(json_text(result))  # allow_nan=False inside: no Infinity in the file
    assert data["means"]["none"]["psnr_y"] is None and data["means"]["none"]["ssim_y"] == pytest.approx(1.0)


def test_resume_skips_finished_images(paired_set, tiny_sapnet_file, tmp_path):
    data = resolve_dataset(str(paired_set))
    cache = tmp_path / "r.json.cache.jsonl"
    models = ["none", f"sapnet={tiny_sapnet_file}"]
    first = run_benchmark(data, models, device="cpu", tile=0, resume_cache=cache, resume=False)
    lines = cache.read_text().splitlines()
    assert len(lines) == 8
    # a run killed while writing its 6th line: 5 lines kept and a torn one
    cache.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    events = []
    second = run_benchmark(data, models, device="cpu", tile=0, resume_cache=cache,
                           on_image=lambda e: events.append((e.model, e.image.id, e.image.cached)))
    assert [cached for _, _, cached in events] == [True] * 5 + [False] * 3
    for label in ("none", "sapnet"):
        assert second.means()[label] == pytest.approx(first.means()[label])
    # settings that change the scores do not reuse the cache
    third = run_benchmark(data, models, device="cpu", tile=0, resume_cache=cache, quantize="round")
    assert third.model("sapnet").cached_count == 0 and third.model("none").cached_count == 4
    # resume=False starts afresh
    fourth = run_benchmark(data, ["none"], resume_cache=cache, resume=False)
    assert fourth.model("none").cached_count == 0 and len(cache.read_text().splitlines()) == 4


def test_runner_validates_before_work(paired_set, tmp_path):
    data = resolve_dataset(str(paired_set))
    with pytest.raises(RainkitError, match="quantisation"):
        run_benchmark(data, ["none"], quantize="floor")
    with pytest.raises(ParameterError, match="^crop_border: must be 0 or more"):
        run_benchmark(data, ["none"], crop_border=-1)
    with pytest.raises(RainkitError, match="need clean references"):
        run_benchmark(image_folder(paired_set / "rainy"), ["none"], ["psnr_y"])
    with pytest.raises(RainkitError, match="unknown model"):
        run_benchmark(data, ["nosuchnet=x.pth"], device="cpu")


def test_crop_border_changes_scores(paired_set):
    data = resolve_dataset(str(paired_set))
    full = run_benchmark(data, ["none"], ["psnr_rgb"]).model("none").images[0].scores["psnr_rgb"]
    cropped = run_benchmark(data, ["none"], ["psnr_rgb"], crop_border=4).model("none").images[0].scores["psnr_rgb"]
    pair = data.pairs[0]
    rainy, clean = (to_uint8(read_image(p).rgb, "round")[4:-4, 4:-4] for p in (pair.rainy, pair.clean))
    assert cropped == pytest.approx(full_reference_scores(rainy, clean, ["psnr_rgb"])["psnr_rgb"])
    assert cropped != full


@pytest.mark.slow
def test_no_reference_metrics_on_images_without_ground_truth(tmp_path):
    for n in range(2):
        _write(tmp_path / "real" / f"photo{n}.png", rainy_like(100, 200, seed=n))
    result = run_benchmark(image_folder(tmp_path / "real"), ["none"])
    assert result.metrics == ["niqe", "brisque"]
    scores = result.model("none").images[0].scores
    assert set(scores) == {"niqe", "brisque"} and all(math.isfinite(v) for v in scores.values())


# --- the command line ----------------------------------------------------------------------------

def test_cli_pairs_json_csv_plot(paired_set, tiny_sapnet_file, tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["benchmark", "--pairs", str(paired_set / "rainy"), str(paired_set / "norain"),
                 "--model", "none", "--model", "sapnet", "--weights", str(tiny_sapnet_file), "--device", "cpu",
                 "--tile", "0", "--json", str(out / "r.json"), "--csv", str(out / "r.csv"),
                 "--plot", str(out / "r.png"), "--save-images", str(out / "img"), "--grid", "1"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "psnr_y" in text.out and "rainy input" in text.out and "sapnet" in text.out
    data = json.loads((out / "r.json").read_text())
    assert list(data["means"]) == ["none", "sapnet"]
    assert data["models"][1]["weights_sha256"] and data["models"][1]["params"] > 0
    assert data["settings"]["command"][:2] == ["rainkit", "benchmark"]
    assert len(list(csv.DictReader(open(out / "r.csv")))) == 8
    assert (out / "r.png").is_file() and (out / "img" / "grid" / "rain-001.png").is_file()
    assert (out / "r.json.cache.jsonl").is_file()
    # --resume reuses every image
    code = main(["benchmark", "--pairs", str(paired_set / "rainy"), str(paired_set / "norain"), "--model", "none",
                 "--json", str(out / "r.json"), "--resume"])
    assert code == 0
    assert json.loads((out / "r.json").read_text())["models"][0]["cached_images"] == 4


@pytest.mark.parametrize("args, message", [
    (["--dataset", "rain100l", "--data-root", "{tmp}/nothing"], "dataset 'rain100l' not found"),
    (["--pairs", "{set}/rainy", "{set}/norain", "--metrics", "lpips"], "unknown metric"),
    (["--pairs", "{set}/rainy", "{set}/norain", "--metrics", "nique"],
     "--metrics: unknown metric 'nique'; did you mean niqe"),
    (["--pairs", "{set}/rainy", "{set}/norain", "--model", "none", "--model", "none"], "--model: none is listed twice"),
    (["--images", "{set}/rainy", "--metrics", "psnr_y"], "need clean references"),
    (["--pairs", "{set}/rainy", "{set}/norain", "--model", "prenet", "--model", "sapnet", "--weights", "x.pth",
      "--weights", "y.pth", "--weights", "z.pth"], "--weights"),
])
def test_cli_errors_are_one_line(args, message, paired_set, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, set=paired_set) for a in args]
    assert main(["benchmark", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


def test_cli_usage_errors(paired_set, capsys):
    assert main(["benchmark", "--model", "none"]) == 2  # no data source
    assert main(["benchmark", "--dataset", "rain100l", "--images", str(paired_set)]) == 2
    assert main(["benchmark", "--images", str(paired_set / "rainy"), "--resume"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_cli_help_does_not_import_torch():
    code = ("import sys; from rainkit.cli import main; import rainkit.benchmark; "
            "assert 'torch' not in sys.modules and 'pyiqa' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- golden figures on real data (../shared) -------------------------------------------------------

@pytest.mark.slow
def test_prenet_rain100l_golden_first_image():
    root = shared_root()
    weights = root / "weights/prenet-official/rain100l/net_latest.pth" if root else None
    if weights is None or not weights.is_file() or not (root / "data/rain100l").is_dir():
        pytest.skip("../shared Rain100L and the official PReNet weights are not available")
    data = resolve_dataset("rain100l", root / "data").subset(1)
    result = run_benchmark(data, ["none", f"prenet={weights}"], device="cpu", tile=0)
    assert result.model("none").images[0].scores["psnr_y"] == pytest.approx(27.300847546647958, abs=TOL.SUM64)
    prenet = result.model("prenet").images[0].scores
    # official PReNet6 on rain-001, quantised by truncation (the mean over all 100 is 37.48 / 0.9792)
    assert prenet["psnr_y"] == pytest.approx(38.0069, abs=TOL.PUBLISHED_PSNR)
    assert prenet["ssim_y"] == pytest.approx(0.97761, abs=TOL.PUBLISHED_SSIM)
    assert result.model("prenet").params == 168963
