"""What a GPU session of TPSeNCE training needs: sharded generator sets (save, verified load, `rainkit generate`
on one), `init` from an earlier session's files (generator, D and MLP heads, the card's sessions, the schedule's
epoch offset), channels-last equal to the default layout, and batches made ahead equal to those made in step.
Tiny networks on tiny images: seconds on a CPU."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from rainkit.cli import main
from tests.conftest import rainy_like, state_digest
from tests.test_tpsence import TRAIN, _data, _tiny


def _tiny_generator(ngf=4, n_blocks=2):
    from rainkit.hub import create_model
    from rainkit.models.tpsence import init_weights

    torch.manual_seed(0)
    return init_weights(create_model("tpsence", ngf=ngf, n_blocks=n_blocks), 0.5)


# ---------------------------------------------------------------------------------------------- sharded sets
def test_sharded_set_round_trips_verifies_and_loads_like_one_file(tmp_path):
    from rainkit.errors import WeightsError
    from rainkit.hub import load_model
    from rainkit.hub.checkpoint import read_metadata, read_state_dict, save_checkpoint, shard_checkpoint
    from rainkit.hub.weights import resolve_weights, sha256_file
    from rainkit.synth.tpsence import load_generator

    kwargs = {"ngf": 4, "n_blocks": 2}
    single = save_checkpoint(tmp_path / "g.safetensors", _tiny_generator(**kwargs).half(), "tpsence", kwargs,
                             extra={"rainkit.dtype": "fp16"})
    limit = 16 * 1024  # a generator of about 50 kB in fp16: several shards
    index = shard_checkpoint(single, tmp_path / "set", max_bytes=limit)
    shards = sorted((tmp_path / "set").glob("model-*-of-*.safetensors"))
    assert index.name == "model.safetensors.index.json" and len(shards) >= 3
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all(p.stat().st_size <= limit for p in shards)
    content = json.loads(index.read_text())
    assert set(content["weight_map"].values()) == {p.name for p in shards}
    assert content["metadata"]["rainkit.arch"] == "tpsence" and content["metadata"]["total_size"] > 0
    assert all(content["rainkit.shards"][p.name]["sha256"] == sha256_file(p) for p in shards)

    a, b = read_state_dict(single), read_state_dict(tmp_path / "set")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(index)["rainkit.arch_kwargs"] == read_metadata(single)["rainkit.arch_kwargs"]
    assert resolve_weights(str(tmp_path / "set")).path == index  # a folder resolves to its index
    assert resolve_weights(str(index)).sha256 == sha256_file(index)
    model, _ = load_model("tpsence", str(tmp_path / "set"))
    assert model.config["ngf"] == 4 and model.config["n_blocks"] == 2

    image = rainy_like(30, 34)
    whole = load_generator(single, "cpu", tile=0).generate(image)
    assert np.array_equal(load_generator(tmp_path / "set", "cpu", tile=0).generate(image), whole)
    assert np.array_equal(load_generator(index, "cpu", tile=0).generate(image), whole)

    # a changed shard, a missing one, a shard holding other tensors: one error each, naming the file
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "set", broken)
    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 1
    (broken / shards[1].name).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{shards[1].name}: sha256 .* index"):
        load_model("tpsence", str(broken))
    (broken / shards[1].name).unlink()
    with pytest.raises(WeightsError, match="1 of .* shards missing"):
        read_state_dict(broken / index.name)
    shutil.copy(shards[2], broken / shards[1].name)
    listed = json.loads((broken / index.name).read_text())
    del listed["rainkit.shards"]
    (broken / index.name).write_text(json.dumps(listed))
    with pytest.raises(WeightsError, match="does not hold what"):
        read_state_dict(broken / index.name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a sharded weights set"):
        resolve_weights(str(tmp_path / "empty"))


def test_generate_command_reads_a_sharded_generator(tmp_path, capsys):
    from rainkit.hub.checkpoint import save_checkpoint, shard_checkpoint

    kwargs = {"ngf": 4, "n_blocks": 1}
    single = save_checkpoint(tmp_path / "g.safetensors", _tiny_generator(**kwargs), "tpsence", kwargs)
    index = shard_checkpoint(single, tmp_path / "set", max_bytes=40 * 1024)
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), (rainy_like(37, 53) * 200).astype(np.uint8))
    for i, weights in enumerate((single, index, tmp_path / "set")):
        assert main(["generate", str(photo), str(tmp_path / f"out{i}"), "--method", "tpsence", "--weights",
                     str(weights), "--device", "cpu"]) == 0
    outputs = [cv2.imread(str(tmp_path / f"out{i}" / "a.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    assert outputs[0].shape == (37, 53, 3)
    assert all(np.array_equal(o, outputs[0]) for o in outputs[1:])
    assert "model.safetensors.index.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- init
def test_init_loads_generator_discriminator_and_heads_and_extends_the_card(tmp_path):
    from rainkit.errors import RainkitError
    from rainkit.hub.checkpoint import shard_checkpoint
    from rainkit.hub.weights import sha256_file
    from rainkit.train.tpsence import load_init, train_tpsence
    from rainkit.train.tpsence_objective import TPSeNCE

    first = train_tpsence(_tiny(f"out={tmp_path / 'a'}", *TRAIN, "export_fp16=true"), *_data())
    run = tmp_path / "a"
    assert (run / "networks.safetensors").is_file()
    card = json.loads((run / "generator.json").read_text())
    assert card["total_steps"] == 4 and len(card["sessions"]) == 1 and card["sessions"][0]["image_steps"] == 8

    # what a GPU session brings back: the generator sharded, D and heads, the card
    back = tmp_path / "back"
    index = shard_checkpoint(run / "generator.safetensors", back, max_bytes=16 * 1024)
    for name in ("networks.safetensors", "generator.json"):
        shutil.copy(run / name, back / name)

    config = _tiny("seed=3")
    fresh = TPSeNCE(config)
    record = load_init(fresh, config, str(back))
    assert record["generator_sha256"] == sha256_file(index)
    assert record["networks_sha256"] == sha256_file(back / "networks.safetensors")
    for name in ("generator", "discriminator", "head"):  # fp16 files into fp32 networks: fp16 rounding only
        trained, loaded = getattr(first.model, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(loaded[k].dtype == torch.float32 for k in loaded)
        assert all(torch.equal(loaded[k], trained[k].half().float()) for k in trained), name

    # a generator file alone: D and heads stay fresh
    alone = TPSeNCE(config)
    assert load_init(alone, config, str(run / "generator.safetensors"))["networks_sha256"] is None
    assert torch.equal(alone.generator.model[1].weight, fresh.generator.model[1].weight)
    assert not torch.equal(alone.discriminator.model[0].weight, fresh.discriminator.model[0].weight)

    with pytest.raises(RainkitError, match="ngf 4 .this run: 8."):
        load_init(TPSeNCE(_tiny("ngf=8")), _tiny("ngf=8"), str(back))
    with pytest.raises(RainkitError, match="netf_nc 8 .this run: 16."):
        load_init(TPSeNCE(_tiny("netf_nc=16")), _tiny("netf_nc=16"), str(back))
    with pytest.raises(RainkitError, match="holds no generator"):
        load_init(TPSeNCE(config), config, str(tmp_path))

    # the second session: a training run from those files, its schedule one epoch on
    second = train_tpsence(_tiny(f"out={tmp_path / 'b'}", *TRAIN, f"init={back}", "epoch_offset=1", "seed=1"),
                           *_data())
    assert second.global_step == 2 and second.epoch == 1  # the one epoch of the schedule left
    card = json.loads((tmp_path / "b" / "generator.json").read_text())
    assert [s["steps"] for s in card["sessions"]] == [4, 2] and card["total_steps"] == 6
    assert card["init"]["generator_sha256"] == sha256_file(index) and card["sessions"][1]["epoch_offset"] == 1
    assert json.loads((tmp_path / "b" / "train.log").read_text().splitlines()[0])["lr"] == pytest.approx(1e-4)


def test_train_command_takes_init(tmp_path, capsys):
    from tests.test_tpsence_cli import TINY, _data_args, _write_folder

    root = tmp_path / "data"
    _write_folder(root / "clear", 3, 40, 48, 0, root / "seg-clear")
    _write_folder(root / "rain", 3, 36, 44, 10, root / "seg-rain")
    assert main(["train", "tpsence", *_data_args(root), "--out", str(tmp_path / "a"), *TINY]) == 0
    assert main(["train", "tpsence", *_data_args(root), "--out", str(tmp_path / "b"), *TINY,
                 "--init", str(tmp_path / "a")]) == 0
    card = json.loads((tmp_path / "b" / "generator.json").read_text())
    assert card["init"]["source"] == str(tmp_path / "a") and card["total_steps"] == 4


def test_epoch_offset_picks_the_schedule_up():
    from rainkit.errors import RainkitError
    from rainkit.train.tpsence import lr_at

    c = _tiny("n_epochs=2", "n_epochs_decay=3", "lr=1", "epoch_offset=2")
    assert c.epochs == 3 and [round(lr_at(c, e), 4) for e in range(3)] == [0.75, 0.5, 0.25]
    with pytest.raises(RainkitError, match="epoch_offset"):
        _tiny("n_epochs=2", "n_epochs_decay=3", "epoch_offset=5")


def test_a_continued_run_draws_the_schedule_epochs_samples(tmp_path):
    """`epoch_offset` moves the draws too (sample order, crops, flips, NCE patches): a continued run's first epoch is
    drawn as the schedule's epoch 1, not as the first session's epoch 0 again. Same initial weights, so the first
    step's losses (taken before any update) differ only by the batch."""
    from rainkit.train.tpsence import train_tpsence

    def first_step(name, *extra):
        train_tpsence(_tiny(f"out={tmp_path / name}", *TRAIN, "max_steps=1", *extra), *_data())
        return json.loads((tmp_path / name / "train.log").read_text().splitlines()[0])

    fresh, again, continued = first_step("a"), first_step("b"), first_step("c", "epoch_offset=1")
    assert fresh["g"] == again["g"] and fresh["epoch"] == continued["epoch"] == 0
    assert continued["g"] != fresh["g"]


