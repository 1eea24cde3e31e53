"""Tiled inference: planning, seams, the statistics recorders, the single pass (strided buffers, borders, moments),
automatic tile size, bf16; the engine base."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rainkit.derain.engine import Derainer
from rainkit.errors import RainkitError
from rainkit.hub import create_model
from rainkit.models.recurrent import PooledStats
from rainkit.models.tpsence import ResnetGenerator, init_weights
from rainkit.tiling import (Sweep, TileBox, maps_in_memory, plan_single_pass, plan_tiles, run_single_pass, run_tiled,
                            tile_cores)
from tests.conftest import rainy_like
import tests.tolerances as TOL


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _model(arch: str, **settings):
    torch.manual_seed(0)
    return create_model(arch, "tiny", **settings).eval().to(memory_format=torch.channels_last)


def _derainer(arch: str, tile, halo=32, budget=None, precision="fp32", tiling="auto") -> Derainer:
    return Derainer(_model(arch), "cpu", arch=arch, precision=precision, tile=tile, halo=halo, memory_budget=budget,
                    tiling=tiling)


def test_cores_partition_the_image():
    boxes = plan_tiles(100, 130, 48, halo=10, blend=4)
    cover = np.zeros((100, 130), int)
    for box in boxes:
        y0, y1, x0, x1 = box.core
        cover[y0:y1, x0:x1] += 1
        iy0, iy1, ix0, ix1 = box.inp
        assert iy0 <= box.out[0] <= y0 and y1 <= box.out[1] <= iy1
        assert ix0 <= box.out[2] <= x0 and x1 <= box.out[3] <= ix1
    assert (cover == 1).all()


def test_single_pass_tiles_partition_the_image_on_the_stride():
    cores = tile_cores(72, 92, 20, align=4)
    cover = np.zeros((72, 92), int)
    for y0, y1, x0, x1 in cores:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all() and len(cores) == 4 * 5
    assert all(edge % 4 == 0 for core in cores for edge in core)


@pytest.mark.parametrize("tiling", ["single-pass", "two-pass"])
@pytest.mark.parametrize("arch", ["sapnet", "prenet"])
def test_tiled_output_matches_whole_image(arch, tiling):
    image = rainy_like(150, 170)
    whole = _derainer(arch, 0).derain(image)
    tiler = _derainer(arch, 48, tiling=tiling)
    steps = []
    tiled = tiler.derain(image, on_tile=lambda done, total: steps.append((done, total)))
    assert tiler.last_plan == tiling and tiler.last_tile == 48
    assert _psnr(tiled, whole) > TOL.TILED_VS_WHOLE_DB
    if tiling == "single-pass":
        sweeps = plan_single_pass(tiler.model.tile_sweeps, torch.float16).sweeps
    else:
        sweeps = 2 if arch == "sapnet" else 1  # a record sweep for SAPNet's CRA statistics, then the render sweep
    assert steps == [(i, sweeps * 16) for i in range(1, sweeps * 16 + 1)]  # 4 x 4 tiles per sweep
    if tiling == "single-pass":
        assert np.abs(tiled - whole).max() < TOL.SINGLE_PASS_FP16_STORAGE


def _image_tensor(height: int, width: int) -> torch.Tensor:
    return torch.from_numpy(rainy_like(height, width).transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("arch,settings", [("sapnet", {}), ("sapnet", {"dilations": (1, 2, 4)}), ("prenet", {})])
def test_single_pass_equals_the_whole_image_forward(arch, settings):
    """An odd size in tiles smaller than the image both ways (4 x 5 of 24 px, the halos up to 4 px): the forward's
    output up to float32 rounding with float32 buffers, bit for bit on one or two threads, and close with fp16 ones."""
    model = _model(arch, **settings)
    x = _image_tensor(77, 103)
    with torch.inference_mode():
        whole = model(x.contiguous(memory_format=torch.channels_last))
        one = run_single_pass(model.tile_sweeps, {"image": x}, tile=24, workers=1)
        two = run_single_pass(model.tile_sweeps, {"image": x}, tile=24, workers=2)
        half = run_single_pass(model.tile_sweeps, {"image": x}, tile=24, storage=torch.float16)
    assert (one - whole).abs().max() < TOL.SINGLE_PASS_FP32
    assert torch.equal(one, two)  # the channel sums are added in tile order, whichever thread ran a tile
    assert (half - whole).abs().max() < TOL.SINGLE_PASS_FP16_STORAGE
    assert not torch.equal(half, one)  # the fp16 buffers really were fp16


class _Strided:
    """A tiny network over strides 1, 2, 4, 2, 1 that pads in all three ways (reflection, zeros, replication) and
    normalises with whole-map statistics, run whole (`forward`) and as a single-pass program (`sweeps`) from the
    same pieces."""

    def __init__(self):
        torch.manual_seed(0)
        self.w = [torch.randn(4, 3, 3, 3) * 0.4, torch.randn(6, 4, 3, 3) * 0.3, torch.randn(4, 6, 3, 3) * 0.3,
                  torch.randn(3, 4, 3, 3) * 0.3]
        self.blur = (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0]) / 16).repeat(4, 1, 1, 1)

    def down(self, x):  # stride 1 -> 2: reflect-padded 3x3, then a reflect-padded stride-2 blur (reach 1 + 1 px)
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.w[0])
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.blur, stride=2, groups=4)

    def down2(self, x):  # 2 -> 4: a zero-padded stride-2 3x3 (reach 1 px at stride 2)
        return F.conv2d(x.relu(), self.w[1], stride=2, padding=1)

    def up(self, x):  # 4 -> 2: nearest up-sampling, then a replicate-padded 3x3 (reach 1 px at stride 2)
        x = F.interpolate(x.relu(), scale_factor=2, mode="nearest")
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.w[2])

    def up2(self, x, image):  # 2 -> 1, plus the image read again
        x = F.interpolate(x.relu(), scale_factor=2, mode="nearest")
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.w[3]) + image

    @staticmethod
    def norm(x, statistics):
        mean, var = statistics
        return (x - mean[:, :, None, None]) * torch.rsqrt(var[:, :, None, None] + 1e-5)

    def forward(self, image):
        x = F.instance_norm(self.down(image))
        x = F.instance_norm(self.down2(x))
        return self.up2(F.instance_norm(self.up(x)), image)

    def sweeps(self):
        stats = yield Sweep(("image",), {"a": 4}, lambda t: {"a": self.down(t["image"])}, halo=2, moments=("a",),
                            strides={"a": 2})
        a = stats["a"]
        # halo 2 is rounded up to 4, the stride of b
        stats = yield Sweep(("a",), {"b": 6}, lambda t: {"b": self.down2(self.norm(t["a"], a))}, halo=2,
                            moments=("b",), strides={"b": 4}, frees=("a",))
        b = stats["b"]
        stats = yield Sweep(("b",), {"c": 4}, lambda t: {"c": self.up(self.norm(t["b"], b))}, halo=2, moments=("c",),
                            strides={"c": 2}, frees=("b",))
        c = stats["c"]
        yield Sweep(("c", "image"), {"out": 3}, lambda t: {"out": self.up2(self.norm(t["c"], c), t["image"])}, halo=1,
                    exact=("out",), frees=("c",))
        return "out"


def test_single_pass_runs_strided_buffers_and_pads_at_the_border_as_the_whole_forward():
    """Buffers at 1/2 and 1/4 resolution, reflection, zero and replication padding at the image border, instance
    norms from the pooled moments: the whole forward up to float32 rounding, on a 70x90 image padded to multiples of
    4 in 20 px tiles that do not divide it."""
    net = _Strided()
    x = F.pad(_image_tensor(70, 90), (0, 2, 0, 2), mode="reflect")
    whole = net.forward(x)
    steps = []
    one = run_single_pass(net.sweeps, {"image": x}, tile=20, workers=1, on_tile=lambda done, total: steps.append(total))
    two = run_single_pass(net.sweeps, {"image": x}, tile=20, workers=2)
    assert (one - whole).abs().max() < TOL.SINGLE_PASS_FP32
    assert torch.equal(one, two)
    assert steps == [4 * 4 * 5] * 4 * 4 * 5  # 4 sweeps of 4 x 5 tiles
    plan = plan_single_pass(net.sweeps, torch.float16)
    assert plan.stride == 4 and plan.halo == 4
    # a: 4 channels at 1/2 (1 per pixel), b: 6 at 1/4 (3/8); c: 4 at 1/2; out: 3 float32
    assert plan.bytes_per_pixel == max((4 / 4 + 6 / 16) * 2, (6 / 16 + 4 / 4) * 2, 4 / 4 * 2 + 3 * 4)
    with pytest.raises(ValueError, match="multiples of 4, got 90x70"):
        run_single_pass(net.sweeps, {"image": x[:, :, :70, :90]}, tile=20)


def test_single_pass_moments_keep_their_precision_far_from_zero():
    """A map at 1000 + 0.01 noise: float32 sums of x^2 alone would lose the variance entirely."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 40, 52)
    seen = {}

    def program():
        stats = yield Sweep(("image",), {"m": 2}, lambda t: {"m": t["image"] * 0.01 + 1000}, halo=0, moments=("m",))
        seen["mean"], seen["var"] = stats["m"]
        yield Sweep(("m",), {"out": 2}, lambda t: {"out": t["m"]}, halo=0, exact=("out",))
        return "out"

    values = run_single_pass(program, {"image": x}, tile=16).double()
    torch.testing.assert_close(seen["mean"].double(), values.mean((2, 3)), rtol=0, atol=1e-4)
    torch.testing.assert_close(seen["var"].double(), values.var((2, 3), unbiased=False), rtol=1e-3, atol=0)


