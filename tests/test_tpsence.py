"""TPSeNCE: networks, TPS / SeNCE losses and their gradients, the trainer, and seam-free generation."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from rainkit.losses.tpsence import mean_pixel_agreement, sence_loss, sence_weights, sinkhorn, tps_loss
from rainkit.models.tpsence import ResnetGenerator, init_weights, l2_normalize
from rainkit.tiling import plan_single_pass
from rainkit.train.tpsence_config import TINY_OVERRIDES, load_tpsence_config
from rainkit.train.tpsence_objective import TPSeNCE
from tests.conftest import rainy_like, run_two_ranks, state_digest
import tests.tolerances as TOL


def _tiny(*extra):
    return load_tpsence_config(overrides=TINY_OVERRIDES + list(extra))


def _batch(seed=0, n=2, side=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * 2 - 1, torch.rand(n, 3, side, side, generator=g) * 2 - 1


def _rngs(n, stream):
    return [np.random.default_rng([0, 0, i, stream]) for i in range(n)]


# ---------------------------------------------------------------------------------------------- networks
def test_networks_match_cut():
    from rainkit.hub import create_model
    from rainkit.models.tpsence import PatchDiscriminator

    generator = create_model("tpsence")
    assert sum(p.numel() for p in generator.parameters()) == 11_378_179  # CUT's resnet_9blocks, ngf 64
    assert generator.layer_channels([0, 4, 8, 12, 16]) == [3, 128, 256, 256, 256]
    program = plan_single_pass(generator.tile_sweeps, torch.float32)
    # 23 instance norms and the output; at the peak the first two norms' inputs, 64 + 128 float32 channels per pixel
    assert program.sweeps == 24 and program.halo == 8 and program.bytes_per_pixel == 3 * 64 * 4
    assert 2.76e6 < sum(p.numel() for p in PatchDiscriminator().parameters()) < 2.77e6  # 70x70 PatchGAN
    tiny = create_model("tpsence", "tiny")
    x = torch.rand(1, 3, 36, 44) * 2 - 1
    out = tiny(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    feats = tiny.encode(x, [0, 4, 8, 12])
    assert [f.shape[1] for f in feats] == tiny.layer_channels([0, 4, 8, 12])
    assert feats[0].shape[2:] == (42, 50) and feats[2].shape[2:] == (18, 22) and feats[3].shape[2:] == (9, 11)


# ---------------------------------------------------------------------------------------------- losses
def test_mean_pixel_agreement_of_synthetic_maps():
    a = np.zeros((8, 8), np.uint8)
    a[:, 4:] = 1
    assert mean_pixel_agreement(a, a) == 1.0
    assert mean_pixel_agreement(a, 1 - a) == 0.0  # disjoint labelling
    b = a.copy()
    b[:2] = 7
    assert mean_pixel_agreement(a, b) == pytest.approx(0.75)


def test_sinkhorn_meets_its_marginals():
    torch.manual_seed(0)
    kernel = torch.exp(torch.randn(3, 64, 64))
    plan = sinkhorn(kernel, 50)
    torch.testing.assert_close(plan.sum(1), torch.ones(3, 64), atol=TOL.FP32_SUM, rtol=0)  # columns: exact after the last step
    torch.testing.assert_close(plan.sum(2), torch.ones(3, 64), atol=TOL.CONVERGED, rtol=0)  # rows: converged
    q = l2_normalize(torch.randn(2, 32, 16), dim=2)
    k = l2_normalize(torch.randn(2, 32, 16), dim=2)
    weights = sence_weights(q, k, torch.tensor([0.2, 0.9]), iterations=50)
    torch.testing.assert_close(weights.sum(2), torch.full((2, 32), 31.0), atol=TOL.SINKHORN_WEIGHT_SUM, rtol=0)  # (N - 1) per anchor
    assert float(weights.diagonal(dim1=1, dim2=2).max()) < 1e-3  # the positive is not a negative


def test_ot_weights_follow_semantic_similarity():
    """Identical label maps (mPA 1): easy weighting, negatives similar to the anchor are pushed less.
    Disjoint maps (mPA 0): hard weighting, similar negatives are pushed more. mPA 0.5: uniform."""
    same = np.ones((16, 16), np.uint8)
    mpa_same = mean_pixel_agreement(same, same)
    mpa_disjoint = mean_pixel_agreement(same, np.zeros_like(same))
    assert mpa_same == 1.0 and mpa_disjoint == 0.0
    torch.manual_seed(1)
    q = l2_normalize(torch.randn(1, 48, 8), dim=2)
    k = l2_normalize(q + 0.8 * torch.randn(1, 48, 8), dim=2)
    sim = torch.bmm(q, k.transpose(1, 2))[0]
    off = ~torch.eye(48, dtype=torch.bool)

    def correlation(mpa):
        w = sence_weights(q, k, torch.tensor([mpa]))[0]
        return float(torch.corrcoef(torch.stack([w[off], sim[off]]))[0, 1]), w

    corr_same, w_same = correlation(mpa_same)
    corr_disjoint, w_disjoint = correlation(mpa_disjoint)
    assert corr_same < -0.9 and corr_disjoint > 0.9
    i, j = divmod(int(torch.where(off, sim, torch.tensor(-2.0)).argmax()), 48)  # the hardest negative overall
    assert w_disjoint[i, j] > 1.0 > w_same[i, j]
    _, w_half = correlation(0.5)
    torch.testing.assert_close(w_half[off], torch.ones(48 * 47), atol=TOL.CONVERGED, rtol=0)


def test_sence_is_patchnce_reweighted_and_batch_agnostic():
    torch.manual_seed(2)
    n, dim = 16, 8
    q = l2_normalize(torch.randn(3 * n, dim))
    k = l2_normalize(torch.randn(3 * n, dim))
    # mPA None: CUT's PatchNCE, written out
    loss = sence_loss(q, k, None, n, temperature=0.07)
    qb, kb = q.view(3, n, dim), k.view(3, n, dim)
    logits = torch.bmm(qb, kb.transpose(1, 2)) / 0.07
    pos = logits.diagonal(dim1=1, dim2=2)
    neg = logits.masked_fill(torch.eye(n, dtype=torch.bool), -10.0 / 0.07)
    expected = torch.logsumexp(torch.cat([pos[:, :, None], neg], 2), 2) - pos
    torch.testing.assert_close(loss, expected.reshape(-1), atol=TOL.FP32_LOSS, rtol=TOL.FP32_SUM)
    # uniform plan (mPA 0.5): the same as PatchNCE
    torch.testing.assert_close(sence_loss(q, k, torch.full((3,), 0.5), n), loss, atol=TOL.SENCE_VS_PATCHNCE, rtol=0)
    # per image: a batch of 3 equals three batches of 1 (no mixing, nothing tied to a batch or device count)
    mpa = torch.tensor([0.1, 0.6, 0.95])
    whole = sence_loss(q, k, mpa, n)
    parts = torch.cat([sence_loss(q[i * n:(i + 1) * n], k[i * n:(i + 1) * n], mpa[i:i + 1], n) for i in range(3)])
    torch.testing.assert_close(whole, parts, atol=TOL.FP32_SUM, rtol=TOL.FP32_SUM)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's CUDA autocast must not reach Sinkhorn
        in_autocast = sence_loss(q, k, mpa, n)
    assert in_autocast.dtype == torch.float32 and torch.equal(in_autocast, whole)
    with pytest.raises(ValueError, match="whole number"):
        sence_loss(q[:-1], k[:-1], None, n)


def test_tps_is_zero_on_the_segment_and_positive_off_it():
    a, b = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert float(tps_loss(a, b, torch.full_like(a, 0.3))) == pytest.approx(0.0)
    assert float(tps_loss(a, b, torch.full_like(a, 1.5))) == pytest.approx(1.0)  # |1.5 + 0.5 - 1|


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters())]


def test_tps_moves_the_generator_through_a_frozen_discriminator():
    torch.manual_seed(0)
    model = TPSeNCE(_tiny("lambda_gan=0", "lambda_nce=0", "lambda_tps=1", "init_gain=0.5"))
    x, y = _batch()
    g_before, d_before = _params(model.generator), _params(model.discriminator)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=1e-3)
    fake, idt = model.translate(x, y)
    terms = model.generator_loss(x, y, fake, idt, torch.tensor([0.5, 0.5]), _rngs(2, 1), _rngs(2, 2))
    assert float(terms["tps"].detach()) > 0 and float(terms["gan"]) == 0 and float(terms["nce"]) == 0
    # D's mean scores are reported as diagnostics and take no part in the loss
    with torch.no_grad():
        for name, images in (("score_fake", fake), ("score_clear", x), ("score_rainy", y)):
            assert float(terms[name]) == pytest.approx(float(model.discriminator(images).mean()), abs=TOL.FP32)
            assert not terms[name].requires_grad
    assert float(terms["g"].detach()) == pytest.approx(float(terms["tps"].detach()))
    terms["g"].backward()
    assert all(p.requires_grad for p in model.discriminator.parameters()), "D's flags are restored"
    assert all(p.grad is None for p in model.discriminator.parameters()), "D is frozen in the generator step"
    grads = [p.grad for p in model.generator.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    opt_g.step()
    assert all(_changed(g_before, model.generator)), "every generator parameter moves"
    assert not any(_changed(d_before, model.discriminator))


def test_sence_moves_the_generator_and_the_mlp_head():
    torch.manual_seed(0)
    model = TPSeNCE(_tiny("lambda_gan=0", "lambda_nce=1", "lambda_tps=0", "init_gain=0.5"))
    x, y = _batch(1)
    before = {name: _params(getattr(model, name)) for name in ("generator", "head", "discriminator")}
    opt = torch.optim.Adam(list(model.generator.parameters()) + list(model.head.parameters()), lr=1e-3)
    fake, idt = model.translate(x, y)
    terms = model.generator_loss(x, y, fake, idt, torch.tensor([0.2, 0.9]), _rngs(2, 1), _rngs(2, 2))
    assert float(terms["nce"].detach()) > 0
    terms["g"].backward()
    for name in ("generator", "head"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert all(p.grad is None for p in model.discriminator.parameters())
    opt.step()
    assert all(_changed(before["generator"], model.generator)) and all(_changed(before["head"], model.head))
    assert not any(_changed(before["discriminator"], model.discriminator))


# ---------------------------------------------------------------------------------------------- trainer
def _images(n, height, width, offset):
    images = [(rainy_like(height, width, seed=offset + i) * 255).astype(np.uint8) for i in range(n)]
    labels = [(image[:, :, i % 3] > 128).astype(np.uint8) for i, image in enumerate(images)]
    return images, labels


def _data():
    clear, clear_labels = _images(3, 40, 48, 0)
    rainy, rainy_labels = _images(3, 36, 44, 10)
    return clear, rainy, clear_labels, rainy_labels


# batch 2: 2 steps per epoch, 2 epochs (1 constant + 1 decay)
TRAIN = ["samples_per_epoch=4", "plot_curves=false"]


def test_config_defaults_are_the_papers_and_overrides_are_typed(tmp_path):
    from rainkit.errors import RainkitError
    from rainkit.train.tpsence_config import TPSeNCEConfig

    c = TPSeNCEConfig()
    assert (c.ngf, c.n_blocks, c.ndf, c.n_layers_d, c.num_patches, c.nce_t, c.nce_layers) == (64, 9, 64, 3, 256, 0.07,
                                                                                              [0, 4, 8, 12, 16])
    assert (c.lr, c.beta1, c.beta2, c.lambda_tps, c.ot_iters, c.nce_idt) == (2e-4, 0.5, 0.999, 1.0, 50, True)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_epochs": 3, "nce_layers": [0, 4]}))
    c = load_tpsence_config(path, ["lambda_tps=0.5", "sence=false"])
    assert c.n_epochs == 3 and c.nce_layers == [0, 4] and c.lambda_tps == 0.5 and c.sence is False
    with pytest.raises(RainkitError, match="did you mean"):
        load_tpsence_config(overrides=["lambda_tp=1"])


def test_learning_rate_is_constant_then_linear_decay():
    from rainkit.train.tpsence import lr_at

    c = _tiny("n_epochs=2", "n_epochs_decay=3", "lr=1")
    assert [round(lr_at(c, e), 4) for e in range(5)] == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_resume_is_exact_and_sigterm_checkpoints(tmp_path):
    from rainkit.train.tpsence import train_tpsence

    straight = train_tpsence(_tiny(f"out={tmp_path / 'a'}", *TRAIN), *_data())
    assert straight.global_step == 4 and straight.epoch == 2
    half = train_tpsence(_tiny(f"out={tmp_path / 'b'}", "max_steps=1", *TRAIN), *_data())
    assert half.global_step == 1
    resumed = train_tpsence(_tiny(f"out={tmp_path / 'b'}", *TRAIN), *_data(), resume=True)
    assert resumed.global_step == 4
    assert state_digest(resumed.model) == state_digest(straight.model), \
        "resume must reproduce the straight run bit for bit"

    def terminate_at_step_3(step, batch, batches, values):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # deferred to the end of the step, then a checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_tpsence(_tiny(f"out={tmp_path / 'c'}", *TRAIN), *_data(), on_step=terminate_at_step_3)
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)
    assert (state["global_step"], state["epoch"], state["batch"]) == (3, 1, 1)
    # the generator of the last finished epoch (step 2) is exported and usable
    card = json.loads((tmp_path / "c" / "generator.json").read_text())
    assert (card["epoch"], card["step"]) == (1, 2)
    assert (tmp_path / "c" / "generator.safetensors").is_file()
    after = train_tpsence(_tiny(f"out={tmp_path / 'c'}", *TRAIN), *_data(), resume=True)
    assert after.global_step == 4 and state_digest(after.model) == state_digest(straight.model)


def test_outputs_samples_curves_and_exported_generator(tmp_path):
    from rainkit.hub.weights import sha256_file
    from rainkit.synth.tpsence import load_generator
    from rainkit.train.tpsence import train_tpsence

    result = train_tpsence(_tiny(f"out={tmp_path}", "sample_every=2", "log_every=1", *TRAIN, "plot_curves=true"),
                           *_data())
    for name in ("last.pt", "train.log", "curves.png", "generator.safetensors", "generator.json",
                 "samples/step_0000002.png", "samples/step_0000004.png"):
        assert (tmp_path / name).is_file(), name
    import cv2

    assert cv2.imread(str(tmp_path / "samples/step_0000002.png")).shape == (32, 96, 3)  # clear | generated | rainy
    card = json.loads((tmp_path / "generator.json").read_text())
    assert card["arch"] == "tpsence" and card["sha256"] == sha256_file(tmp_path / "generator.safetensors")
    assert card["arch_kwargs"]["ngf"] == 4 and card["step"] == 4
    generator = load_generator(tmp_path / "generator.safetensors", "cpu", tile=0)
    image = rainy_like(30, 34)
    out = generator.generate(image)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
    with torch.no_grad():
        reference = result.model.generator.eval()(torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect"))
    expected = ((reference[0, :, :30, :34] + 1) / 2).numpy().transpose(1, 2, 0)
    assert out.shape == (30, 34, 3) and np.abs(out - expected).max() < 1e-5


def test_sence_needs_label_maps(tmp_path):
    from rainkit.errors import RainkitError
    from rainkit.train.tpsence import train_tpsence

    clear, rainy, _, _ = _data()
    with pytest.raises(RainkitError, match="label maps"):
        train_tpsence(_tiny(f"out={tmp_path}", *TRAIN), clear, rainy, None, None)
    result = train_tpsence(_tiny(f"out={tmp_path}", "sence=false", "max_steps=1", *TRAIN), clear, rainy, None, None)
    assert result.global_step == 1


def test_samples_are_reproducible_and_label_maps_follow_their_crops():
    from rainkit.train.unpaired_data import UnpairedDataset

    clear, rainy, clear_labels, rainy_labels = _data()
    ones = [np.ones(image.shape[:2], np.uint8) for image in rainy]
    data = UnpairedDataset(clear, rainy, [np.ones_like(c) for c in clear_labels], ones, crop=32, seed=5)
    assert data.sample(1, 0)[2] == 1.0  # same labels everywhere: mPA 1
    data = UnpairedDataset(clear, rainy, clear_labels, [1 - lab for lab in rainy_labels], crop=32, seed=5,
                           load_size=64)
    a, b = data.sample(3, epoch=2), data.sample(3, epoch=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].shape == (32, 32, 3) and data.clear[0].shape[1] == 64  # scaled to load_size wide
    x, y, mpa = data.batch([0, 1], epoch=0)
    assert x.shape == (2, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1 and mpa.shape == (2,)


def test_folders_are_segmented_once_with_a_label_cache(tmp_path):
    import cv2

    from rainkit.train.unpaired_data import prepare_unpaired_data

    for what, offset in (("clear", 0), ("rainy", 10)):
        (tmp_path / what).mkdir()
        for i, image in enumerate(_images(2, 36, 40, offset)[0]):
            cv2.imwrite(str(tmp_path / what / f"{i}.png"), image[:, :, ::-1])

    class CountingSegmenter:
        calls = 0

        def segment(self, rgb):
            CountingSegmenter.calls += 1
            return (rgb[:, :, 0] > 0.5).astype(np.uint8)

    first = prepare_unpaired_data(tmp_path / "clear", tmp_path / "rainy", CountingSegmenter(), tmp_path / "labels")
    again = prepare_unpaired_data(tmp_path / "clear", tmp_path / "rainy", CountingSegmenter(), tmp_path / "labels")
    assert CountingSegmenter.calls == 4 and first.description["clear_images"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(first.clear_labels + first.target_labels,
                                                    again.clear_labels + again.target_labels))


def test_fp16_export_loads_into_fp32(tmp_path):
    from rainkit.hub.checkpoint import read_metadata
    from rainkit.synth.tpsence import load_generator
    from rainkit.train.tpsence import train_tpsence

    result = train_tpsence(_tiny(f"out={tmp_path}", "export_fp16=true", "max_steps=1", *TRAIN), *_data())
    assert read_metadata(tmp_path / "generator.safetensors")["rainkit.dtype"] == "fp16"
    generator = load_generator(tmp_path / "generator.safetensors", "cpu", tile=0)
    assert all(p.dtype == torch.float32 for p in generator.model.parameters())
    image = rainy_like(24, 28)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
    with torch.no_grad():
        reference = ((result.model.generator.eval()(x)[0] + 1) / 2).numpy().transpose(1, 2, 0)
    assert np.abs(generator.generate(image) - reference).max() < 1e-2


DDP_SCRIPT = """
import sys
from rainkit.train.tpsence import train_tpsence
from tests.conftest import state_digest
from tests.test_tpsence import TRAIN, _data, _tiny
result = train_tpsence(_tiny("out=" + sys.argv[1], "max_steps=3", *TRAIN), *_data())
import torch.distributed as dist
assert not dist.is_initialized(), "the trainer joined the process group and must leave it"
print("DIGEST", state_digest(result.model))
"""


def test_two_process_ddp_ranks_stay_in_sync(tmp_path):
    digests = run_two_ranks(DDP_SCRIPT, tmp_path, timeout=180)
    assert digests[0] == digests[1]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["global_step"] == 3 and (tmp_path / "generator.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- generation
def _random_generator(gain=1.0):
    torch.manual_seed(3)
    # A large init gain makes the untrained network sensitive to its statistics: a demanding check.
    return init_weights(ResnetGenerator(ngf=8, n_blocks=2), gain).eval()


def test_tiled_generation_equals_the_whole_image_pass():
    """`tile` forces the single pass: the whole image's output up to float32 rounding (float32 buffers)."""
    from rainkit.synth.tpsence import WeatherGenerator

    model = _random_generator()
    image = rainy_like(75, 98, seed=4)  # not a multiple of 4: padded, then cropped back
    whole = WeatherGenerator(model, torch.device("cpu"), tile=0).generate(image)
    tiler = WeatherGenerator(model, torch.device("cpu"), tile=32)
    steps = []
    tiled = tiler.generate(image, on_tile=lambda done, total: steps.append((done, total)))
    assert tiler.last_plan == "single-pass" and tiler.last_tile == 32
    assert tiler.describe()["plan"] == "single-pass" and tiler.describe()["tile"] == 32
    assert whole.shape == tiled.shape == (75, 98, 3)
    assert np.abs(tiled - whole).max() < TOL.SINGLE_PASS_FP32
    sweeps = 3 + 2 * 2 + 2 + 1  # one per instance norm, then the output
    assert steps == [(i, sweeps * 12) for i in range(1, sweeps * 12 + 1)]  # 76 x 100 padded: 3 x 4 tiles


