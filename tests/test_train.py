"""SAPNet training: config overrides, exact resume, two-process DDP, outputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from rainkit.errors import RainkitError
from rainkit.train.config import apply_override, load_config
from rainkit.train.data import PatchDataset, PatchSource
from rainkit.train.sapnet import train_sapnet
from tests.conftest import rainy_like, run_two_ranks, state_digest

TINY = ["model.width=8", "model.stages=2", "model.dilations=1,2", "model.reduction=4", "loss.contrastive=0",
        "loss.lpips=0", "loss.segmentation=0", "patch=24", "batch=4", "patches_per_image=4", "device=cpu"]


def _sources(n=3):
    out = []
    for i in range(n):
        clean = (rainy_like(40, 48, seed=i) * 255).astype(np.uint8)
        out.append(PatchSource(clean, None, f"img{i}.png"))
    return out


def _config(tmp_path, *extra):
    return load_config(overrides=TINY + [f"out={tmp_path}", *extra])


def _dataset(config):
    return PatchDataset(_sources(), patch=config.patch, patches_per_image=config.patches_per_image,
                        seed=config.seed, synthesize_preset="light")


def test_overrides_are_typed_and_checked():
    config = load_config(overrides=["epochs=3", "milestones=1,2", "loss.ssim=0.5", "amp=false", "val=none"])
    assert config.epochs == 3 and config.milestones == [1, 2] and config.loss.ssim == 0.5 and config.amp is False
    assert config.val is None
    with pytest.raises(RainkitError, match="expected int"):
        apply_override(config, "epochs=many")
    with pytest.raises(RainkitError, match="did you mean epochs"):
        apply_override(config, "epoch=3")


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 7, "loss": {"lpips": 0}, "milestones": [2, 4]}))
    config = load_config(path, ["epochs=9"])
    assert config.epochs == 9 and config.loss.lpips == 0 and config.milestones == [2, 4]


def test_resume_is_exact(tmp_path):
    straight = _config(tmp_path / "a", "max_steps=6", "epochs=2")
    result = train_sapnet(straight, _dataset(straight), [])
    assert result.global_step == 6
    half = _config(tmp_path / "b", "max_steps=3", "epochs=2")
    train_sapnet(half, _dataset(half), [])
    rest = _config(tmp_path / "b", "max_steps=6", "epochs=2")
    resumed = train_sapnet(rest, _dataset(rest), [], resume=True)
    assert resumed.global_step == 6
    assert state_digest(resumed.model) == state_digest(result.model), \
        "resume must reproduce the straight run bit for bit"


def test_data_workers_feed_the_same_batches_as_the_training_process(tmp_path):
    inline = _config(tmp_path / "inline", "max_steps=5", "epochs=2", "workers=0")
    expected = train_sapnet(inline, _dataset(inline), [])
    fed = _config(tmp_path / "workers", "max_steps=5", "epochs=2", "workers=2")
    result = train_sapnet(fed, _dataset(fed), [])
    assert result.global_step == 5
    assert state_digest(result.model) == state_digest(expected.model)


def test_epochs_write_checkpoint_best_weights_card_and_curves(tmp_path):
    config = _config(tmp_path, "epochs=2")
    val = [((rainy_like(32, 40, 9) * 255).astype(np.uint8), (rainy_like(32, 40, 9) * 230).astype(np.uint8))]
    result = train_sapnet(config, _dataset(config), val)
    assert [h["epoch"] for h in result.history] == [1, 2] and "psnr_y" in result.history[0]
    for name in ("last.pt", "best.safetensors", "best.json", "curves.png", "train.log"):
        assert (tmp_path / name).is_file(), name
    card = json.loads((tmp_path / "best.json").read_text())
    assert card["arch"] == "sapnet" and card["scores"]["psnr_y"] > 0 and len(card["sha256"]) == 64
    from rainkit.derain import load_derainer

    derainer = load_derainer("sapnet", str(tmp_path / "best.safetensors"), device="cpu")
    assert derainer.derain(rainy_like(20, 20)).shape == (20, 20, 3)


DDP_SCRIPT = """
import sys
import cv2
import numpy as np
from rainkit.train.config import load_config
from rainkit.train.data import PatchDataset, PatchSource
from rainkit.train.sapnet import train_sapnet
from tests.conftest import state_digest
from tests.test_train import TINY, _sources
config = load_config(overrides=TINY + ["out=" + sys.argv[1], "max_steps=3", "epochs=1"])
data = PatchDataset(_sources(), patch=config.patch, patches_per_image=config.patches_per_image, seed=config.seed,
                    synthesize_preset="light")
