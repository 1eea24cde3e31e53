"""`rainkit detect`: box matching and mAP arithmetic against hand-computed cases (and Ultralytics'
own functions), label reading, the runner with a stand-in detector in every reference mode, bad
input, and one check with the real exported YOLO model from ../shared (skipped when absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rainkit.detect.detector import letterbox, letterbox_params, unletterbox
from rainkit.detect.labels import load_labels
from rainkit.detect.metrics import (Detections, GroundTruth, MapAccumulator, ap_per_class, box_iou, compute_ap,
                                    image_recall, match_detections, recovered_share)
from rainkit.detect.runner import run_detect
from rainkit.errors import RainkitError
from tests.conftest import REPO, shared_file
import tests.tolerances as TOL

NAMES = {0: "person", 1: "car"}


# --- arithmetic --------------------------------------------------------------------------------------

def test_box_iou_hand_values():
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 7.2]])
    np.testing.assert_allclose(iou[0], [50 / 150, 1.0, 0.0, 0.72], atol=TOL.FP32)


def test_matching_is_greedy_one_to_one_and_class_aware():
    gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]], np.float32)
    gt_cls = np.array([0, 0])
    # Sorted by confidence: the first takes its best target, the second the remaining one, the
    # third (a duplicate) finds nothing left; the fourth has the wrong class.
    det_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    det_cls = np.array([0, 0, 0, 1])
    tp = match_detections(det_boxes, det_cls, gt_boxes, gt_cls)
    assert tp.shape == (4, 10)
    assert tp[0].all() and tp[1].all()  # IoU 1.0 and 100/105 = 0.952 >= 0.95
    assert not tp[2].any() and not tp[3].any()
    # IoU 0.72: a true positive at 0.50..0.70 only.
    tp = match_detections(np.array([[0, 0, 10, 7.2]]), [0], np.array([[0, 0, 10, 10]]), [0])
    assert tp[0].tolist() == [True] * 5 + [False] * 5
    assert match_detections(np.zeros((0, 4)), [], gt_boxes, gt_cls).shape == (0, 10)


def test_compute_ap_perfect_and_partial():
    # One target found first: the COCO 101-point trapezoid gives 0.995, not 1.
    assert compute_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(0.995, abs=TOL.EXACT64)
    # Half the targets found, then nothing: 0.49 + 0.01 * (1 + 0) / 2.
    assert compute_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.495, abs=TOL.EXACT64)


def test_map_hand_computed_two_images():
    acc = MapAccumulator()
    # Image A: one person, found (conf .9), plus a false person (conf .8).
    acc.add(Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0]), GroundTruth([[0, 0, 10, 10]], [0]))
    # Image B: a person found at IoU 0.72 (conf .7); a car missed.
    acc.add(Detections([[0, 0, 10, 7.2]], [0.7], [0]), GroundTruth([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1]))
    result = acc.result()
    # Person, thresholds .50-.70: TP, FP, TP -> recall .5 .5 1, precision 1 .5 .667: envelope 1 to recall .5,
    # then 2/3: 0.49 + 0.01 * (1 + 2/3) / 2 + 0.49 * 2/3 + 0.01 * (2/3) / 2 = 0.828333.
    ap_high = 0.49 + 0.01 * (1 + 2 / 3) / 2 + 0.49 * 2 / 3 + 0.01 * (2 / 3) / 2
    # Thresholds .75-.95: TP, FP, FP -> recall .5 throughout: 0.495.
    person = (5 * ap_high + 5 * 0.495) / 10
    assert result.per_class[0]["ap50"] == pytest.approx(ap_high, abs=TOL.SUM64)
    assert result.per_class[0]["ap50_95"] == pytest.approx(person, abs=TOL.SUM64)
    assert result.per_class[1] == {"instances": 1, "ap50": 0.0, "ap50_95": 0.0}
    assert result.map50 == pytest.approx(ap_high / 2, abs=TOL.SUM64)  # 0.414167
    assert result.map50_95 == pytest.approx(person / 2, abs=TOL.SUM64)  # 0.330833
    assert (result.images, result.instances) == (2, 3)


def test_background_images_count_false_positives():
    acc = MapAccumulator()
    acc.add(Detections([[0, 0, 10, 10]], [0.6], [0]), GroundTruth([[0, 0, 10, 10]], [0]))
    acc.add(Detections([[0, 0, 10, 10]], [0.9], [0]), GroundTruth(np.zeros((0, 4)), []))  # background
    # The false positive ranks first: precision 0 then 0.5 at recall 1 -> envelope 0.5 everywhere.
    assert acc.result().map50 == pytest.approx(0.5 * 0.995, abs=TOL.SUM64)


def test_recovered_share_and_recall():
    assert recovered_share(0.6, 0.3, 0.54) == pytest.approx(0.8)
    assert recovered_share(0.6, 0.6, 0.7) is None  # nothing lost, nothing to recover
    assert recovered_share(None, 0.3, 0.5) is None
    truth = GroundTruth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    assert image_recall(Detections([[0, 0, 10, 10]], [0.5], [0]), truth) == 0.5
    assert image_recall(Detections.empty(), GroundTruth(np.zeros((0, 4)), [])) is None


def test_matches_ultralytics_functions_on_random_sets(isolated_cache):
    """The numpy port agrees with Ultralytics' own matching and AP on random boxes."""
    from rainkit.detect.detector import quiet_ultralytics

    quiet_ultralytics()
    torch = pytest.importorskip("torch")
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class as ul_ap_per_class
    from ultralytics.utils.metrics import box_iou as ul_box_iou

    validator = DetectionValidator.__new__(DetectionValidator)
    validator.iouv = torch.linspace(0.5, 0.95, 10)
    rng = np.random.default_rng(0)
    tps, confs, pcls, tcls = [], [], [], []
    ours = MapAccumulator()
    for _ in range(20):
        n_gt, n_det = rng.integers(0, 6), rng.integers(0, 9)
        gt = rng.uniform(0, 80, (n_gt, 2))
        gt = np.concatenate([gt, gt + rng.uniform(5, 40, (n_gt, 2))], 1)
        base = gt[rng.integers(0, max(n_gt, 1), n_det)] if n_gt else rng.uniform(0, 80, (n_det, 4))
        det = base + rng.normal(0, 3, (n_det, 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        g_cls, d_cls = rng.integers(0, 3, n_gt), rng.integers(0, 3, n_det)
        conf = rng.uniform(0.01, 1, n_det)
        order = np.argsort(-conf)
        det, d_cls, conf = det[order], d_cls[order], conf[order]
        ours.add(Detections(det, conf, d_cls), GroundTruth(gt, g_cls))
        tp = match_detections(det, d_cls, gt, g_cls)
        if n_gt and n_det:
            iou = ul_box_iou(torch.tensor(gt, dtype=torch.float32), torch.tensor(det, dtype=torch.float32))
            theirs = validator.match_predictions(torch.tensor(d_cls), torch.tensor(g_cls), iou).numpy()
            np.testing.assert_array_equal(tp, theirs)
        tps.append(tp)
        confs.append(conf.astype(np.float32))
        pcls.append(d_cls)
        tcls.append(g_cls)
    tp, conf, pred_cls, target_cls = (np.concatenate(x) for x in (tps, confs, pcls, tcls))
    ul = ul_ap_per_class(tp, conf, pred_cls, target_cls)
    classes, ap, _ = ap_per_class(tp, conf, pred_cls, target_cls)
    np.testing.assert_array_equal(classes, ul[6])
    np.testing.assert_allclose(ap, ul[5], atol=TOL.SUM64)
    assert ours.result().map50_95 == pytest.approx(ul[5].mean(), abs=TOL.SUM64)


def test_letterbox_round_trip():
    assert letterbox_params(480, 640, (640, 640)) == (480, 640, 80, 0)
    assert letterbox_params(100, 50, (640, 640)) == (640, 320, 0, 160)  # small images are scaled up, as in val
    image, params = letterbox(np.zeros((100, 50, 3), np.uint8), (640, 640))
    assert image.shape == (640, 640, 3) and image[0, 0, 0] == 114 and image[0, 200, 0] == 0
    back = unletterbox(np.array([[160, 0, 480, 640]], np.float32), params)
    np.testing.assert_allclose(back, [[0, 0, 50, 100]], atol=TOL.BOX_PIXELS)


# --- labels ------------------------------------------------------------------------------------------

def test_yolo_labels(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n1 0.25 0.75 0.1 0.1\n")
    (folder / "bad.txt").write_text("0 0.5 0.5\n")
    source = load_labels(folder, NAMES)
    truth = source.for_image("a", 200, 100)
    np.testing.assert_allclose(truth.boxes, [[50, 37.5, 150, 62.5], [40, 70, 60, 80]])
    assert truth.cls.tolist() == [0, 1]
    assert len(source.for_image("sub/missing", 200, 100)) == 0  # no label file: a background image
    with pytest.raises(RainkitError, match="bad.txt: not a YOLO detection label file"):
        source.for_image("bad", 200, 100)
    with pytest.raises(RainkitError, match="no such label folder"):
        load_labels(tmp_path / "nowhere", NAMES)


def test_coco_labels_map_categories_by_name(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "x/a.jpg"}, {"id": 8, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 99, "bbox": [0, 0, 9, 9]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 99, "name": "unicorn"}],
    }))
    source = load_labels(path, NAMES)
    truth = source.for_image("a", 100, 100, file_name="a.jpg")
    assert truth.cls.tolist() == [1, 0]
    np.testing.assert_allclose(truth.boxes, [[10, 20, 40, 60], [0, 0, 5, 5]])
    assert len(source.for_image("b", 100, 100, file_name="b.jpg")) == 0
    assert source.ignored_categories == ["unicorn"]
    with pytest.raises(RainkitError, match="no entry"):
        source.for_image("c", 100, 100, file_name="c.jpg")


