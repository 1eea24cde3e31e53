"""TPSeNCE losses: LSGAN, TPS, and SeNCE (the semantically re-weighted patch contrastive loss).

Triangular Probability Similarity (TPS)
    With A = D(x) (clear), B = D(y) (rainy) and C = D(G(x)) the discriminator's patch score maps,
    TPS = mean(| |A - C| + |B - C| - |A - B| |), element-wise over the patch maps. It is zero exactly
    when every score of the generated image lies between the clear and the rainy image's scores,
    i.e. C is on the segment A-B in the discriminator's output space (the triangle inequality is
    tight). rainkit applies it in the generator step with the discriminator frozen (its parameters
    have requires_grad False, so the step leaves D untouched) and the gradient flowing from C
    through D into G; A and B are constants. The released code computes it on a detached G(x)
    with a frozen D, where it has no gradient path and trains nothing.

SeNCE
    CUT's PatchNCE (InfoNCE over patch embeddings: the query is a patch of G(x), its positive the
    patch of x at the same position, the negatives the other sampled patches of x, temperature
    0.07) with every negative's exponential weighted by w_ij from an entropic optimal-transport
    plan (MoNCE, Zhan et al. CVPR 2022), whose cost depends on the semantic similarity of the
    training pair (TPSeNCE section 3.3, and the released `--cost_type mixed`):

    * s_ij = q_i . k_j, the cosine similarity of query i and negative j (embeddings are
      L2-normalised);
    * m = mPA(seg(x), seg(y)) in [0, 1], the pixel agreement of the clear and the rainy image's
      semantic label maps (fraction of pixels with the same label), one value per training pair;
    * the Gibbs kernel of the transport problem is K_ij = exp(((1 - m) s_ij + m (1 - s_ij)) / eps),
      with the self-pair (i = j) excluded (its logit set to -10 as in MoNCE);
    * Sinkhorn (50 iterations) scales K to a plan P whose row and column sums are 1 (uniform
      marginals), and w_ij = (N - 1) P_ij * neg_term_weight, so an anchor's N - 1 negatives keep an
      average weight of about 1.

    So m = 0 (semantically different pair) gives the "hard" weighting K = exp(s / eps): negatives
    that resemble the anchor are pushed harder, as in hard-negative mining. m = 1 (same layout)
    gives the "easy" weighting K = exp((1 - s) / eps): similar negatives are pushed less, so the
    generator is not forced to make a scene it should keep intact look different. Values in
    between mix the two linearly inside the exponent. The loss is the cross-entropy of
    [s_ii, s_ij + T log w_ij] / T with the positive as the target, averaged over patches.

    The plan is treated as a constant weight (computed without gradient) unless `plan_grad` is
    set; the released code back-propagates through the 50 Sinkhorn iterations into the query.
    Everything is shaped by the tensors themselves: the batch is `len(q) // num_patches`, so any
    batch size, device or number of processes works (the released code divides the batch size by
    the number of GPUs, which fails on a CPU and for a short last batch).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean((D - 1)^2) for real targets, mean(D^2) for fake ones."""
    target = 1.0 if real else 0.0
    return F.mse_loss(prediction.float(), torch.full_like(prediction.float(), target))


def tps_loss(clear_scores: torch.Tensor, rainy_scores: torch.Tensor, generated_scores: torch.Tensor) -> torch.Tensor:
    """mean(| |A - C| + |B - C| - |A - B| |) with A = D(x), B = D(y), C = D(G(x))."""
    a, b, c = clear_scores.float(), rainy_scores.float(), generated_scores.float()
    return ((a - c).abs() + (b - c).abs() - (a - b).abs()).abs().mean()


