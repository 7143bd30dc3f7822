"""
Masked (absorbing-state) diffusion: MDLM (Sahoo et al. 2024) and LLaDA (Nie et al. 2025).

Forward process: every token of the clean sequence x0 independently becomes [MASK] with
probability 1 - alpha_t, t in [0, 1], alpha_0 = 1, alpha_1 = 0:
    q(x_t^i | x0^i) = Cat(alpha_t * onehot(x0^i) + (1 - alpha_t) * onehot(m))
The continuous-time negative ELBO (MDLM eq. 10, LLaDA eq. 3) bounds the NLL of x0:
    -log p(x0) <= E_{t ~ U(0,1)} E_{x_t} [ -alpha'_t / (1 - alpha_t) * sum_{i: x_t^i = m} -log p(x0^i | x_t) ]
For the linear schedule alpha_t = 1 - t the weight is 1/t. Unmasked positions contribute nothing
(the model copies them), and the sum is divided by the number of positions L (never by the number
of masked ones): only then is the number an upper bound on the NLL per token.

train.py trains through noise() and loss() (the seam duo.py and ar.py share); eval.py measures
with nll_bound().
"""

import math
import torch
from torch.nn import functional as F

SCHEDULES = ("linear", "cosine")


def alpha(t, schedule="linear"):
    """alpha_t and its derivative d alpha_t / dt, side by side. t: any tensor in [0, 1]."""
    if schedule == "linear":   # alpha_t = 1 - t: the masking rate grows linearly (MDLM "log-linear")
        return 1 - t, -torch.ones_like(t)
    if schedule == "cosine":   # alpha_t = cos(pi t / 2): fewer masks early, more late
        return torch.cos(math.pi / 2 * t), -math.pi / 2 * torch.sin(math.pi / 2 * t)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def loss_weight(t, schedule="linear"):
    """-alpha'_t / (1 - alpha_t): the ELBO weight of a masked token's cross-entropy at time t."""
    a, da = alpha(t, schedule)
    return -da / (1 - a)


def sample_t(B, eps=1e-3, antithetic=True, device="cpu", generator=None):
    """B times in [eps, 1]. Antithetic (low-discrepancy) draws t_i = (u + i/B) mod 1 cover [0, 1]
    evenly across the batch: the same expectation, a lower variance (MDLM section 3.5)."""
    if antithetic:
        u = torch.rand(1, device=device, generator=generator)
        t = (u + torch.arange(B, device=device) / B) % 1
    else:
        t = torch.rand(B, device=device, generator=generator)
    return eps + (1 - eps) * t


def q_sample(x0, t, mask_id, schedule="linear", maskable=None, generator=None):
    """Forward masking. x0: (B, L) ids; t: (B,). maskable: optional (B, L) bool, False where a
    token must stay clean (the SFT prompt). Returns x_t (B, L) and the masked positions (B, L)."""
    p_mask = 1 - alpha(t, schedule)[0]  # (B,)
    masked = torch.rand(x0.shape, device=x0.device, generator=generator) < p_mask[:, None]
    if maskable is not None:
        masked &= maskable
    return torch.where(masked, mask_id, x0), masked


def q_sample_count(x0, n_mask, mask_id, maskable=None, generator=None):
    """LLaDA's lower-variance forward process (LLaDA appendix B.1): mask exactly n_mask[b] of the
    maskable positions of row b, chosen uniformly. Paired with sample_count (l ~ U{1..n}, weight n/l)
    it estimates the same bound as the continuous form, E_l [ (n/l) sum_{masked} -log p(x0^i | x_l) ] / n:
    substitute r = 1 - alpha_t in the ELBO integral (the bound does not depend on the schedule) and
    draw the number of masks instead of each mask, without the binomial noise in their count."""
    u = torch.rand(x0.shape, device=x0.device, generator=generator)
    if maskable is not None:
        u = u.masked_fill(~maskable, 2.0)  # never among the first n_mask
    rank = u.argsort(1).argsort(1)  # (B, L) each position's rank in a random order
    masked = rank < n_mask[:, None]
    return torch.where(masked, mask_id, x0), masked


def sample_count(n, antithetic=True, generator=None):
    """A masked count l in {1..n[b]} per row (n: (B,) maskable positions), stratified across the
    batch like sample_t; returns (l, its ELBO weight n / l)."""
    u = sample_t(n.size(0), 0.0, antithetic, n.device, generator)  # (B,) in [0, 1)
    l = (u * n).long().clamp(max=n - 1) + 1
    return l, n / l


