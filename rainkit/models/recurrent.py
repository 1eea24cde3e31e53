"""The PReNet family of progressive recurrent deraining networks (PReNet, SAPNet).

One stage: concatenate the rainy input with the previous estimate (6 channels), a 3x3
convolution, a convolutional LSTM cell (four 3x3 gate convolutions over [features, hidden]),
`len(dilations)` residual blocks of two 3x3 convolutions, and a 3x3 convolution to 3 channels
added to the input. SAPNet adds a channel residual attention layer (CRA) after every residual
convolution and dilates the blocks 1-2-4-8-16.

Parameter names follow the official checkpoints exactly (`conv0.0`, `res_conv1.0`,
`res_conv1.1.conv_du.0`, `conv_i.0`, ...), so they load with strict key matching.

Two forward paths compute the same function:

* `forward` is the fast one: the four gate convolutions run as one convolution with the
  weights concatenated, the first stage skips the terms that multiply the all-zero initial
  hidden and cell states, and activations are applied in place when no gradient is needed.
  Tensors follow the input's memory format, so a channels-last input stays channels-last.
* `forward_reference` is the official code's way (separate gate convolutions over an explicit
  zero state), kept as the yardstick that tests and `bench/` compare against.

CRA uses global average pooling, so a tile does not see the statistics of the whole image.
Both forwards accept `pooled`, a `PooledStats` recorder (`rainkit.tiling.TileStats`) that
records each layer's sums over the tile's core, or replaces a layer's pooled vector with its
fixed whole-image mean; the tiler uses it to give every tile the whole image's statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rainkit.tiling import TileStats


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean (N, C); a matrix product for channels-last input, where it is cheaper."""
    n, ch, rows, cols = x.shape
    if n == 1 and x.is_contiguous(memory_format=torch.channels_last) and ch > 1:
        flat = x.permute(0, 2, 3, 1).reshape(rows * cols, ch)
        return (flat.sum(0, keepdim=True) if flat.dtype != torch.float32
                else torch.ones(1, rows * cols, dtype=x.dtype, device=x.device) @ flat) / (rows * cols)
    return x.mean(dim=(2, 3))


class CRALayer(nn.Module):
    """Channel residual attention: sigmoid(W2 relu(W1 p) + W3 p) scales the channels, p = global mean."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.conv_1_1 = nn.Conv2d(channels, channels, 1, bias=False)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (N, C) channel means -> (N, C, 1, 1) gate."""
        p = pooled[:, :, None, None]
        return torch.sigmoid(self.conv_du(p) + self.conv_1_1(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))


class PooledStats(TileStats):
    """SAPNet's pooled channel means as tile statistics (`rainkit.tiling.TileStats`).

    Each CRA call of a forward pass is one layer, numbered in call order. A layer whose mean is
    fixed pools to it instead of the tile's own mean; one that is not records its input over the
    tile's core and pools to the tile's own mean.
    """

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        k = self.next_layer()
        if self.is_fixed(k):
            return self.mean[k].to(device=x.device, dtype=x.dtype)
        self.record(k, x)
        return x.mean(dim=(2, 3))