def mean_pixel_agreement(seg_a, seg_b) -> float:
    """Fraction of pixels where two label maps agree (TPSeNCE's mPA between clear and rainy maps)."""
    a = np.asarray(seg_a)
    b = np.asarray(seg_b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in size: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if a.size else 0.0


def sinkhorn(kernel: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Scale a positive (B, N, M) kernel to a plan whose rows sum to M / N and columns to 1.

    The alternating scaling of the released code (u = a / K v, v = 1 / K^T u, with a = M / N);
    after the last step the columns are exact and the rows converge with the iterations.
    """
    b, n, m = kernel.shape
    u = kernel.new_ones(b, n)
    v = kernel.new_ones(b, m)
    a = float(m) / float(n)
    for _ in range(iterations):
        u = a / torch.bmm(kernel, v[:, :, None])[:, :, 0]
        v = 1.0 / torch.bmm(u[:, None, :], kernel)[:, 0, :]
    return u[:, :, None] * kernel * v[:, None, :]


def sence_weights(q: torch.Tensor, k: torch.Tensor, mpa: torch.Tensor, *, eps: float = 1.0, iterations: int = 50,
                  neg_term_weight: float = 1.0) -> torch.Tensor:
    """Negative weights w (B, N, N) for queries q and keys k (B, N, D, L2-normalised) and per-pair mPA (B,).

    w_ij = (N - 1) * neg_term_weight * P_ij, P the Sinkhorn plan of the kernel
    exp(((1 - m) q_i.k_j + m (1 - q_i.k_j)) / eps) with the diagonal excluded (see the module doc).
    """
    batch, n, _ = q.shape
    sim = torch.bmm(q.float(), k.float().transpose(1, 2))
    m = mpa.to(sim.device, sim.dtype).reshape(-1, 1, 1)
    if m.shape[0] != batch:
        raise ValueError(f"one mPA per image expected: {m.shape[0]} values for a batch of {batch}")
    logits = (1.0 - m) * sim + m * (1.0 - sim)
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)[None]
    logits = logits.masked_fill(eye, -10.0)
    plan = sinkhorn(torch.exp(logits / eps), iterations)
    return plan * (n - 1) * neg_term_weight + 1e-8


def sence_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, mpa: torch.Tensor | None, num_patches: int, *,
               temperature: float = 0.07, eps: float = 1.0, iterations: int = 50, neg_term_weight: float = 1.0,
               plan_grad: bool = False) -> torch.Tensor:
    """Per-patch SeNCE loss (B * N,) for query embeddings `feat_q` (of G(x)) and keys `feat_k` (of x).

    `feat_q`, `feat_k`: (B * N, D), image-major, L2-normalised; the keys are detached here.
    `mpa`: (B,) per-pair mPA; None gives CUT's plain PatchNCE (all negatives weighted 1).
    Computed in fp32 even inside an autocast region (the Sinkhorn scaling would not survive bf16).
    """
    with torch.autocast(feat_q.device.type, enabled=False):
        return _sence_loss(feat_q, feat_k, mpa, num_patches, temperature, eps, iterations, neg_term_weight, plan_grad)


def _sence_loss(feat_q, feat_k, mpa, num_patches, temperature, eps, iterations, neg_term_weight, plan_grad):
    rows, dim = feat_q.shape
    n = int(num_patches)
    if n < 2 or rows % n:
        raise ValueError(f"{rows} embeddings are not a whole number of images of {n} patches")
    batch = rows // n
    q = feat_q.float().reshape(batch, n, dim)
    k = feat_k.detach().float().reshape(batch, n, dim)
    l_pos = (q * k).sum(-1, keepdim=True)  # B, N, 1
    l_neg = torch.bmm(q, k.transpose(1, 2))  # B, N, N
    if mpa is not None:
        if plan_grad:
            weights = sence_weights(q, k, mpa, eps=eps, iterations=iterations, neg_term_weight=neg_term_weight)
        else:
            with torch.no_grad():
                weights = sence_weights(q.detach(), k, mpa, eps=eps, iterations=iterations,
                                        neg_term_weight=neg_term_weight)
        l_neg = l_neg + torch.log(weights) * temperature
    eye = torch.eye(n, dtype=torch.bool, device=q.device)[None]
    l_neg = l_neg.masked_fill(eye, -10.0)
    logits = torch.cat([l_pos, l_neg], dim=2).reshape(rows, n + 1) / temperature
    return F.cross_entropy(logits, torch.zeros(rows, dtype=torch.long, device=q.device), reduction="none")