# --- the runner with a stand-in detector ------------------------------------------------------------

CLEAN, RAINY, DERAINED = 200, 100, 180  # grey levels of the tiny test images
# What the stand-in detector "sees" at each grey level: boxes, confidences, classes.
SEES = {
    CLEAN: ([[2, 2, 12, 12], [16, 16, 30, 30]], [0.9, 0.8], [0, 1]),
    RAINY: ([[2, 2, 12, 12]], [0.5], [0]),  # misses the car
    DERAINED: ([[2, 2, 12, 12], [16, 16, 30, 30 - 14 * 0.28]], [0.85, 0.6], [0, 1]),  # car at IoU 0.72
}


class StandIn:
    """A detector keyed on an image's grey level; records what it was shown."""

    names = NAMES

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def describe(self):
        return {"detector": "stand-in", "format": "test", "imgsz": [32, 32]}

    def detect(self, rgb, passes):
        self.seen.append(rgb)
        boxes, conf, cls = SEES.get(int(round(float(rgb.mean()))), ([], [], []))
        found = Detections(boxes, conf, cls)
        return [found.above(p.conf) for p in passes]


class ToGrey:
    """A stand-in derainer: every image becomes the DERAINED grey."""

    def derain(self, rgb):
        return np.full_like(rgb, DERAINED / 255.0)

    def describe(self):
        return {"model": "stand-in", "weights": "none"}


