"""Both trainers on bad input and on being stopped: broken checkpoints, unreadable images, changed
settings on resume, SIGTERM, and the step and time budgets. Tiny networks, a step or two."""

from __future__ import annotations

import json
import os
import signal

import cv2
import numpy as np
import pytest
import torch

from rainkit.cli import main
from rainkit.train.config import load_config
from rainkit.train.sapnet import train_sapnet
from rainkit.train.tpsence_config import TINY_OVERRIDES
from tests.conftest import rainy_like, state_digest
from tests.test_train import TINY, _config, _dataset

SAPNET_SET = [arg for item in TINY for arg in ("--set", item)]
TPSENCE_SET = [arg for o in TINY_OVERRIDES + ["samples_per_epoch=2", "plot_curves=false", "sence=false"]
               for arg in ("--set", o)]


def _one_line_error(capsys) -> str:
    """The error a failed command ends with: one line, after whatever it printed before, no traceback."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert "Traceback" not in err and last.startswith("error:") and err.count("error:") == 1, err
    return last


def _images(folder, n, height=48, width=56, offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i}.png"), (rainy_like(height, width, seed=offset + i) * 255).astype(np.uint8))
    return folder


def _sapnet(folder, out, *extra):
    return ["train", "sapnet", "--data", str(folder), "--synthesize", "light", "--out", str(out), "--device", "cpu",
            "--set", "val_fraction=0", *SAPNET_SET, *extra]


def _tpsence(root, out, *extra):
    return ["train", "tpsence", "--clear", str(root / "clear"), "--target", str(root / "rain"), "--out", str(out),
            *TPSENCE_SET, *extra]


@pytest.fixture
def clean_folder(tmp_path):
    return _images(tmp_path / "clean", 3)


@pytest.fixture
def unpaired(tmp_path):
    _images(tmp_path / "data" / "clear", 3, 40, 48)
    _images(tmp_path / "data" / "rain", 3, 36, 44, offset=10)
    return tmp_path / "data"


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def _break(checkpoint, how):
    if how == "empty":
        checkpoint.write_bytes(b"")
    elif how == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    elif how == "malicious":
        torch.save({"model": _Payload()}, checkpoint)
    return {"empty": "is empty", "truncated": "not a readable checkpoint", "malicious": "refused"}[how]


@pytest.mark.parametrize("how", ["empty", "truncated", "malicious"])
def test_sapnet_resume_from_a_broken_checkpoint_is_one_line(clean_folder, tmp_path, capsys, how):
    run = tmp_path / "run"
    assert main(_sapnet(clean_folder, run, "--epochs", "1")) == 0
    expected = _break(run / "last.pt", how)
    capsys.readouterr()
    assert main(_sapnet(clean_folder, run, "--epochs", "1", "--resume")) == 1
    err = _one_line_error(capsys)
    assert "last.pt" in err and expected in err and ("without --resume" in err or how == "malicious")
    assert "this ran while loading" not in err


@pytest.mark.parametrize("how", ["empty", "truncated", "malicious"])
def test_tpsence_resume_from_a_broken_checkpoint_is_one_line(unpaired, tmp_path, capsys, how):
    run = tmp_path / "run"
    assert main(_tpsence(unpaired, run, "--set", "max_steps=1")) == 0
    expected = _break(run / "last.pt", how)
    capsys.readouterr()
    assert main(["train", "tpsence", "--resume", "--out", str(run)]) == 1
    err = _one_line_error(capsys)
    assert "last.pt" in err and expected in err


def test_resume_from_the_other_trainers_checkpoint_or_another_network_says_so(clean_folder, unpaired, tmp_path,
                                                                             capsys):
    tps = tmp_path / "tps"
    assert main(_tpsence(unpaired, tps, "--set", "max_steps=1")) == 0
    capsys.readouterr()
    assert main(_sapnet(clean_folder, tps, "--resume")) == 1
    assert "config.json: not the settings of a run of this trainer (--set crop: unknown" in _one_line_error(capsys)
    (tps / "config.json").unlink()
    assert main(_sapnet(clean_folder, tps, "--resume")) == 1
    assert "not a checkpoint of this trainer (missing model, optimizer, best)" in _one_line_error(capsys)
    sap = tmp_path / "sap"
    assert main(_sapnet(clean_folder, sap, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(_sapnet(clean_folder, sap, "--resume", "--set", "model.width=12")) == 1
    err = _one_line_error(capsys)
    assert "does not fit RecurrentDerainNet" in err and "shape mismatch" in err


def test_unreadable_training_images_are_skipped_and_listed(clean_folder, tmp_path, capsys):
    (clean_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (clean_folder / "empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    assert main(_sapnet(clean_folder, run, "--epochs", "1")) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "skipped 2 unreadable image(s)" in warning and "broken.png" in warning and "empty.jpg" in warning
    assert "training sapnet on 3 images" in err
    assert json.loads((run / "best.json").read_text())["data"]["skipped_unreadable"] == 2


def test_no_training_images_says_why(tmp_path, capsys):
    folder = _images(tmp_path / "small", 2, 16, 20)  # smaller than the 24-pixel patch
    (folder / "broken.png").write_bytes(b"garbage")
    assert main(_sapnet(folder, tmp_path / "run", "--epochs", "1")) == 1
    err = _one_line_error(capsys)
    assert "no training images: of the 3 listed" in err
    assert "1 cannot be read" in err and "broken.png" in err
    assert "2 are smaller than the 24px patch" in err and "--set patch=N" in err


def test_tpsence_skips_unreadable_images_and_refuses_a_folder_with_none(unpaired, tmp_path, capsys):
    (unpaired / "rain" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(_tpsence(unpaired, tmp_path / "run", "--set", "max_steps=1")) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "cut.jpg" in err and "3 clear and 3 rain images" in err
    for path in (unpaired / "clear").iterdir():
        path.write_bytes(b"")
    assert main(_tpsence(unpaired, tmp_path / "other")) == 1
    err = _one_line_error(capsys)
    assert "none of its 3 images can be read" in err and "clear" in err


def test_sapnet_resume_says_which_settings_changed(clean_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_sapnet(clean_folder, run, "--epochs", "1")) == 0
    capsys.readouterr()
    # the run's own settings are read back: only what is given again changes
    assert main(["train", "sapnet", "--resume", "--out", str(run), "--epochs", "2", "--batch", "2"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("resuming with changed settings"))
    assert "batch 4 -> 2" in line and "epochs 1 -> 2" in line and "model.width" not in line
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], json.loads(state["config"])["batch"]) == (2, 2)
    assert main(["train", "sapnet", "--resume", "--out", str(run)]) == 0
    assert "changed settings" not in capsys.readouterr().err


def test_tpsence_resume_says_which_settings_changed(unpaired, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_tpsence(unpaired, run, "--set", "max_steps=1")) == 0
    capsys.readouterr()
    assert main(["train", "tpsence", "--resume", "--out", str(run), "--epochs", "4", "--set", "max_steps=0"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("resuming with changed settings"))
    assert "n_epochs 1 -> 2" in line and "n_epochs_decay 1 -> 2" in line and "max_steps" not in line
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 4


def test_sapnet_sigterm_stops_at_the_end_of_the_step_and_resumes_exactly(tmp_path):
    straight = _config(tmp_path / "a", "max_steps=5", "epochs=2")
    expected = train_sapnet(straight, _dataset(straight), [])

    def terminate_at_step_2(step, batch, batches, values):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = _config(tmp_path / "b", "max_steps=5", "epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train_sapnet(stopped, _dataset(stopped), [], on_step=terminate_at_step_2)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (state["global_step"], state["epoch"], state["batch"]) == (2, 0, 2)
    resumed = train_sapnet(stopped, _dataset(stopped), [], resume=True)
    assert resumed.global_step == 5 and state_digest(resumed.model) == state_digest(expected.model)


def test_sigterm_through_the_command_line_exits_130_with_how_to_continue(clean_folder, tmp_path, capsys, monkeypatch):
    from rainkit.train import base

    real_run = base.Trainer.run

    def run_then_terminate(self, **kwargs):
        step = kwargs["on_step"]

        def on_step(*args):
            step(*args)
            os.kill(os.getpid(), signal.SIGTERM)

        return real_run(self, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(base.Trainer, "run", run_then_terminate)
    run = tmp_path / "run"
    assert main(_sapnet(clean_folder, run, "--epochs", "2")) == 130
    err = capsys.readouterr().err
    assert "checkpoint saved in" in err and "rainkit train sapnet --resume --out" in err
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 1


def test_max_minutes_checkpoints_and_exports(tmp_path):
    from rainkit.train.tpsence import train_tpsence
    from tests.test_tpsence import TRAIN, _data, _tiny

    result = train_tpsence(_tiny(f"out={tmp_path / 'tps'}", "max_minutes=1e-9", *TRAIN), *_data())
    assert (result.stopped, result.global_step) == ("max_minutes", 1)
    assert torch.load(tmp_path / "tps" / "last.pt", weights_only=True)["global_step"] == 1
    assert json.loads((tmp_path / "tps" / "generator.json").read_text())["step"] == 1
    config = _config(tmp_path / "sap", "max_minutes=1e-9", "epochs=2")
    result = train_sapnet(config, _dataset(config), [])
    assert (result.stopped, result.global_step) == ("max_minutes", 1)
    assert json.loads((tmp_path / "sap" / "best.json").read_text())["step"] == 1
    assert result.exported == tmp_path / "sap" / "best.safetensors" and result.exported.is_file()


def test_a_run_writes_its_settings_for_a_resume(tmp_path):
    run = tmp_path / "run"
    config = load_config(overrides=TINY + [f"out={run}", "max_steps=1", "epochs=1"])
    train_sapnet(config, _dataset(config), [])
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["width"] == 8 and saved["max_steps"] == 1
