"""The TPSeNCE objective: generator, discriminator and MLP head, and the loss of each step.

One training step, as in CUT with TPSeNCE's additions:

1. G runs once on the batch [x; y] (x clear, y rainy): fake = G(x), idt = G(y).
2. Discriminator step (D trainable): 0.5 * (LSGAN(D(fake.detach()), fake) + LSGAN(D(y), real)).
3. Generator step, D frozen (requires_grad False on all its parameters, so nothing accumulates in
   D and the step cannot move it; gradients still flow through D's input into G):

   lambda_gan * LSGAN(D(fake), real)
   + lambda_nce * mean over NCE layers of SeNCE(G.enc(fake) vs G.enc(x), mPA), averaged with the
     identity term SeNCE(G.enc(idt) vs G.enc(y), mPA) when `nce_idt` (CUT mode)
   + lambda_tps * TPS(A = D(x), B = D(y), C = D(fake))

   A and B are constants (computed without gradient); C is D(fake) of the GAN term, so TPS moves
   G. The identity term uses the pair's mPA too, as the released code does.

Patch positions are drawn per image from a numpy generator the caller supplies (seeded from the
sample's (seed, epoch, index)), so the losses are reproducible and independent of how a batch is
split over processes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from rainkit.errors import RainkitError
from rainkit.losses.tpsence import lsgan_loss, sence_loss, tps_loss
from rainkit.models.tpsence import PatchDiscriminator, PatchSampleMLP, ResnetGenerator, init_generator, init_weights
from rainkit.train.tpsence_config import TPSeNCEConfig


class TPSeNCE(nn.Module):
    def __init__(self, config: TPSeNCEConfig):
        super().__init__()
        self.config = config
        self.generator = init_generator(ResnetGenerator(**config.generator_kwargs()), config.init_gain)
        self.discriminator = init_weights(PatchDiscriminator(ndf=config.ndf, n_layers=config.n_layers_d,
                                                             antialias=config.antialias), config.init_gain)
        self.nce_layers = [int(i) for i in config.nce_layers]
        try:
            channels = self.generator.layer_channels(self.nce_layers)
        except ValueError as exc:
            raise RainkitError(f"nce_layers: {exc}") from None
        self.head = init_weights(PatchSampleMLP(channels, config.netf_nc), config.init_gain)
        self.positions: list[int] | None = None  # H * W of each NCE layer's features, known after the first step

    # ------------------------------------------------------------------ helpers
    def draw_patch_ids(self, positions: Sequence[int], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        """For each NCE layer of `positions[i]` (= H * W) positions, (B, P) int64 positions: P =
        min(num_patches, H * W), drawn per image from its rng (layer by layer, image by image).
        Ids made ahead must be drawn for `self.positions` (the sizes `patch_ids` last saw)."""
        ids = []
        for count_all in positions:
            count = min(self.config.num_patches, int(count_all))
            ids.append(np.stack([rng.permutation(int(count_all))[:count] for rng in rngs]).astype(np.int64))
        return ids

    def patch_ids(self, feats: Sequence[torch.Tensor], rngs: Sequence[np.random.Generator]) -> list[torch.Tensor]:
        """`draw_patch_ids` for these feature maps, as tensors on their device."""
        self.positions = [feat.shape[2] * feat.shape[3] for feat in feats]
        return [torch.from_numpy(ids).to(feat.device)
                for ids, feat in zip(self.draw_patch_ids(self.positions, rngs), feats)]

    def nce(self, source: torch.Tensor, generated: torch.Tensor, mpa: torch.Tensor | None,
            rngs: Sequence[np.random.Generator], ids: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over NCE layers of the (Se)NCE loss between G's encodings of `generated` and `source`;
        `ids`: the patch positions `draw_patch_ids` gives for `rngs`, when made ahead."""
        c = self.config
        feat_k = self.generator.encode(source, self.nce_layers)
        feat_q = self.generator.encode(generated, self.nce_layers)
        if ids is None or self.positions != [f.shape[2] * f.shape[3] for f in feat_k]:
            ids = self.patch_ids(feat_k, rngs)  # none made ahead, or made for other feature sizes
        else:
            ids = [i.to(f.device, non_blocking=True) for i, f in zip(ids, feat_k)]
        pooled_k = self.head(feat_k, ids)
        pooled_q = self.head(feat_q, ids)
        total = generated.new_zeros((), dtype=torch.float32)
        for q, k, layer_ids in zip(pooled_q, pooled_k, ids):
            total = total + sence_loss(q, k, mpa if c.sence else None, layer_ids.shape[1], temperature=c.nce_t,
                                       eps=c.ot_eps, iterations=c.ot_iters, neg_term_weight=c.neg_term_weight,
                                       plan_grad=c.plan_grad).mean()
        return total / len(self.nce_layers)

    # ------------------------------------------------------------------ the two steps
    def translate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fake = G(x) and, with identity NCE, idt = G(y), from one generator pass."""
        if self.config.nce_idt and self.config.lambda_nce > 0:
            out = self.generator(torch.cat([x, y], 0))
            return out[:x.shape[0]], out[x.shape[0]:]
        return self.generator(x), None

    def discriminator_loss(self, fake: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        d_fake = lsgan_loss(self.discriminator(fake.detach()), real=False)
        d_real = lsgan_loss(self.discriminator(y), real=True)
        return {"d_fake": d_fake, "d_real": d_real, "d": 0.5 * (d_fake + d_real)}

    def generator_loss(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, idt: torch.Tensor | None,
                       mpa: torch.Tensor | None, rngs_x: Sequence[np.random.Generator],
                       rngs_y: Sequence[np.random.Generator], ids_x: Sequence[torch.Tensor] | None = None,
                       ids_y: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weighted generator terms, their sum ("g") and D's mean scores (`score_*`, diagnostics
        only). Freezes D for the duration of the call. `ids_x`/`ids_y`: the NCE patch positions of
        `rngs_x`/`rngs_y` when made ahead (`draw_patch_ids`)."""
        c = self.config
        d_params = list(self.discriminator.parameters())
        previous = [p.requires_grad for p in d_params]
        for p in d_params:
            p.requires_grad_(False)
        try:
            terms: dict[str, torch.Tensor] = {}
            zero = fake.new_zeros((), dtype=torch.float32)
            need_scores = c.lambda_gan > 0 or c.lambda_tps > 0
            scores_fake = self.discriminator(fake) if need_scores else None
            terms["gan"] = c.lambda_gan * lsgan_loss(scores_fake, real=True) if c.lambda_gan > 0 else zero
            if c.lambda_nce > 0:
                nce = self.nce(x, fake, mpa, rngs_x, ids_x)
                if idt is not None:
                    nce = 0.5 * (nce + self.nce(y, idt, mpa, rngs_y, ids_y))
                terms["nce"] = c.lambda_nce * nce
            else:
                terms["nce"] = zero
            if c.lambda_tps > 0:
                with torch.no_grad():
                    scores_clear = self.discriminator(x)
                    scores_rainy = self.discriminator(y)
                terms["tps"] = c.lambda_tps * tps_loss(scores_clear, scores_rainy, scores_fake)
            else:
                terms["tps"] = zero
            terms["g"] = terms["gan"] + terms["nce"] + terms["tps"]
            # Diagnostics, not losses: D's mean score of generated, clear and rainy images. A healthy
            # run has score_fake between score_clear and score_rainy (TPS's segment) and moving up.
            if scores_fake is not None:
                terms["score_fake"] = scores_fake.detach().float().mean()
            if c.lambda_tps > 0:
                terms["score_clear"] = scores_clear.float().mean()
                terms["score_rainy"] = scores_rainy.float().mean()
            return terms
        finally:
            for p, flag in zip(d_params, previous):
                p.requires_grad_(flag)