# ---------------------------------------------------------------------------------------------- layout, prefetch
def test_channels_last_gives_the_same_losses_and_gradients_in_fp32():
    from rainkit.train.tpsence_objective import TPSeNCE

    config = _tiny()
    torch.manual_seed(0)
    plain = TPSeNCE(config)
    last = TPSeNCE(config)
    last.load_state_dict(plain.state_dict())
    last = last.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mpa = torch.tensor([0.3, 0.8])

    def run(model, x, y):
        rngs = [[np.random.default_rng([0, 0, i, s]) for i in range(2)] for s in (1, 2)]
        fake, idt = model.translate(x, y)
        d = model.discriminator_loss(fake, y)
        terms = model.generator_loss(x, y, fake, idt, mpa, *rngs)
        (terms["g"] + d["d"]).backward()
        return fake.detach(), {k: float(v.detach()) for k, v in {**terms, **d}.items()}, {k: p.grad for k, p in model.named_parameters()}

    fake_a, terms_a, grads_a = run(plain, x, y)
    cl = torch.channels_last
    fake_b, terms_b, grads_b = run(last, x.contiguous(memory_format=cl), y.contiguous(memory_format=cl))
    assert last.generator.model[1].weight.is_contiguous(memory_format=cl)
    assert torch.allclose(fake_a, fake_b, atol=1e-6)
    assert terms_a.keys() == terms_b.keys()
    assert all(terms_b[k] == pytest.approx(terms_a[k], rel=1e-5, abs=1e-7) for k in terms_a)
    for net in ("generator", "discriminator", "head"):
        # per network, as one vector: the biases before instance norm have a true gradient of 0, only rounding noise
        names = [n for n, grad in grads_a.items() if n.startswith(net + ".") and grad is not None]
        a = torch.cat([grads_a[n].flatten() for n in names])
        b = torch.cat([grads_b[n].contiguous().flatten() for n in names])
        assert float((a - b).norm() / a.norm()) < 1e-4, net


def test_batches_made_ahead_and_channels_last_runs(tmp_path):
    from rainkit.synth.tpsence import load_generator
    from rainkit.train.tpsence import train_tpsence

    inline = train_tpsence(_tiny(f"out={tmp_path / 'a'}", *TRAIN, "prefetch=off"), *_data())
    ahead = train_tpsence(_tiny(f"out={tmp_path / 'b'}", *TRAIN, "prefetch=on"), *_data())
    assert state_digest(ahead.model) == state_digest(inline.model), "batches made ahead must change nothing"
    last = train_tpsence(_tiny(f"out={tmp_path / 'c'}", *TRAIN, "memory_format=channels_last"), *_data())
    assert last.model.generator.model[1].weight.is_contiguous(memory_format=torch.channels_last)
    logs = [[json.loads(line) for line in (tmp_path / d / "train.log").read_text().splitlines()] for d in "ac"]
    assert logs[0][0]["g"] == pytest.approx(logs[1][0]["g"], rel=1e-5)  # the first step, before any update
    assert load_generator(tmp_path / "c" / "generator.safetensors", "cpu", tile=0).generate(rainy_like(20, 24)).shape \
        == (20, 24, 3)
