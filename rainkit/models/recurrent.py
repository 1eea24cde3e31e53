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

from rainkit.tiling import Sweep, SweepProgram, TileStats


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
    # `forward` and the single-pass tiler's program (`tile_sweeps`) are both made of the pieces below, so the
    # two cannot compute different functions.
    def _recurrent_state(self, stage: int, x: torch.Tensor, estimate: torch.Tensor | None, state: list,
                         fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One stage's input convolution and LSTM cell: the new (h, c) from the image, the last estimate and
        `state` = [h, c] of the stage before. `state` is emptied, so that the old h is freed as soon as it is
        read; in the fast path c is updated in place."""
        h, c = state or (None, None)
        state.clear()
        width = self.width
        conv0 = self.conv0[0]
        gate_i, gate_f, gate_g, gate_o = (self.conv_i[0], self.conv_f[0], self.conv_g[0], self.conv_o[0])
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
        return h, c

    # Inference with a single image, attention blocks in three pieces: a CRA gate is positive, so
    # relu(y * g) = relu(y) * g and the first gate folds into the second convolution's input channels;
    # the second gate scales in place. Two full-size passes fewer per block than the module-by-module
    # computation. Each piece consumes its tensor arguments (in place).
    @staticmethod
    def _attention_conv2(block: nn.Sequential, y1: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        """The block's second convolution of relu(y1) scaled by the first CRA gate `g1`."""
        conv2 = block[3]
        w2 = conv2.weight * g1.view(1, -1, 1, 1)
        return F.conv2d(y1.relu_(), w2, conv2.bias, padding=conv2.padding, dilation=conv2.dilation)

    @staticmethod
    def _attention_close(y2: torch.Tensor, g2: torch.Tensor, x: torch.Tensor, x_nonnegative: bool) -> torch.Tensor:
        """The block's output from its second convolution `y2`, the second gate `g2` and the block input `x`."""
        out = y2.relu_().mul_(g2).add_(x)
        # A block's output is a ReLU, so for every block after the first both summands are >= 0
        # and the closing ReLU would change nothing.
        return out if x_nonnegative else out.relu_()

    def _estimate(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A stage's estimate: the output convolution of the last block's output, plus the image (a float32 sum
        under 16-bit autocast, as x is float32)."""
        return self.conv(out) + x

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
        conv1, cra1, _, _, cra2, _ = block
        y1 = conv1(x)
        g1 = cra1.gate(pooled.pool(y1) if pooled is not None else _channel_mean(y1))
        y2 = self._attention_conv2(block, y1, g1)
        g2 = cra2.gate(pooled.pool(y2) if pooled is not None else _channel_mean(y2))
        return self._attention_close(y2, g2, x, x_nonnegative)

    def forward(self, x: torch.Tensor, pooled: PooledStats | None = None, return_stages: bool = False):
        """Derain `x` (N, 3, H, W) in [0, 1]; returns the last estimate (and all stages if asked)."""
        if pooled is not None:
            pooled.start()
        # The in-place, weight-folding path is for single-image inference; training and batches
        # take the plain path (same arithmetic, autograd-safe).
        fast = not torch.is_grad_enabled() and x.shape[0] == 1
        estimates = []
        state: list = []
        estimate = None
        for stage in range(self.stages):
            h, c = self._recurrent_state(stage, x, estimate, state, fast)
            out = h
            for index, block in enumerate(self.res_blocks):
                out = self._block(block, out, pooled, fast, x_nonnegative=index > 0)
            state = [h, c]
            del h, c
            estimate = self._estimate(out, x)
            del out  # the last block's output is not needed while the next stage runs
            if return_stages:
                estimates.append(estimate)
        return (estimate, estimates) if return_stages else estimate

    # ------------------------------------------------------- single-pass tiles
    def tile_sweeps(self) -> SweepProgram:
        """This network's inference forward as a single-pass program (`rainkit.tiling.run_single_pass`), made of
        the pieces `forward` runs.

        It reads the buffer "image" and returns "estimate". Per stage: the LSTM sweep (conv0 and the gates, halo
        2), then for SAPNet two sweeps per residual block, one per CRA layer (halo = the block's dilation: the
        first closes the block before and runs conv1, the second runs conv2 with the first gate folded in), and
        the output sweep (halo 1); for PReNet, which has no statistics, one sweep runs all its blocks and the
        output convolution (halo 2 * sum(dilations) + 1). Peak buffers: SAPNet 6 maps of `width` channels
        (c, h, the last block's input and conv2 output, the block's input and conv1 output), PReNet 3.
        """
        width, blocks = self.width, self.res_blocks

        def lstm(stage: int):
            def run(t):
                state = [t[f"h{stage - 1}"], t["c"]] if stage else []
                h, c = self._recurrent_state(stage, t["image"], t.get("estimate"), state, True)
                return {f"h{stage}": h, "c": c}
            reads = ("image", "estimate", f"h{stage - 1}", "c") if stage else ("image",)
            # c is read pointwise only, so it is updated in place; h is read with the halo, so it is not.
            return Sweep(reads, {f"h{stage}": width, "c": width}, run, halo=2,
                         frees=(f"h{stage - 1}",) if stage else ())

        for stage in range(self.stages):
            yield lstm(stage)
            h = f"h{stage}"
            if not self.attention:
                def body(t, h=h):
                    out = t[h]
                    for block in blocks:
                        out = self._block(block, out, None, True)
                    return {"estimate": self._estimate(out, t["image"])}
                halo = 1 + sum(2 * block[0].dilation[0] for block in blocks)
                yield Sweep((h, "image"), {"estimate": 3}, body, halo=halo, exact=("estimate",))
                continue
            residual, g2 = h, None  # the input of the block before, and its second gate
            for index, block in enumerate(blocks):
                conv1, cra1, _, _, cra2, _ = block
                dilation = conv1.dilation[0]
                if index == 0:
                    means = yield Sweep((h,), {"y1": width}, lambda t, conv1=conv1, h=h: {"y1": conv1(t[h])},
                                        halo=dilation, pooled=("y1",))
                    block_input = h
                else:
                    block_input = f"x{index}"

                    def head(t, conv1=conv1, residual=residual, g2=g2, block_input=block_input, nonneg=index > 1):
                        out = self._attention_close(t["y2"], g2, t[residual], nonneg)
                        return {block_input: out, "y1": conv1(out)}
                    means = yield Sweep(("y2", residual), {block_input: width, "y1": width}, head, halo=dilation,
                                        pooled=("y1",), frees=("y2",) + ((residual,) if residual != h else ()))
                g1 = cra1.gate(means["y1"])
                means = yield Sweep(("y1",), {"y2": width},
                                    lambda t, block=block, g1=g1: {"y2": self._attention_conv2(block, t["y1"], g1)},
                                    halo=dilation, pooled=("y2",), frees=("y1",))
                g2 = cra2.gate(means["y2"])
                residual = block_input

            def output(t, residual=residual, g2=g2, nonneg=len(blocks) > 1):
                out = self._attention_close(t["y2"], g2, t[residual], nonneg)
                return {"estimate": self._estimate(out, t["image"])}
            yield Sweep(("y2", residual, "image"), {"estimate": 3}, output, halo=1, exact=("estimate",),
                        frees=("y2",) + ((residual,) if residual != h else ()))
        return "estimate"

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