@pytest.mark.parametrize("settings", [{"n_blocks": 1}, {"n_blocks": 2},
                                      {"n_blocks": 2, "antialias": False, "antialias_up": False}])
def test_generator_single_pass_equals_the_whole_image_forward(settings):
    """TPSeNCE's generator (ngf 4, random weights of gain 1: sensitive to its statistics) on a 70x90 image padded to
    72x92, in tiles of 20 and 36 px that do not divide it: the forward up to float32 rounding with float32 buffers,
    bit for bit on one or two threads; with fp16 buffers the rounding of the stored maps (tests/tolerances.py)."""
    torch.manual_seed(0)
    model = init_weights(ResnetGenerator(ngf=4, **settings), 1.0).eval()
    x = F.pad(_image_tensor(70, 90) * 2 - 1, (0, 2, 0, 2), mode="reflect")
    with torch.inference_mode():
        whole = model(x)
        for tile in (20, 36):
            one = run_single_pass(model.tile_sweeps, {"image": x}, tile=tile, workers=1)
            two = run_single_pass(model.tile_sweeps, {"image": x}, tile=tile, workers=2)
            half = run_single_pass(model.tile_sweeps, {"image": x}, tile=tile, storage=torch.float16)
            assert (one - whole).abs().max() < TOL.SINGLE_PASS_FP32
            assert torch.equal(one, two)
            assert (half - whole).abs().max() < TOL.GENERATOR_FP16_STORAGE