def _grey(path: Path, level: int, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), level, np.uint8))
    return path


def test_reference_from_clean_mode(tmp_path):
    for name in ("a", "b"):
        _grey(tmp_path / "rain" / f"{name}.png", RAINY)
        _grey(tmp_path / "clean" / f"{name}.png", CLEAN)
    result = run_detect([str(tmp_path / "rain")], clean=tmp_path / "clean", detector=StandIn(), derainer=ToGrey(),
                        output=tmp_path / "out", save_images=1)
    assert result.ok and result.reference == "clean"
    assert "no labels" in result.reference_note
    # Reference: the clean detections (person + car). Clean against itself: perfect, 0.995.
    assert result.map_of("clean") == pytest.approx(0.995) and result.map_of("clean", "map50") == pytest.approx(0.995)
    # Rainy: the person (0.995), not the car (0).
    assert result.map_of("rainy", "map50") == pytest.approx(0.4975)
    assert result.map_of("rainy") == pytest.approx(0.4975)
    # Derained: person perfect; car at IoU 0.72, so correct at 5 of 10 thresholds.
    assert result.map_of("derained", "map50") == pytest.approx(0.995)
    assert result.map_of("derained") == pytest.approx((0.995 + 0.4975) / 2)
    assert result.recovered["map50_95"] == pytest.approx(0.5)
    assert result.recovered["map50"] == pytest.approx(1.0)
    assert result.conditions["rainy"].detections == 2 and result.conditions["clean"].detections == 4
    assert result.conditions["rainy"].mean_conf == pytest.approx(0.5)
    data = result.to_json()
    assert data["recovered_share"]["map50_95"] == pytest.approx(0.5)
    assert data["items"][0]["recall50"] == {"rainy": 0.5, "clean": 1.0, "derained": 1.0}
    assert (tmp_path / "out" / "map.png").stat().st_size > 1000
    assert len(data["outputs"]["annotated"]) == 1
    assert cv2.imread(data["outputs"]["annotated"][0]).shape[1] > 3 * 32  # three panels side by side
    csv = result.to_csv().splitlines()
    assert csv[0].startswith("condition,class") and any(line.startswith("rainy,all,,2,4,0.497500") for line in csv)