def test_residual_generator_starts_as_the_identity_learns_a_change_and_tiles_exactly(tmp_path):
    """`residual`: input + change, clamped in eval mode; the change's last convolution is zeroed by `init_generator`, so the
    untrained generator returns its input; the first training step moves the zeroed layer (the gradient reaches the
    others through it from then on);
    the single pass adds the image back in its last sweep; the option travels with the exported file."""
    from rainkit.hub import create_model, load_model
    from rainkit.models.tpsence import init_generator
    from rainkit.synth.tpsence import WeatherGenerator

    torch.manual_seed(0)
    generator = init_generator(ResnetGenerator(ngf=8, n_blocks=2, residual=True))
    x = torch.rand(2, 3, 36, 44) * 2 - 1
    assert torch.equal(generator(x), x)
    with pytest.raises(ValueError, match="as many output channels"):
        ResnetGenerator(output_nc=1, residual=True)

    model = TPSeNCE(_tiny("residual=true", "sence=false"))
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    x, y = _batch()
    fake, idt = model.translate(x, y)
    assert torch.allclose(fake, x) and torch.allclose(idt, y)
    terms = model.generator_loss(x, y, fake, idt, None, _rngs(2, 1), _rngs(2, 2))
    opt = torch.optim.Adam(model.generator.parameters(), lr=1e-3)
    terms["g"].backward()
    opt.step()
    weights = [k for k in before if k.endswith("weight")]
    assert all(not torch.equal(before[k], model.generator.state_dict()[k]) for k in weights[-1:])
    fake, _ = model.translate(x, y)
    assert 0 < (fake - x).abs().max() < 0.5  # no longer the identity

    torch.manual_seed(3)
    random = init_weights(ResnetGenerator(ngf=8, n_blocks=2, residual=True), 1.0).eval()
    # clamped in eval mode only: in training the overshoot of a bright input keeps its gradient
    bright = torch.rand(1, 3, 16, 16) * 0.1 + 0.9
    with torch.no_grad():
        overshoot = bright + random.model(bright)
    assert overshoot.max() > 1.2 and torch.equal(random(bright), overshoot.clamp(-1, 1))
    random.train()
    trained = random(bright)
    assert torch.equal(trained.detach(), overshoot)
    trained.clamp(min=1).sum().backward()
    assert random.model[-2].weight.grad.abs().sum() > 0
    random.zero_grad(set_to_none=True)
    random.eval()
    image = rainy_like(75, 98, seed=4)
    whole = WeatherGenerator(random, torch.device("cpu"), tile=0).generate(image)
    tiled = WeatherGenerator(random, torch.device("cpu"), tile=32).generate(image)
    assert np.abs(tiled - whole).max() < TOL.SINGLE_PASS_FP32
    plain = ResnetGenerator(ngf=8, n_blocks=2)
    plain.load_state_dict(random.state_dict())
    changed = WeatherGenerator(plain.eval(), torch.device("cpu"), tile=0).generate(image)
    # the same layers, plus the input: the residual output is the plain one's tanh added to the image
    assert np.allclose(whole, np.clip(image + (changed * 2 - 1) * 0.5, 0, 1), atol=1e-5)

    from rainkit.hub.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "g.safetensors", random, "tpsence", random.config)
    loaded, _ = load_model("tpsence", str(path))
    assert loaded.residual and torch.equal(loaded(x), random(x))
    assert not create_model("tpsence", "tiny").residual