def test_single_pass_plan_counts_sweeps_halos_and_buffers():
    sapnet = plan_single_pass(_model("sapnet", dilations=(1, 2, 4)).tile_sweeps, torch.float16)  # 2 stages, width 8
    assert sapnet.sweeps == 2 * (1 + 2 * 3 + 1) and sapnet.halo == 4  # LSTM, 2 per block, output; the largest dilation
    # c, h, the block before's input and conv2 output, this block's input and conv1 output (fp16); the estimate (fp32)
    assert sapnet.bytes_per_pixel == 6 * 8 * 2 + 3 * 4
    prenet = plan_single_pass(_model("prenet").tile_sweeps, torch.float32)  # 2 stages, 2 blocks of dilation 1
    assert prenet.sweeps == 2 * 2 and prenet.halo == 1 + 2 * 2  # LSTM, then the blocks and the output convolution
    assert prenet.bytes_per_pixel == 3 * 8 * 4 + 3 * 4  # c and the old and new h; the estimate
    generator = plan_single_pass(ResnetGenerator(ngf=4, n_blocks=2).tile_sweeps, torch.float32)
    # one sweep per instance norm (3 + 2 per block + 2) and the output sweep; the trunk at 1/4 resolution
    assert generator.sweeps == 3 + 2 * 2 + 2 + 1 and generator.stride == 4
    # the largest halo: the second down-sampling's blur (1 px at 1/2) and the first block's 3x3 (1 px at 1/4),
    # 6 px rounded up to 8; at the peak the first two norms' inputs at full resolution, 4 + 8 channels
    assert generator.halo == 8 and generator.bytes_per_pixel == (4 + 8) * 4