class RecurrentDerainNet(nn.Module):
    """A PReNet-style progressive recurrent network.

    Args:
        width: feature channels (32 in both papers).
        stages: recurrent stages (6).
        dilations: one dilation per residual block; the block count is its length.
        attention: put a CRA layer after every residual convolution (SAPNet) or not (PReNet).
        reduction: CRA bottleneck ratio (16: 32 -> 2 -> 32).
    """

    def __init__(self, width: int = 32, stages: int = 6, dilations: tuple[int, ...] = (1, 1, 1, 1, 1),
                 attention: bool = False, reduction: int = 16):
        super().__init__()
        if stages < 1 or width < 1 or not dilations:
            raise ValueError("stages and width must be positive and dilations non-empty")
        self.width = width
        self.stages = stages
        self.dilations = tuple(int(d) for d in dilations)
        self.attention = attention
        self.conv0 = nn.Sequential(nn.Conv2d(6, width, 3, 1, 1), nn.ReLU())
        for index, dilation in enumerate(self.dilations, start=1):
            layers: list[nn.Module] = []
            for _ in range(2):
                layers.append(nn.Conv2d(width, width, 3, 1, padding=dilation, dilation=dilation))
                if attention:
                    layers.append(CRALayer(width, reduction))
                layers.append(nn.ReLU())
            setattr(self, f"res_conv{index}", nn.Sequential(*layers))
        self.conv_i = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), nn.Sigmoid())
        self.conv_f = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), nn.Sigmoid())
        self.conv_g = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), nn.Tanh())
        self.conv_o = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), nn.Sigmoid())
        self.conv = nn.Sequential(nn.Conv2d(width, 3, 3, 1, 1))

    # ----------------------------------------------------------------- structure
    @property
    def res_blocks(self) -> list[nn.Sequential]:
        return [getattr(self, f"res_conv{i}") for i in range(1, len(self.dilations) + 1)]

    def receptive_radius(self) -> int:
        """How far (in pixels) an output pixel can see, through all stages: the theoretical halo."""
        per_stage = 1 + 1 + sum(2 * d for d in self.dilations) + 1  # conv0, gates, blocks, output conv
        return per_stage * self.stages

    # ----------------------------------------------------------------- fast path
    def _block(self, block: nn.Sequential, x: torch.Tensor, pooled: PooledStats | None, fast: bool,
               x_nonnegative: bool = False) -> torch.Tensor:
        if not fast:
            out = x
            for layer in block:
                if isinstance(layer, CRALayer):
                    means = pooled.pool(out) if pooled is not None else out.mean(dim=(2, 3))
                    out = out * layer.gate(means)
                else:
                    out = layer(out)
            return F.relu(out + x)
        if not self.attention:
            conv1, _, conv2, _ = block
            out = conv2(conv1(x).relu_()).relu_()
            return out.add_(x).relu_()
        # Inference with a single image: a CRA gate is positive, so relu(y * g) = relu(y) * g and the
        # first gate folds into the second convolution's input channels; the second gate scales in
        # place. Two full-size passes fewer per block than the module-by-module computation.
        conv1, cra1, _, conv2, cra2, _ = block
        y1 = conv1(x)
        g1 = cra1.gate(pooled.pool(y1) if pooled is not None else _channel_mean(y1))
        w2 = conv2.weight * g1.view(1, -1, 1, 1)
        y2 = F.conv2d(y1.relu_(), w2, conv2.bias, padding=conv2.padding, dilation=conv2.dilation)
        g2 = cra2.gate(pooled.pool(y2) if pooled is not None else _channel_mean(y2))
        out = y2.relu_().mul_(g2).add_(x)
        # A block's output is a ReLU, so for every block after the first both summands are >= 0
        # and the closing ReLU would change nothing.
        return out if x_nonnegative else out.relu_()

    def forward(self, x: torch.Tensor, pooled: PooledStats | None = None, return_stages: bool = False):
        """Derain `x` (N, 3, H, W) in [0, 1]; returns the last estimate (and all stages if asked)."""
        if pooled is not None:
            pooled.start()
        # The in-place, weight-folding path is for single-image inference; training and batches
        # take the plain path (same arithmetic, autograd-safe).
        fast = not torch.is_grad_enabled() and x.shape[0] == 1
        width = self.width
        conv0 = self.conv0[0]
        gate_i, gate_f, gate_g, gate_o = (self.conv_i[0], self.conv_f[0], self.conv_g[0], self.conv_o[0])
        estimates = []
        h = c = None
        estimate = x
        for stage in range(self.stages):
            if stage == 0:
                # The first stage sees [x, x] and a zero state: fold the two input halves of conv0
                # together, drop the gate weights that multiply h = 0 and skip the forget gate (c = 0).
                feat = F.conv2d(x, conv0.weight[:, :3] + conv0.weight[:, 3:], conv0.bias, padding=1).relu()
                i, g, o = (F.conv2d(feat, gate.weight[:, :width], gate.bias, padding=1) for gate in (gate_i, gate_g, gate_o))
                c = i.sigmoid_().mul_(g.tanh_()) if fast else torch.sigmoid(i) * torch.tanh(g)
                del feat, i, g
            else:
                feat = conv0(torch.cat((x, estimate), 1))
                joint = torch.cat((feat.relu_() if fast else feat.relu(), h), 1)
                # Four 64->32 convolutions rather than one 64->128: oneDNN runs them faster on CPU and
                # each gate comes out contiguous for the elementwise work.
                if fast:
                    # Memory: h lives on only inside `joint`, and each gate is used up as soon as it is
                    # made, so at most 5 full-size maps are alive here (joint counts 2) instead of 9.
                    del feat, h
                    c.mul_(gate_f(joint).sigmoid_())
                    c.addcmul_(gate_i(joint).sigmoid_(), gate_g(joint).tanh_())
                    o = gate_o(joint)
                    del joint
                else:
                    i, f, g, o = (gate(joint) for gate in (gate_i, gate_f, gate_g, gate_o))
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    del feat, joint, i, f, g
            h = torch.tanh(c).mul_(o.sigmoid_()) if fast else torch.sigmoid(o) * torch.tanh(c)
            del o
            out = h
            for index, block in enumerate(self.res_blocks):
                out = self._block(block, out, pooled, fast, x_nonnegative=index > 0)
            estimate = self.conv(out) + x
            del out  # the last block's output is not needed while the next stage runs
            if return_stages:
                estimates.append(estimate)
        return (estimate, estimates) if return_stages else estimate

    # ------------------------------------------------------------ reference path
    def forward_reference(self, x: torch.Tensor, pooled: PooledStats | None = None) -> torch.Tensor:
        """The official implementation's computation, step for step (the yardstick for tests and bench)."""
        if pooled is not None:
            pooled.start()
        n, _, rows, cols = x.shape
        h = torch.zeros(n, self.width, rows, cols, device=x.device, dtype=x.dtype)
        c = torch.zeros(n, self.width, rows, cols, device=x.device, dtype=x.dtype)
        estimate = x
        for _ in range(self.stages):
            feat = self.conv0(torch.cat((x, estimate), 1))
            feat = torch.cat((feat, h), 1)
            i = self.conv_i(feat)
            f = self.conv_f(feat)
            g = self.conv_g(feat)
            o = self.conv_o(feat)
            c = f * c + i * g
            h = o * torch.tanh(c)
            out = h
            for block in self.res_blocks:
                res = out
                for layer in block:
                    if isinstance(layer, CRALayer) and pooled is not None:
                        out = out * layer.gate(pooled.pool(out))
                    else:
                        out = layer(out)
                out = F.relu(out + res)
            estimate = self.conv(out) + x
        return estimate