def test_reference_from_derained_without_clean(tmp_path):
    _grey(tmp_path / "rain" / "a.png", RAINY)
    result = run_detect([str(tmp_path / "rain" / "a.png")], detector=StandIn(), derainer=ToGrey())
    assert result.reference == "derained" and "derained" in result.reference_note
    assert result.map_of("rainy", "map50") == pytest.approx(0.4975)
    assert result.recovered == {"map50": None, "map50_95": None}  # nothing clean to recover towards


def test_labels_mode_and_class_filter(tmp_path):
    _grey(tmp_path / "rain" / "a.png", RAINY)
    _grey(tmp_path / "clean" / "a.png", CLEAN)
    (tmp_path / "labels").mkdir()
    # The person as labelled; the car label sits elsewhere, so nothing ever finds it.
    (tmp_path / "labels" / "a.txt").write_text("0 0.21875 0.21875 0.3125 0.3125\n1 0.1 0.9 0.1 0.1\n")
    result = run_detect([str(tmp_path / "rain")], clean=tmp_path / "clean", labels=tmp_path / "labels",
                        detector=StandIn(), derainer=ToGrey())
    assert result.reference == "labels"
    for condition in ("clean", "rainy", "derained"):
        assert result.map_of(condition, "map50") == pytest.approx(0.995 / 2)
    assert result.recovered["map50"] is None  # no drop
    only_person = run_detect([str(tmp_path / "rain")], clean=tmp_path / "clean", labels=tmp_path / "labels",
                             detector=StandIn(), derainer=ToGrey(), classes="person")
    assert only_person.map_of("rainy") == pytest.approx(0.995)
    assert only_person.settings["classes"] == ["person"]
    with pytest.raises(RainkitError, match="'unicorn' is not a class"):
        run_detect([str(tmp_path / "rain")], detector=StandIn(), derainer=ToGrey(), classes="unicorn")


def test_add_rain_is_seeded_and_per_image(tmp_path):
    from rainkit.data.images import read_image, to_uint8
    from rainkit.synth.physics import image_seed, synthesize

    _grey(tmp_path / "clean" / "a.png", CLEAN, size=(48, 64))
    stand_in = StandIn()
    result = run_detect([str(tmp_path / "clean")], add_rain="light", seed=3, detector=stand_in, derainer=ToGrey())
    assert result.ok and set(result.conditions) == {"clean", "rainy", "derained"}
    expected = to_uint8(synthesize(read_image(tmp_path / "clean" / "a.png").rgb, "rain", preset="light",
                                   seed=image_seed(3, "a")))
    assert any(np.array_equal(seen, expected) for seen in stand_in.seen), "rainy image must be the seeded synthesis"
    assert result.settings["add_rain"] == {"method": "physics", "preset": "light", "seed": 3}
    with pytest.raises(RainkitError, match="no TPSeNCE weights for rain yet; use a physics preset"):
        run_detect([str(tmp_path / "clean")], add_rain="tpsence", detector=StandIn(), derainer=ToGrey())
    with pytest.raises(RainkitError, match="unknown preset 'drizzle'"):
        run_detect([str(tmp_path / "clean")], add_rain="drizzle", detector=StandIn(), derainer=ToGrey())