def test_tone_change_keeps_grey_grey_is_the_rain_imaging_model_and_tiles_exactly(tmp_path):
    """`change="tone"`: the last layer's three channels are grey saturation, gain and offset maps. Identity at
    initialisation; for any maps a grey pixel stays grey (no hue can appear); with saturation 0 it is
    x (1 + g) + o / 2 in [0, 1], the transmission x scene + airlight form; the gradient reaches the zeroed layer in the
    first training step; the single pass equals the whole image; the option travels with the file; and it must
    be residual."""
    from rainkit.hub import load_model
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.models.tpsence import init_generator
    from rainkit.synth.tpsence import WeatherGenerator

    torch.manual_seed(0)
    x = torch.rand(2, 3, 36, 44) * 2 - 1
    identity = init_generator(ResnetGenerator(ngf=8, n_blocks=2, residual=True, change="tone"))(x)
    assert torch.allclose(identity, x, atol=1e-6)  # to rounding: the maps act in [0, 1]
    with pytest.raises(ValueError, match="residual"):
        ResnetGenerator(change="tone")
    with pytest.raises(ValueError, match="change must be"):
        ResnetGenerator(residual=True, change="hue")

    random = init_weights(ResnetGenerator(ngf=8, n_blocks=2, residual=True, change="tone"), 1.0).eval()
    grey = (torch.rand(1, 1, 24, 28) * 1.6 - 0.8).expand(1, 3, 24, 28).contiguous()
    with torch.no_grad():
        out = random(grey)
        maps = random.model(grey)
    assert maps.abs().amax() > 0.3  # the maps do act
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
    light = (x + 1) / 2
    maps = torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] * 0.5, x[:, 1] * 0.3], 1)  # s = 0: gain and offset
    expected = (light * (1 + maps[:, 1:2]) + 0.5 * maps[:, 2:3]) * 2 - 1
    assert torch.allclose(random.apply_change(x, maps), expected, atol=1e-6)
    desaturated = random.apply_change(x, torch.stack([-torch.ones_like(x[:, 0])] + [torch.zeros_like(x[:, 0])] * 2, 1))
    luma = ((light * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)) * 2 - 1
    assert torch.allclose(desaturated, luma.expand_as(x), atol=1e-6)  # s = -1: the luma, grey

    model = TPSeNCE(_tiny("residual=true", "change=tone", "sence=false"))
    xb, yb = _batch()
    fake, idt = model.translate(xb, yb)
    assert torch.allclose(fake, xb, atol=1e-6) and torch.allclose(idt, yb, atol=1e-6)
    model.generator_loss(xb, yb, fake, idt, None, _rngs(2, 1), _rngs(2, 2))["g"].backward()
    assert model.generator.model[-2].weight.grad.abs().sum() > 0
    with pytest.raises(Exception, match="change must be"):
        _tiny("change=tone")

    image = rainy_like(75, 98, seed=4)
    whole = WeatherGenerator(random, torch.device("cpu"), tile=0).generate(image)
    tiled = WeatherGenerator(random, torch.device("cpu"), tile=32).generate(image)
    assert np.abs(tiled - whole).max() < TOL.SINGLE_PASS_FP32
    path = save_checkpoint(tmp_path / "g.safetensors", random, "tpsence", random.config)
    loaded, _ = load_model("tpsence", str(path))
    assert loaded.change == "tone" and torch.equal(loaded(x), random(x))