def test_spilled_maps_are_the_least_used_and_change_no_bit(tmp_path):
    """Maps past the memory given live in an unlinked file: the output is the all-in-memory single pass's, bit for
    bit (SAPNet, and TPSeNCE's generator with maps at 1/2 and 1/4 resolution), and no file is ever seen."""
    plan = plan_single_pass(_model("sapnet").tile_sweeps, torch.float16)  # width 8, 2 stages
    assert plan.accesses["y1"] == plan.accesses["y2"] == 2 * 2 * 2  # 2 sweeps a block, 2 blocks, 2 stages
    assert plan.accesses["c"] == 2 and plan.accesses["h0"] == 4 and plan.exact == {"estimate"}
    pixels = 100 * 100
    # at the peak c, h, the second block's input and both convolutions' outputs: 5 maps of 8 fp16 channels
    assert maps_in_memory(plan, pixels, 0) == (frozenset({"estimate"}), pixels * 5 * 8 * 2)
    kept, spilled = maps_in_memory(plan, pixels, pixels * (3 * 4 + 2 * 8 * 2))
    assert kept == {"estimate", "y1", "y2"} and spilled == pixels * 3 * 8 * 2  # c, h and the block input
    assert maps_in_memory(plan, pixels, 10**9) == (frozenset(plan.map_bytes), 0)

    seen = []
    generator = init_weights(ResnetGenerator(ngf=4, n_blocks=2), 1.0).eval()
    cases = [(_model("sapnet").tile_sweeps, _image_tensor(90, 110), torch.float16, 32),
             (generator.tile_sweeps, F.pad(_image_tensor(70, 90) * 2 - 1, (0, 2, 0, 2), mode="reflect"),
              torch.float32, 20)]
    with torch.inference_mode():
        for program, x, storage, tile in cases:
            plan = plan_single_pass(program, storage)
            memory = run_single_pass(program, {"image": x}, tile=tile, storage=storage, workers=2)
            for allowed in (0, int(plan.bytes_per_pixel * x.shape[2] * x.shape[3] / 2)):
                kept, spilled = maps_in_memory(plan, x.shape[2] * x.shape[3], allowed)
                assert spilled > 0
                out = run_single_pass(program, {"image": x}, tile=tile, storage=storage, workers=2, in_memory=kept,
                                      spill_dir=str(tmp_path), on_tile=lambda *_: seen.append(len(list(tmp_path.iterdir()))))
                assert torch.equal(out, memory)
    assert seen and set(seen) == {0}


def test_a_budget_the_maps_do_not_fit_spills_them_and_says_so(tmp_path, monkeypatch):
    import cv2

    from rainkit.derain import derain_files, plan_jobs

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the tiles' memory counts one tile per thread
    image = rainy_like(160, 200)
    in_memory = Derainer(_model("sapnet"), "cpu", arch="sapnet", tiling="single-pass", tile=64)
    # the maps take 92 B/px (2.9 MB at the peak), two threads' tiles 3.6 MB, the estimate (12 B/px) 0.4 MB: 1.4 MB
    # are left for maps, y1 and y2 (16 B/px each)
    spilling = Derainer(_model("sapnet"), "cpu", arch="sapnet", tile=64, memory_budget=5_000_000)
    assert spilling.choose_plan(160, 200) == ("single-pass", 64)
    kept, spilled = spilling.last_spill
    assert kept == {"estimate", "y1", "y2"} and spilled == 160 * 200 * 3 * 16
    assert np.array_equal(spilling.derain(image), in_memory.derain(image))
    photo = tmp_path / "rainy.png"
    cv2.imwrite(str(photo), (image * 255).astype(np.uint8))
    plans = []
    result = derain_files(spilling, plan_jobs([str(photo)], tmp_path / "out", fmt="png"),
                          on_tile=lambda done, total, plan: plans.append(plan))
    assert result.ok and set(plans) == {"tiles of 64 px, single pass, 1.5 MiB of maps in a temporary file"}


def test_no_room_for_spilled_maps_falls_back_to_two_passes(monkeypatch):
    import shutil
    from collections import namedtuple

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))  # 1 MiB free
    derainer = Derainer(_model("sapnet"), "cpu", arch="sapnet", tile=64, memory_budget=5_000_000)
    assert derainer.choose_plan(160, 200)[0] == "two-pass"