def elbo_loss(logits, x0, masked, weight, maskable=None):
    """Per-sequence negative ELBO in nats per position, (B,). logits: (B, L, V) from the model on
    x_t; masked: (B, L) bool, the positions masked in x_t; weight: (B,) the ELBO weight of each
    row, loss_weight(t) for q_sample or n / l for q_sample_count.
    Each row's weighted masked cross-entropy is divided by its number of maskable positions: L for
    pretraining, the response length for SFT (LLaDA eq. 5)."""
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    ce = torch.where(masked, ce, 0.0)  # unmasked positions contribute nothing
    n = x0.size(1) if maskable is None else maskable.sum(1).clamp(min=1)
    return weight * ce.sum(1) / n


def flat_weight(masked, maskable=None):
    """(B,) row weights that turn elbo_loss(...).mean() into the flat masked-token mean of the batch:
    the sum of the masked cross-entropies over the number of masked tokens (BERT / MaskGIT style).
    This is not the ELBO: every masked token weighs the same, so a masking rate r counts in
    proportion to r instead of uniformly, and the number is not a bound. It is a training surrogate
    whose gradient has a far lower variance than the ELBO's 1/t weighting (a row with one masked
    token no longer carries the weight of a full row); train.py's --train_loss=flat uses it, and at
    our budgets it trains models with a lower val NLL bound (a tighter negative ELBO) than training
    on the negative ELBO itself does (RESULTS.md)."""
    n = maskable.sum(1).float() if maskable is not None else torch.full((masked.size(0),), float(masked.size(1)),
                                                                         device=masked.device)
    return n * masked.size(0) / masked.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# The seam train.py calls (duo.py and ar.py have the same two functions): noise() draws the noise for
# a batch of clean rows and returns what the loss needs, as tensors whose first dimension is the row
# (train.py splits a global batch among processes and micro-steps by slicing rows); loss() is the
# training loss of such a batch.

def noise(x0, maskable, mask_id, schedule="linear", masking="rate", eps=1e-3, antithetic=True, flat=False,
          generator=None):
    """x0: (B, L) clean ids; maskable: (B, L) bool, the positions that may be masked (all of them for
    pretraining, the response and its padding for SFT), or None for all. Returns
    (x_t, x0, weight, masked, maskable): the noisy rows, the clean ones, each row's loss weight (B,),
    the masked positions (B, L). masking='rate': t ~ U(eps, 1), antithetic across the batch, each
    token masked w.p. 1 - alpha_t, weight -alpha'_t / (1 - alpha_t); 'count': exactly l ~ U{1..n} of
    the n maskable tokens, weight n / l (LLaDA). flat=True swaps the weights for flat_weight's (a
    surrogate for training, not a bound). The draws come from `generator` in a fixed order."""
    if masking == "count":
        n = torch.full((x0.size(0),), x0.size(1), device=x0.device) if maskable is None else maskable.sum(1)
        l, w = sample_count(n, antithetic, generator)
        x_t, masked = q_sample_count(x0, l, mask_id, maskable, generator)
    else:
        t = sample_t(x0.size(0), eps, antithetic, x0.device, generator)
        x_t, masked = q_sample(x0, t, mask_id, schedule, maskable, generator)
        w = loss_weight(t, schedule)
    if flat:  # the same masks, every masked token weighted alike
        w = flat_weight(masked, maskable)
    return x_t, x0, w, masked, maskable


def loss(model, batch, reduce=True):
    """The negative ELBO of a batch from noise(), nats per position: the batch mean, or with
    reduce=False each row's (B,)."""
    x_t, x0, w, masked, maskable = batch
    per_row = elbo_loss(model(x_t), x0, masked, w, maskable)
    return per_row.mean() if reduce else per_row


@torch.no_grad()
def nll_bound(model, batches, mask_id, schedule="linear", eps=1e-3, n_draws=1, seed=0, count=False,
              maskable=None):
    """Monte-Carlo upper bound on the NLL per token of held-out data, nats. batches: an iterable of
    (B, L) id tensors. Deterministic given the seed (one generator drives every time and mask draw).
    count=True uses the lower-variance estimator (q_sample_count). maskable: optional (L,) bool, the
    positions to score (the others are given, clean, as context).
    Returns (mean, standard error of the mean over sequences and draws)."""
    vals = []
    gen = None
    for x0 in batches:
        if gen is None:
            gen = torch.Generator(device=x0.device).manual_seed(seed)
        m = None if maskable is None else maskable.to(x0.device)[None].expand_as(x0)
        for _ in range(n_draws):
            batch = noise(x0, m, mask_id, schedule, "count" if count else "rate", eps, generator=gen)
            vals.append(loss(model, batch, reduce=False).float())
    v = torch.cat(vals)
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()
