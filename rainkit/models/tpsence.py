"""TPSeNCE networks (Zheng et al., WACV 2024), in the CUT framework (Park et al., ECCV 2020).

* `ResnetGenerator`: reflect pad 3 + 7x7 convolution (ngf), two down-samplings (3x3 convolution,
  instance norm, ReLU, then an anti-aliasing blur-pool: reflect pad 1 and a stride-2 depthwise
  [1, 2, 1] x [1, 2, 1] / 16 filter), `n_blocks` residual blocks at 4 ngf channels (reflect pad,
  3x3, IN, ReLU, reflect pad, 3x3, IN, plus the input), two up-samplings (blur-upsample: replicate
  pad 1 and a stride-2 depthwise transposed [1, 3, 3, 1] x [1, 3, 3, 1] / 16 x 4 filter, then a
  3x3 convolution, IN, ReLU), reflect pad 3 + 7x7 convolution to 3 channels and tanh. Inputs and
  outputs are in [-1, 1]. Instance norm has no affine parameters and convolutions carry biases,
  as in CUT's `--normG instance`.
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
statistics); to tile large images, the generation engine runs the generator op by op and
normalises every tile with the whole image's statistics (see `rainkit.synth.tpsence`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rainkit.registry import register_arch


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
                 antialias: bool = True, antialias_up: bool = True):
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError("ngf must be positive and n_blocks non-negative")
        self.config = dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks,
                           antialias=antialias, antialias_up=antialias_up)
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
        return self.model(x)

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

    def receptive_radius(self) -> int:
        """How far (input pixels) an output pixel can see: the halo that makes a tile exact."""
        radius, stride = 0, 1
        for layer in self.model.modules():
            if isinstance(layer, nn.Conv2d):
                radius += (layer.kernel_size[0] // 2) * layer.dilation[0] * stride
                stride *= layer.stride[0]
            elif isinstance(layer, BlurDownsample):
                radius += 1 * stride
                stride *= 2
            elif isinstance(layer, (BlurUpsample, nn.ConvTranspose2d)):
                stride //= 2
                radius += 2 * max(stride, 1)
        return radius


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
            antialias_up: bool = True) -> ResnetGenerator:
    return ResnetGenerator(input_nc, output_nc, ngf, n_blocks, antialias, antialias_up)