def test_automatic_plan_is_whole_then_single_pass_then_two_passes(monkeypatch):
    # The tiny SAPNet on 1200 x 1600: whole 384 B/px = 737 MB, single pass 92 B/px = 177 MB and 26 MB per thread.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    def plan(budget, **options):
        return Derainer(_model("sapnet"), "cpu", arch="sapnet", memory_budget=budget, **options).choose_plan(1200, 1600)

    assert plan(10**12) == ("whole", 0)
    assert plan(400 << 20) == ("single-pass", 512)  # the maps (177 MB) and 512 px tiles fit in memory
    assert plan(300 << 20) == ("single-pass", 256)  # 512 px tiles would not leave room for the maps; 256 px do
    # 100 MB: the tiles (52 MB) and the estimate (23 MB) fit, the other maps go to a temporary file
    assert plan(100 << 20) == ("single-pass", 256)
    kind, tile = plan(60 << 20)
    assert kind == "two-pass" and 64 <= tile < 1200
    assert plan(10**12, tiling="two-pass") == ("whole", 0)
    assert plan(400 << 20, tiling="two-pass")[0] == "two-pass"
    assert plan(100 << 20, tiling="single-pass") == ("single-pass", 512)
    assert plan(10**12, tile=300) == ("single-pass", 300)
    assert plan(10**12, tile=0) == ("whole", 0)
    big = Derainer(_model("sapnet"), "cpu", arch="sapnet", memory_budget=10**12)
    assert big.choose_plan(1500, 2000) == ("single-pass", 512)  # past 2 MP a single pass even where whole fits
    with pytest.raises(RainkitError, match="tiling: 'three-pass' is not one of auto, single-pass, two-pass"):
        Derainer(_model("sapnet"), "cpu", tiling="three-pass")


def test_global_pooling_is_what_makes_small_tiles_exact():
    derainer = _derainer("sapnet", 0)
    x = torch.from_numpy(rainy_like(150, 170).transpose(2, 0, 1).copy())[None]
    whole = derainer.derain_tensor(x)[0].numpy()
    steps = []
    local = run_tiled(derainer.forward_tile, x, tile=40, halo=32, blend=16)[0].numpy()
    exact = run_tiled(derainer.forward_tile, x, tile=40, halo=32, blend=16, stats=PooledStats(),
                      on_tile=lambda done, total: steps.append((done, total)))[0].numpy()
    assert _psnr(exact, whole) > _psnr(local, whole) + 20
    assert steps == [(i, 2 * 20) for i in range(1, 41)]  # 4 x 5 tiles: a record sweep, then the render sweep


def test_tile_stats_record_over_the_core():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 24)
    box = TileBox(core=(8, 16, 4, 12), out=(8, 16, 4, 12), inp=(4, 20, 0, 24))  # core rows 4:12, cols 4:12 of the input
    stats = PooledStats()
    stats.begin_tile(box)
    stats.record(0, x)
    stats.fix()
    torch.testing.assert_close(stats.mean[0], x[:, :, 4:12, 4:12].mean((2, 3)))
    assert stats.is_fixed(0) and not stats.is_fixed(1)


def test_pooled_stats_pool_to_the_fixed_means_in_call_order():
    stats = PooledStats()
    a, b = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    stats.start()
    torch.testing.assert_close(stats.pool(a), a.mean((2, 3)))  # not fixed yet: the tensor's own mean
    stats.pool(b)
    stats.fix()
    stats.start()
    other = torch.rand(1, 4, 6, 6)
    torch.testing.assert_close(stats.pool(other), a.mean((2, 3)))  # fixed: layer 0's recorded mean
    torch.testing.assert_close(stats.pool(other), b.mean((2, 3)))


def test_automatic_tile_follows_the_memory_budget():
    derainer = _derainer("sapnet", None, halo=16, budget=2_000_000)
    tile = derainer.choose_tile(600, 800)
    assert 64 <= tile < 600
    assert _derainer("sapnet", None, budget=10**12).choose_tile(600, 800) == 0
    assert _derainer("sapnet", 0).choose_tile(600, 800) == 0
    assert _derainer("sapnet", 5000).choose_tile(600, 800) == 0  # a tile larger than the image is no tiling