def test_bad_inputs_fail_one_by_one(tmp_path):
    folder = tmp_path / "rain"
    _grey(folder / "good.png", RAINY)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    _grey(tmp_path / "clean" / "good.png", CLEAN)
    _grey(tmp_path / "clean" / "text.png", CLEAN)
    result = run_detect([str(folder), str(tmp_path / "missing.png")], clean=tmp_path / "clean", detector=StandIn(),
                        derainer=ToGrey())
    status = {Path(item.input).name: item for item in result.items}
    assert status["good.png"].status == "done"
    assert "no clean image named 'empty'" in status["empty.png"].error
    assert "not a decodable image" in status["text.jpg"].error
    assert status["missing.png"].error.endswith("missing.png: no such file or folder")
    assert not result.ok and result.count("done") == 1
    assert result.conditions["rainy"].images == 1 and result.map_of("rainy", "map50") == pytest.approx(0.4975)


# --- CLI -----------------------------------------------------------------------------------------------

def test_cli_imports_nothing_heavy():
    code = "import sys, rainkit.cli.detect; print('torch' in sys.modules, 'ultralytics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_one_line_errors(tmp_path, capsys):
    from rainkit.cli import main

    _grey(tmp_path / "clean" / "a.png", CLEAN)
    assert main(["detect", str(tmp_path / "clean"), "--add-rain", "tpsence"]) == 1
    err = capsys.readouterr().err
    assert "no TPSeNCE weights for rain yet" in err and len(err.strip().splitlines()) == 1


def test_offline_without_local_weights_says_what_to_pass(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    from rainkit.cli import main

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    _grey(tmp_path / "clean" / "a.png", CLEAN)
    code = main(["detect", str(tmp_path / "clean"), "--no-derain", "--detector", "yolo11n.pt"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "no local detector weights" in err and "pass --detector PATH" in err
    with pytest.raises(RainkitError, match="no such file or folder"):
        from rainkit.detect.detector import resolve_detector

        resolve_detector(str(tmp_path / "nope.pt"))


# --- the real exported model -------------------------------------------------------------------------

def test_real_openvino_model_agrees_with_ultralytics_val(tmp_path, isolated_cache):
    """Our mAP on a few coco128 images equals Ultralytics' `val` on the same images and weights."""
    pytest.importorskip("openvino", reason="the openvino package is needed for the exported model")
    weights = shared_file("weights/yolov8n_int8_openvino_model")
    images = shared_file("data/coco128/images/train2017")
    labels = shared_file("data/coco128/labels/train2017")
    names = ["000000000009", "000000000025", "000000000030", "000000000034", "000000000036", "000000000042"]
    # A private copy of the few images (val writes a label cache beside the labels: never into ../shared).
    root = tmp_path / "set"
    for name in names:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{name}.jpg").write_bytes((images / f"{name}.jpg").read_bytes())
        (root / "labels" / f"{name}.txt").write_bytes((labels / f"{name}.txt").read_bytes())
    result = run_detect([str(root / "images")], labels=root / "labels", detector=weights, derain=False, device="cpu")
    assert result.ok and result.reference == "labels"
    assert result.settings["detector"]["format"] == "openvino" and result.settings["detector"]["imgsz"] == [640, 640]
    ours = result.conditions["rainy"].map
    assert ours.instances > 10

    from ultralytics import YOLO
    import yaml

    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                    "names": result.names}))
    metrics = YOLO(str(weights), task="detect").val(data=str(data), imgsz=640, batch=1, conf=0.001, iou=0.7,
                                                     device="cpu", plots=False, project=str(tmp_path / "runs"),
                                                     verbose=False)
    # The brief asks for 0.005; the same detections scored the same way agree to rounding. A looser match would
    # hide, e.g., Ultralytics' fallback NMS (used while torchvision is not imported) picking other boxes.
    assert ours.map50 == pytest.approx(metrics.box.map50, abs=TOL.ULTRALYTICS_MAP)
    assert ours.map50_95 == pytest.approx(metrics.box.map, abs=TOL.ULTRALYTICS_MAP)
    # Ultralytics' settings live in a rainkit cache (this test session's), not in ~/.config.
    from ultralytics.utils import SETTINGS

    assert Path(SETTINGS.file).parent.parent.name == "ultralytics"
    assert not Path(SETTINGS.file).is_relative_to(Path.home() / ".config")
