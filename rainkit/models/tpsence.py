"""TPSeNCE networks (Zheng et al., WACV 2024), in the CUT framework (Park et al., ECCV 2020).

* `ResnetGenerator`: reflect pad 3 + 7x7 convolution (ngf), two down-samplings (3x3 convolution,
  instance norm, ReLU, then an anti-aliasing blur-pool: reflect pad 1 and a stride-2 depthwise
  [1, 2, 1] x [1, 2, 1] / 16 filter), `n_blocks` residual blocks at 4 ngf channels (reflect pad,
  3x3, IN, ReLU, reflect pad, 3x3, IN, plus the input), two up-samplings (blur-upsample: replicate
  pad 1 and a stride-2 depthwise transposed [1, 3, 3, 1] x [1, 3, 3, 1] / 16 x 4 filter, then a
  3x3 convolution, IN, ReLU), reflect pad 3 + 7x7 convolution to 3 channels and tanh. Inputs and
  outputs are in [-1, 1]. Instance norm has no affine parameters and convolutions carry biases,
  as in CUT's `--normG instance`.
  `residual=True` (off by default; a deviation from CUT and TPSeNCE, for short training runs) makes the
  output the input plus that tanh, with the last convolution zeroed at initialisation (`init_generator`): the
  untrained generator is the identity, so training starts from the clear photo and learns only the weather's
  change, instead of first learning to reproduce the photo. The sum is clamped to [-1, 1] in eval mode (every
  inference path) but not in training mode: a clamp has no gradient wherever input + change leaves the range, so
  no loss could see or correct the change there (a run clamped in training reached +0.84 on average over the
  values above 0.8, where it is clipped away); unclamped, D and the NCE features see the overshoot.
  `change="tone"` (with `residual=True`; also a deviation) reads the three tanh channels as per-pixel grey maps,
  not as an RGB change: a saturation change `s`, a gain `g` on light and a grey offset `o`, with x in [0, 1] and
  Y its luma (BT.601), out = (Y + (1 + s)(x - Y))(1 + g) + o/2 (then back to [-1, 1]). That is the form of the
  heavy-rain imaging model, transmission x scene + airlight + streaks (Li et al., CVPR 2019), with a grey
  airlight and a saturation term: darkening, veils, streaks, wet sheen and washed-out colour are all in reach,
  and a hue shift or a colour blotch is not (a narrow RGB-change generator trained on 2 CPU cores made both).
* `PatchDiscriminator`: the 70x70 PatchGAN (4x4 convolutions, LeakyReLU 0.2, instance norm,
  anti-aliased stride-2 steps as in CUT), one score per overlapping patch.
* `PatchSampleMLP`: CUT's `PatchSampleF` (`--netF mlp_sample`): for every NCE layer, the features
  at given positions go through Linear-ReLU-Linear to `nc` (256) channels and are L2-normalised.
  CUT creates the MLPs lazily on the first forward; here they are built eagerly from the
  generator's known channel counts (`ResnetGenerator.layer_channels`).

The generator keeps CUT's flat `model` sequence, so NCE layer indices mean what they mean in CUT
(0: the reflect-padded input, 4: the first down-sampling convolution, 8: the second, 12 and 16:
the outputs of the 1st and 5th residual blocks), and the parameter names (`model.1.weight`, ...,
`model.12.conv_block.1.weight`) match CUT/TPSeNCE checkpoints of `netG`.

The instance-norm layers are plain `nn.InstanceNorm2d` (no affine parameters, no running
statistics). To tile large images, `ResnetGenerator.tile_sweeps` gives the generator as a
single-pass program (`rainkit.tiling.run_single_pass`): the same modules, cut at every instance
norm, each normalising with the whole image's statistics (see `rainkit.synth.tpsence`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rainkit.registry import register_arch
from rainkit.tiling import Sweep, SweepProgram


CHANGES = ("rgb", "tone")
"""What a residual generator's last layer gives: an RGB change added to the input, or tone maps."""
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def binomial_filter(size: int) -> torch.Tensor:
    """The 2-D binomial filter of CUT's anti-aliasing (size 3: [1,2,1], size 4: [1,3,3,1]), summing to 1."""
    rows = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}
    a = torch.tensor(rows[size])
    filt = a[:, None] * a[None, :]
    return filt / filt.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 down-sampling (CUT's `Downsample`): reflect pad 1, depthwise 3x3 binomial, stride 2."""

    def __init__(self, channels: int, size: int = 3):
        super().__init__()
        self.pad = ((size - 1) // 2, size // 2, (size - 1) // 2, size // 2)
        # Persistent, as in CUT, so that official netG/netD checkpoints load strictly.
        self.register_buffer("filt", binomial_filter(size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, self.pad, mode="reflect"), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Anti-aliased 2x up-sampling (CUT's `Upsample`): replicate pad 1, depthwise transposed 4x4 binomial x 4."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.size = size
        self.register_buffer("filt", (binomial_filter(size) * 4.0)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        padding = 1 + (self.size - 1) // 2
        out = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt.to(x.dtype), stride=2,
                                 padding=padding, groups=x.shape[1])[:, :, 1:, 1:]
        return out if self.size % 2 else out[:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CUT's ResNet generator (`resnet_9blocks`, instance norm, anti-aliased), inputs/outputs in [-1, 1]."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 antialias: bool = True, antialias_up: bool = True, residual: bool = False, change: str = "rgb"):
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError("ngf must be positive and n_blocks non-negative")
        if residual and input_nc != output_nc:
            raise ValueError("a residual generator needs as many output channels as input channels")
        if change not in CHANGES:
            raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
        if change == "tone" and not (residual and input_nc == output_nc == 3):
            raise ValueError("change='tone' needs a residual generator with 3 input and output channels")
        self.residual = bool(residual)
        self.change = change
        self.config = dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks,
                           antialias=antialias, antialias_up=antialias_up, residual=self.residual, change=change)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            cin, cout = ngf * 2 ** i, ngf * 2 ** (i + 1)
            if antialias:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(True),
                           BlurDownsample(cout)]
            else:
                layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            cin, cout = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
            if antialias_up:
                layers += [BlurUpsample(cin), nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout),
                           nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                           nn.InstanceNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if not self.residual:
            return out
        out = self.apply_change(x, out)
        return out if self.training else out.clamp(-1.0, 1.0)  # why only in eval mode: the module docstring

    def apply_change(self, x: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """A residual generator's output before the eval-mode clamp: the input with the last layer's tanh
        `change` applied, as an RGB change or as tone maps (`change`; the module docstring)."""
        if self.change == "rgb":
            return x + change
        light = (x + 1.0) * 0.5
        luma = (light * _LUMA.to(light)).sum(1, keepdim=True)
        saturation, gain, offset = change[:, 0:1], change[:, 1:2], change[:, 2:3]
        toned = (luma + (1.0 + saturation) * (light - luma)) * (1.0 + gain) + 0.5 * offset
        return toned * 2.0 - 1.0

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of `self.model[i]` for i in `layers` (CUT's `encode_only`); stops at the last one."""
        wanted = sorted(set(int(i) for i in layers))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.model):
            raise ValueError(f"NCE layers must lie in 0..{len(self.model) - 1}, got {list(layers)}")
        found: dict[int, torch.Tensor] = {}
        feat = x
        for index, layer in enumerate(self.model):
            feat = layer(feat)
            if index in wanted:
                found[index] = feat
                if index == wanted[-1]:
                    break
        return [found[int(i)] for i in layers]

    def layer_channels(self, layers: Sequence[int]) -> list[int]:
        """Channels of `self.model[i]`'s output for each i, from the architecture alone (no forward pass)."""
        channels, current = [], self.config["input_nc"]
        per_layer = []
        for layer in self.model:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                current = layer.out_channels
            per_layer.append(current)
        for i in layers:
            if not 0 <= int(i) < len(per_layer):
                raise ValueError(f"NCE layer {i} is outside the generator's 0..{len(per_layer) - 1}")
            channels.append(per_layer[int(i)])
        return channels

    # ------------------------------------------------------- single-pass tiles
    def _steps(self) -> list[tuple[str, nn.Module | None]]:
        """`self.model` flattened in the order `forward` runs it: ("layer", module), ("norm", instance norm), and
        ("push", None) / ("add", None) around each residual block's layers (the block adds its input back at its
        end: `ResnetBlock.forward`)."""
        def step(module: nn.Module) -> tuple[str, nn.Module]:
            return ("norm" if isinstance(module, nn.InstanceNorm2d) else "layer", module)

        steps: list[tuple[str, nn.Module | None]] = []
        for module in self.model:
            if isinstance(module, ResnetBlock):
                steps += [("push", None), *(step(layer) for layer in module.conv_block), ("add", None)]
            else:
                steps.append(step(module))
        return steps

    def tile_sweeps(self) -> SweepProgram:
        """This generator's forward as a single-pass program (`rainkit.tiling.run_single_pass`), made of the modules
        `forward` runs.

        It reads the buffer "image" (sides multiples of 4; a residual generator reads it again in the last sweep,
        to add the change to it) and returns "output". The layers are cut at every
        instance norm: sweep k runs up to the k-th norm and writes its input ("n<k>", at the stride it is computed
        at: the trunk at 1/4 resolution), whose whole-image mean and variance come back as `moments`; the next
        sweep normalises it with them as it reads it (pointwise, before any padding), then runs its own layers.
        A residual block's input is written as a buffer of its own ("skip<j>") and read back where the block adds
        it. Each sweep's halo is its layers' receptive growth (`_layer_reach`). The 9-block generator: 24 sweeps,
        halos of 2 to 8 px; the peak buffers are 3 ngf channels per pixel (the first two norms' inputs at full
        resolution, or the second's and the third's at 1/2).
        """
        steps = self._steps()
        cuts = [index for index, (kind, _) in enumerate(steps) if kind == "norm"] + [len(steps)]
        source, stride, channels = "image", 1, self.config["input_nc"]
        opening: tuple[nn.InstanceNorm2d, torch.Tensor, torch.Tensor] | None = None  # the norm a sweep starts with
        open_skips: list[tuple[str, int, int]] = []  # residual inputs in buffers, innermost last: name, channels, stride
        skips_made = start = 0
        for number, cut in enumerate(cuts):
            ops: list[tuple[str, nn.Module | str | None]] = []
            stack = [(name, False) for name, _, _ in open_skips]  # (name, pushed in this sweep)
            shapes = {name: (c, s) for name, c, s in open_skips}
            reads, frees, halo = [source], [source] if source != "image" or not self.residual else [], 0
            for kind, module in steps[start:cut]:
                if kind == "push":
                    name = f"skip{skips_made}"
                    skips_made += 1
                    stack.append((name, True))
                    shapes[name] = (channels, stride)
                    ops.append(("push", name))
                elif kind == "add":
                    name, local = stack.pop()
                    if not local:
                        reads.append(name)
                        frees.append(name)
                    ops.append(("add", name))
                else:
                    reach, stride = _layer_reach(module, stride)
                    halo += reach
                    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                        channels = module.out_channels
                    ops.append(("layer", module))
            kept = [name for name, local in stack if local]  # pushed here, added in a later sweep: buffers
            open_skips = [(name, *shapes[name]) for name, _ in stack]
            last = cut == len(steps)
            target = "output" if last else f"n{number}"
            if last and self.residual:
                reads.append("image")
                frees.append("image")
            writes = {target: channels, **{name: shapes[name][0] for name in kept}}
            strides = {target: stride, **{name: shapes[name][1] for name in kept}}

            def run(t, source=source, opening=opening, ops=ops, target=target, kept=kept,
                    add_image=last and self.residual):
                x = t[source]
                if opening is not None:
                    norm, mean, var = opening
                    x = F.batch_norm(x, mean[0], var[0], norm.weight, norm.bias, False, 0.0, norm.eps)
                local = {}
                for kind, op in ops:
                    if kind == "push":
                        local[op] = x
                    elif kind == "add":
                        x = (local.pop(op) if op in local else t[op]) + x
                    else:
                        x = op(x)
                if add_image:
                    x = self.apply_change(t["image"], x).clamp(-1.0, 1.0)
                return {target: x, **{name: local[name] for name in kept}}

            sweep = Sweep(tuple(reads), writes, run, halo=halo, moments=() if last else (target,), strides=strides,
                          exact=(target,) if last else (), frees=tuple(frees))
            if last:
                yield sweep
                return target
            statistics = yield sweep
            opening = (steps[cut][1], *statistics[target])
            source, start = target, cut + 1


def _layer_reach(layer: nn.Module, stride: int) -> tuple[int, int]:
    """How far (image pixels) a layer of the generator makes an output pixel see beyond the input pixel it lies in,
    given the stride of the layer's input; and the stride of its output."""
    if isinstance(layer, nn.Conv2d):
        return (layer.kernel_size[0] // 2) * layer.dilation[0] * stride, stride * layer.stride[0]
    if isinstance(layer, BlurDownsample):
        return max(layer.pad) * stride, stride * 2
    if isinstance(layer, (BlurUpsample, nn.ConvTranspose2d)):
        # Both up-samplings (CUT's 4x4 binomial, and the 3x3 transposed convolution) read one input pixel either side.
        return stride, stride // 2
    return 0, stride


class PatchDiscriminator(nn.Module):
    """CUT's NLayerDiscriminator (`--netD basic`: 70x70 PatchGAN with 3 layers), instance norm, anti-aliased."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = True):
        super().__init__()
        if antialias:
            seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 1, 1), nn.LeakyReLU(0.2, True), BlurDownsample(ndf)]
        else:
            seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            if antialias:
                seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult),
                        nn.LeakyReLU(0.2, True), BlurDownsample(ndf * mult)]
            else:
                seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), nn.InstanceNorm2d(ndf * mult),
                        nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def l2_normalize(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / (||x|| + 1e-7), CUT's `Normalize(2)`.

    The norm's gradient is taken as 0 at x = 0 (CUT's sqrt gives NaN there, which a narrow MLP
    head whose ReLU layer is all zero for some patch would hit)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + 1e-7)


class PatchSampleMLP(nn.Module):
    """Embeds the features at sampled positions of each NCE layer: Linear-ReLU-Linear to `nc`, L2-normalised.

    `patch_ids[i]` is a (B, P) long tensor of flat positions (row * W + col) for layer i, chosen
    per image; the same ids are used for the query (generated image) and the keys (source image).
    """

    def __init__(self, channels: Sequence[int], nc: int = 256):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.nc = nc
        for i, cin in enumerate(self.channels):
            setattr(self, f"mlp_{i}", nn.Sequential(nn.Linear(cin, nc), nn.ReLU(), nn.Linear(nc, nc)))

    def forward(self, feats: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, (feat, ids) in enumerate(zip(feats, patch_ids)):
            b, c = feat.shape[:2]
            flat = feat.flatten(2)  # B, C, HW
            picked = torch.gather(flat, 2, ids.to(feat.device)[:, None, :].expand(b, c, ids.shape[1]))
            rows = picked.transpose(1, 2).reshape(-1, c)  # (B * P, C), image-major
            out.append(l2_normalize(getattr(self, f"mlp_{i}")(rows)))
        return out


def init_generator(generator: ResnetGenerator, gain: float = 0.02) -> ResnetGenerator:
    """`init_weights`, and for a residual generator its last convolution zeroed: the identity at initialisation."""
    init_weights(generator, gain)
    if generator.residual:
        last = [m for m in generator.model if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return generator


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """CUT's `--init_type xavier --init_gain 0.02`: Xavier-normal conv/linear weights, zero biases."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net


@register_arch(
    "tpsence",
    task="generate",
    summary="TPSeNCE (WACV 2024) clear-to-rain generator: CUT ResNet, 9 blocks, instance norm, anti-aliased",
    variants={"tiny": {"ngf": 8, "n_blocks": 2}},
)
def tpsence(input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, antialias: bool = True,
            antialias_up: bool = True, residual: bool = False, change: str = "rgb") -> ResnetGenerator:
    return ResnetGenerator(input_nc, output_nc, ngf, n_blocks, antialias, antialias_up, residual, change)