result = train_sapnet(config, data, [])
import torch.distributed as dist
assert not dist.is_initialized(), "the trainer joined the process group and must leave it"
print("DIGEST", state_digest(result.model))
"""


def test_two_process_ddp_ranks_stay_in_sync(tmp_path):
    digests = run_two_ranks(DDP_SCRIPT, tmp_path, timeout=120)
    assert digests[0] == digests[1]
    assert (tmp_path / "last.pt").is_file()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["global_step"] == 3


def test_trainer_leaves_a_process_group_made_by_its_caller(tmp_path):
    import torch.distributed as dist
    from rainkit.train.distributed import leaves_process_group_as_found

    @leaves_process_group_as_found
    def train():
        return dist.get_world_size()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert train() == 1
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_prepare_training_data_splits_by_name_and_rains_validation_once(tmp_path):
    from rainkit.train.data import prepare_training_data

    folder = tmp_path / "clean"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"img{i:02d}.png"), (rainy_like(48, 56, seed=i) * 255).astype(np.uint8))
    config = load_config(overrides=TINY + [f"data={folder}", "synthesize=light", "val_fraction=0.3",
                                           "intensity=0.2,0.8", "jitter=1"])
    first, second = prepare_training_data(config), prepare_training_data(config)
    assert first.description["train_images"] + first.description["val_images"] == 12
    assert 0 < first.description["val_images"] < 12
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first.val_pairs, second.val_pairs))
    rainy, clean = first.val_pairs[0]
    assert rainy.shape == clean.shape and rainy.mean() > clean.mean(), "validation images carry (bright) rain"
    a, b = first.train.sample(3, epoch=0), second.train.sample(3, epoch=0)
    assert np.array_equal(a[0], b[0]), "a sample is a function of (seed, epoch, index)"
    assert not np.array_equal(first.train.sample(3, epoch=1)[0], a[0])


def test_rain_jitter_varies_streaks_within_the_intensity_range():
    data = PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light",
                        intensity=(0.1, 0.9), jitter=1.0)
    params = [data.rain_for(np.random.default_rng(i)) for i in range(20)]
    assert len({round(p.angle, 3) for p in params}) > 10 and len({round(p.length, 3) for p in params}) > 10
    with pytest.raises(Exception, match="within 0..1"):
        PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light", intensity=(0.8, 0.2))


def test_clean_fraction_leaves_that_share_of_samples_rain_free_and_keeps_other_runs_unchanged():
    def samples(**kwargs):
        data = PatchDataset(_sources(), patch=24, patches_per_image=40, seed=0, synthesize_preset="light", **kwargs)
        return [data.sample(i, 0) for i in range(len(data))]

    def rain_free_share(pairs):
        return np.mean([np.array_equal(rainy, clean) for rainy, clean in pairs])

    default, explicit_zero = samples(), samples(clean_fraction=0.0)
    # A few tiny patches of light rain catch no streak by chance; a quarter more are left rain-free on purpose.
    assert rain_free_share(default) < 0.05
    assert 0.15 < rain_free_share(samples(clean_fraction=0.25)) - rain_free_share(default) < 0.35
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(default, explicit_zero))
    with pytest.raises(Exception, match="rain-free"):
        PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light", clean_fraction=1.0)


def test_scene_fraction_cuts_patches_from_the_whole_scene_scaled_to_the_patch():
    sources = _sources()

    def samples(**kwargs):
        data = PatchDataset(sources, patch=24, patches_per_image=10, seed=0, synthesize_preset="light", **kwargs)
        return [data.sample(i, 0) for i in range(len(data))]

    def from_scene(index, clean):
        # The 40x48 source scaled to 24x29: a patch of the whole scene is a horizontal window of it (maybe flipped).
        scene = cv2.resize(sources[index % 3].clean, (29, 24), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        windows = [scene[:, x:x + 24] for x in range(6)]
        return any(np.array_equal(clean, w) or np.array_equal(clean, w[:, ::-1]) for w in windows)

    scenes = samples(scene_fraction=1.0)
    assert all(from_scene(i, clean) for i, (_, clean) in enumerate(scenes))
    assert not any(from_scene(i, clean) for i, (_, clean) in enumerate(samples()))
    half = samples(scene_fraction=0.5)
    assert 0.2 < np.mean([from_scene(i, clean) for i, (_, clean) in enumerate(half)]) < 0.8
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(samples(), samples(scene_fraction=0.0)))
    with pytest.raises(Exception, match="whole-scene"):
        PatchDataset(sources, patch=24, patches_per_image=2, seed=0, synthesize_preset="light", scene_fraction=1.5)


def test_train_command_end_to_end(tmp_path, monkeypatch):
    from rainkit.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG-16 in torchvision's cache

    folder = tmp_path / "clean"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"img{i}.png"), (rainy_like(48, 56, seed=i) * 255).astype(np.uint8))
    out = tmp_path / "run"
    args = ["train", "sapnet", "--data", str(folder), "--synthesize", "light", "--out", str(out), "--epochs", "1",
            "--device", "cpu", "--set", "val_fraction=0.4"] + [a for item in TINY for a in ("--set", item)]
    assert main(args) == 0
    card = json.loads((out / "best.json").read_text())
    assert card["data"]["synthesize"] == "light" and card["arch_kwargs"]["width"] == 8
    missing = ["train", "sapnet", "--data", str(folder), "--synthesize", "light", "--out", str(tmp_path / "r2"),
               "--device", "cpu", "--set", "model.width=8", "--set", "model.stages=2"]
    assert main(missing) == 1, "the VGG terms are on by default and their weights are absent: a clear stop"


def test_validation_split_does_not_depend_on_how_the_folder_is_spelled(tmp_path, monkeypatch):
    from rainkit.train.data import prepare_training_data

    folder = tmp_path / "clean"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"img{i:02d}.png"), (rainy_like(48, 56, seed=i) * 255).astype(np.uint8))
    splits = []
    for spelled, cwd in ((str(folder), tmp_path), ("clean", tmp_path), ("../clean", folder)):
        monkeypatch.chdir(cwd)
        data = prepare_training_data(load_config(overrides=TINY + [f"data={spelled}", "synthesize=light",
                                                                   "val_fraction=0.3"]))
        splits.append([v[1].tobytes() for v in data.val_pairs])
    assert splits[0] == splits[1] == splits[2] and splits[0]


def test_a_preset_mix_rains_each_sample_with_one_of_its_presets():
    from rainkit.errors import DatasetError

    data = PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light,heavy")
    layers = [data.rain_for(np.random.default_rng(i)).layers for i in range(40)]
    assert set(layers) == {1, 3} and 10 < layers.count(3) < 30, "light (1 layer) and heavy (3 layers) both drawn"
    single = PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light")
    assert {single.rain_for(np.random.default_rng(i)).layers for i in range(10)} == {1}
    with pytest.raises(DatasetError, match="unknown rain preset 'drizzle'"):
        PatchDataset(_sources(), patch=24, patches_per_image=2, seed=0, synthesize_preset="light,drizzle")


def test_init_fine_tunes_from_given_weights_and_records_them(tmp_path):
    first = _config(tmp_path / "a", "max_steps=2", "epochs=1")
    trained = train_sapnet(first, _dataset(first), [])
    start = tmp_path / "start.safetensors"
    from rainkit.hub.checkpoint import save_checkpoint

    save_checkpoint(start, trained.model, "sapnet", {"width": 8, "stages": 2, "dilations": [1, 2], "reduction": 4})
    frozen = _config(tmp_path / "b", "epochs=1", "lr=0", f"init={start}")
    tuned = train_sapnet(frozen, _dataset(frozen), [])
    assert state_digest(tuned.model) == state_digest(trained.model), "with lr 0 the fine-tuned net is exactly its start"
    card = json.loads((tmp_path / "b" / "best.json").read_text())
    from rainkit.hub.weights import sha256_file

    assert card["init"] == {"weights": str(start), "sha256": sha256_file(start)}
    other = _config(tmp_path / "c", "max_steps=1", "epochs=1", "model.width=12", f"init={start}")
    with pytest.raises(RainkitError, match="does not fit RecurrentDerainNet .shape mismatch"):
        train_sapnet(other, _dataset(other), [])


def test_data_workers_default_to_a_share_of_the_node_on_cuda_only(monkeypatch):
    from rainkit.train.data import resolve_workers

    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert resolve_workers(-1, torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert resolve_workers(-1, torch.device("cuda")) == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_workers(-1, torch.device("cuda")) == 6


def test_card_records_the_commit_the_run_started_from(tmp_path, monkeypatch):
    """A checkout's HEAD can move during a long run; the card names the code that trained."""
    import rainkit.train.base as base

    heads = iter(["a" * 40] + ["b" * 40] * 100)
    monkeypatch.setattr(base, "git_commit", lambda: next(heads))
    config = _config(tmp_path, "epochs=1")
    val = [((rainy_like(32, 40, 9) * 255).astype(np.uint8), (rainy_like(32, 40, 9) * 230).astype(np.uint8))]
    train_sapnet(config, _dataset(config), val)
    assert json.loads((tmp_path / "best.json").read_text())["commit"] == "a" * 40


def test_memory_format_is_one_trainer_setting_and_the_layouts_agree(tmp_path):
    # The CPU default is channels-last (faster there); contiguous forces the other layout, to the same weights
    # within rounding; a misspelt value is refused before any step.
    runs = {}
    for layout in ("auto", "contiguous"):
        config = _config(tmp_path / layout, "max_steps=2", "epochs=1", f"memory_format={layout}")
        runs[layout] = train_sapnet(config, _dataset(config), []).model
    weight = lambda model: next(p for p in model.parameters() if p.dim() == 4)  # noqa: E731
    assert weight(runs["auto"]).is_contiguous(memory_format=torch.channels_last)
    assert not weight(runs["contiguous"]).is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(runs["auto"].state_dict().values(), runs["contiguous"].state_dict().values()):
        # Adam normalises each gradient, so rounding in a near-zero one can move a weight by a fraction of a step
        # (lr 1e-3): allow a tenth of one.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    bad = _config(tmp_path / "bad", "max_steps=1", "memory_format=channel_last")
    with pytest.raises(RainkitError, match="memory_format must be one of auto, channels_last, contiguous"):
        train_sapnet(bad, _dataset(bad), [])