def test_automatic_plan_is_the_single_pass_on_the_cpu_while_it_fits(monkeypatch):
    """The generator of ngf 8 on 1200 x 1600: whole 314 B/px = 603 MB; the single pass's float32 buffers 96 B/px =
    184 MB at their peak, and 23 MB per thread (2 here)."""
    from rainkit.errors import RainkitError
    from rainkit.synth.tpsence import WeatherGenerator

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)

    def plan(budget, device="cpu", **options):
        generator = WeatherGenerator(_random_generator(), device, memory_budget=budget, **options)
        return generator.choose_plan(1200, 1600)

    assert plan(10**12) == ("single-pass", 256)  # measured faster than the whole image on the CPU
    assert plan(400 << 20) == ("single-pass", 256)
    assert plan(10**12, tile=0) == ("whole", 0)
    assert plan(100 << 20, tile=300) == ("single-pass", 300)  # a forced tile is not checked against the budget
    assert plan(10**12, tile=2000) == ("whole", 0)
    small = WeatherGenerator(_random_generator(), "cpu", memory_budget=10**12)
    assert small.choose_plan(200, 248) == ("whole", 0)  # one tile would cover it
    # 100 MB: the tiles (46 MB) and the float32 output (23 MB) fit, the other maps go to a temporary file
    spilling = WeatherGenerator(_random_generator(), "cpu", memory_budget=100 << 20)
    assert spilling.choose_plan(1200, 1600) == ("single-pass", 256) and spilling.last_spill[1] > 0
    with pytest.raises(RainkitError, match="a 1600x1200 image needs 0.21 GiB to generate in tiles, more than the "
                                           "0.05 GiB budget"):
        plan(50 << 20)