def test_batch_progress_and_sidecar_name_the_plan(tmp_path):
    import json

    import cv2

    from rainkit.derain import derain_files, plan_jobs

    photo = tmp_path / "rainy.png"
    cv2.imwrite(str(photo), (rainy_like(150, 170) * 255).astype(np.uint8))
    plans = []
    for tiling in ("single-pass", "two-pass"):
        jobs = plan_jobs([str(photo)], tmp_path / tiling, fmt="png")
        result = derain_files(_derainer("sapnet", 48, tiling=tiling), jobs,
                              on_tile=lambda done, total, plan: plans.append(plan))
        assert result.ok
        sidecar = json.loads((tmp_path / tiling / "rainy.png.json").read_text())
        assert sidecar["plan"] == tiling and sidecar["tile"] == 48 and sidecar["tiling"] == tiling
        assert sidecar["halo"] == (32 if tiling == "two-pass" else 0)
    assert set(plans) == {"tiles of 48 px, single pass", "tiles of 48 px, 2 passes"}


def test_large_image_tiles_and_reports_progress():
    derainer = _derainer("prenet", None, halo=16, budget=3_000_000)
    steps = []
    out = derainer.derain(rainy_like(300, 420), on_tile=lambda done, total: steps.append((done, total)))
    assert out.shape == (300, 420, 3) and derainer.last_tile > 0
    assert steps and steps[-1][0] == steps[-1][1]


@pytest.mark.parametrize("arch", ["sapnet", "prenet"])
def test_cpu_bf16_is_close_to_fp32_and_tiles_like_fp32(arch):
    """bf16 tiles as fp32 does, and stays close to fp32 (tolerances and measured values: tests/tolerances.py)."""
    image = rainy_like(150, 170)
    fp32 = _derainer(arch, 0).derain(image)
    whole = _derainer(arch, 0, precision="bf16").derain(image)
    tiler = _derainer(arch, 48, precision="bf16")
    tiled = tiler.derain(image)
    assert tiler.last_plan == "single-pass"
    assert _psnr(tiled, whole) > TOL.TILED_VS_WHOLE_DB
    assert _psnr(whole, fp32) > TOL.BF16_VS_FP32_DB and _psnr(tiled, fp32) > TOL.BF16_VS_FP32_DB
    assert np.abs(whole - fp32).max() < TOL.BF16_MAX_ABS and np.abs(tiled - fp32).max() < TOL.BF16_MAX_ABS
    assert not np.array_equal(whole, fp32)  # bf16 really ran


def test_engines_share_device_precision_and_describe():
    from rainkit.errors import DeviceError
    from rainkit.models.espnet import Segmenter
    from rainkit.synth.tpsence import WeatherGenerator

    derainer = _derainer("prenet", None, precision="bf16")
    assert derainer.describe() == {"model": "prenet", "weights": None, "weights_sha256": None, "device": "cpu",
                                   "precision": "bf16", "tiling": "auto"}
    assert derainer.num_params == sum(p.numel() for p in derainer.model.parameters())
    generator = WeatherGenerator(create_model("tpsence", "tiny").eval(), "cpu", work_width=64)
    assert generator.describe()["model"] == "tpsence" and generator.describe()["work_width"] == 64
    segmenter = Segmenter(create_model("espnet", "tiny"), "cpu", 320)
    assert segmenter.describe() == {"model": "espnet", "weights": None, "weights_sha256": None, "device": "cpu",
                                    "precision": "fp32", "width": 320}
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        _derainer("prenet", 0, precision="fp16")
    with pytest.raises(RainkitError, match="tile: must be 0"):
        _derainer("prenet", -8)
    with pytest.raises(RainkitError, match="work width must be 0"):
        WeatherGenerator(create_model("tpsence", "tiny"), "cpu", work_width=-1)


def test_loaded_engine_records_its_weights(tiny_sapnet_file, tmp_path):
    from rainkit.derain import load_derainer
    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.hub.weights import sha256_file

    derainer = load_derainer("sapnet", str(tiny_sapnet_file), device="cpu")
    assert derainer.describe()["weights"] == str(tiny_sapnet_file)
    assert derainer.weights_sha256 == sha256_file(tiny_sapnet_file)
    assert derainer.model.conv0[0].weight.is_contiguous(memory_format=torch.channels_last)  # the CPU layout
    generator = save_checkpoint(tmp_path / "g.safetensors", create_model("tpsence", "tiny"), "tpsence",
                                {"ngf": 8, "n_blocks": 2})
    with pytest.raises(RainkitError, match="'tpsence' is not a deraining network"):
        Derainer.load("tpsence", str(generator), device="cpu")