def test_tile_local_statistics_would_show_seams():
    """The check above is sensitive: normalising each tile with its own statistics is far off."""
    from rainkit.synth.tpsence import ALIGN, pad_to_multiple
    from rainkit.tiling import tile_cores

    model = _random_generator()
    x = pad_to_multiple(torch.from_numpy(rainy_like(75, 98, seed=4).transpose(2, 0, 1).copy())[None] * 2 - 1)
    height, width = x.shape[2:]
    with torch.no_grad():
        whole = model(x)
        naive = torch.zeros_like(whole)
        for y0, y1, x0, x1 in tile_cores(height, width, 32, ALIGN):
            iy0, iy1, ix0, ix1 = max(0, y0 - 40), min(height, y1 + 40), max(0, x0 - 40), min(width, x1 + 40)
            naive[:, :, y0:y1, x0:x1] = model(x[:, :, iy0:iy1, ix0:ix1])[:, :, y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]
    assert float((naive - whole).abs().max()) > 0.1


def test_generation_never_resizes():
    from rainkit.synth.tpsence import WeatherGenerator

    model = _random_generator(0.02)
    image = rainy_like(37, 53, seed=5)
    out = WeatherGenerator(model, torch.device("cpu"), tile=0).generate(image)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
    with torch.no_grad():
        reference = model(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect"))[0, :, :37, :53]
    assert out.shape == (37, 53, 3)
    np.testing.assert_allclose(out, ((reference + 1) / 2).numpy().transpose(1, 2, 0), atol=TOL.FP32)
