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

Top to bottom: the schedules and the forward process, the ELBO loss (pretraining and SFT), the seam
train.py calls (noise, loss), the held-out bound (nll_bound, shared by every diffusion family), and
the family class MDLM (families.py lists every family): what train.py, sample.py, eval.py and bench.py
call. The reverse process, LLaDA's and MDLM's samplers, is sample.py; Fast-dLLM's is fast_sample.py.
"""

import math

import torch
from torch.nn import functional as F

import fast_sample
import sample
from configurator import one_of, rule
from tokenizer import sft_rows

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
    token no longer carries the weight of a full row); train.py's --train_loss=flat uses it. Which of
    the two trains the tighter val bound at a given budget is measured in RESULTS.md."""
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
        x_t, masked = q_sample(x0, t, mask_id, schedule=schedule, maskable=maskable, generator=generator)
        w = loss_weight(t, schedule)
    if flat:  # the same masks, every masked token weighted alike
        w = flat_weight(masked, maskable)
    return x_t, x0, w, masked, maskable


def loss(model, batch, reduce=True):
    """The loss of a batch from noise(), nats per position, each row weighted by the batch's weights:
    the negative ELBO (a bound on the NLL), or for a batch drawn with flat=True the flat masked mean (a
    training surrogate, not a bound). The batch mean, or with reduce=False each row's (B,)."""
    x_t, x0, w, masked, maskable = batch
    per_row = elbo_loss(model(x_t), x0, masked, w, maskable)
    return per_row.mean() if reduce else per_row


@torch.no_grad()
def nll_bound(score, windows, scored, n_draws=8, seed=0, batch_size=64):
    """Monte-Carlo upper bound on the NLL per scored token of held-out windows (N, T), nats, for any
    diffusion family: score(x0, keep, generator) -> (B,) is one noise draw's bound of each row of x0 (B, T),
    keep (B, T) the positions scored (the others given, clean, as context). Deterministic given the seed:
    one generator drives every draw. Returns (mean, standard error over windows and draws)."""
    gen = torch.Generator(device=windows.device).manual_seed(seed)
    vals = []
    for x0 in windows.split(batch_size):
        keep = scored.to(x0.device)[None].expand_as(x0)
        vals += [score(x0, keep, gen).float() for _ in range(n_draws)]
    v = torch.cat(vals)
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


# -----------------------------------------------------------------------------
# The family interface: the names train.py, sample.py, eval.py and bench.py call, the same in ar.AR,
# duo.Duo, duo.DCD and bd3.BD3 (families.py says what each means)

class MDLM:
    """Masked diffusion (MDLM / LLaDA)."""
    flags = dict(causal=False, time_cond=False)  # the model it trains (GPTConfig): bidirectional, no time input
    row_extra = 0     # a training row is block_size tokens
    exact = False     # its held-out number is a bound on the NLL
    infills = True    # generate() also fills the [MASK]s inside a prompt
    converts = ()     # --init_from takes only checkpoints with its flags
    # the train.py options it reads, name: (default, rule, what it does); bd3.py and duo.py share some
    train_options = {
        "schedule": ("linear", one_of(*SCHEDULES), "the noise schedule alpha_t (diffusion.alpha)"),
        "masking": ("rate", one_of("rate", "count"), "'rate': each token masked w.p. 1 - alpha_t (MDLM); "
                                                     "'count': exactly l ~ U{1..L} of them (LLaDA)"),
        "train_loss": ("elbo", one_of("elbo", "flat"), "'elbo': the NELBO (a bound); 'flat': the mean CE of "
                                                       "the masked tokens (a surrogate, diffusion.flat_weight)"),
        "t_eps": (1e-3, rule(lambda v: 0 < v < 1, "in (0, 1)"), "t ~ U(t_eps, 1)"),
        "antithetic": (True, None, "low-discrepancy times across the global batch"),
    }
    model_options = ()  # train options written into the model's config (none)
    sample_options = ("steps", "block_length", "temperature", "sampler", "remasking", "transfer", "alg_temp",
                      "cfg_scale", "eta", "forbid_eos", "fast", "cache", "threshold", "factor",
                      "eos_stop")  # sample.SAMPLE_OPTIONS

    def __init__(self, config, meta, model):
        """The training side, for train.py's options (config) on a dataset with vocabulary meta."""
        self.config, self.mask_id, self.saved = config, meta["mask_id"], {}  # saved: modules to checkpoint (none)

    @staticmethod
    def check(config, meta, sft):
        """What this family cannot train on, as ValueError (masked diffusion trains on any dataset)."""

    def noise(self, x0, maskable, generator, step, val):
        """The noise of a batch of clean rows; the val bound always takes the lower-variance count
        estimator and the ELBO's own weights, whatever trains."""
        o = self.config  # train.py's options
        return noise(x0, maskable, self.mask_id, schedule=o["schedule"], masking="count" if val else o["masking"],
                     eps=o["t_eps"], antithetic=o["antithetic"], flat=o["train_loss"] == "flat" and not val,
                     generator=generator)

    def loss(self, model, batch):
        return loss(model, batch)

    val_loss = loss

    def begin_step(self, step, model):
        """Called before every optimizer step (nothing to do)."""

    @staticmethod
    def sft_rows(records, T, eos_id, generator, mask_id):
        return sft_rows(records, T, eos_id, generator, mask_id)

    @staticmethod
    def nll(model, windows, scored, n_draws=8, seed=0, batch_size=64):
        """Held-out NLL bound per scored token of windows (N, T); scored: (T,) bool, the positions
        scored (the rest given as context). LLaDA's lower-variance estimator. (mean, standard error)."""
        m = model.config.mask_id
        return nll_bound(lambda x0, keep, g: loss(model, noise(x0, keep, m, masking="count", generator=g), reduce=False),
                         windows, scored, n_draws=n_draws, seed=seed, batch_size=batch_size)

    @staticmethod
    def generate(model, prompt, *, gen_length, eos_id=-1, pad=None, generator=None, on_step=None, **opts):
        """Any masked-diffusion sampler by its sampling options (sample.sampling's; one not given takes
        sample.SAMPLE_OPTIONS' default): sampler='llada' (sample.generate), 'ancestral' or 'remdm'
        (sample.generate_ancestral, eta for remdm only), fast=True for Fast-dLLM's version of llada
        (fast_sample.generate). Returns (canvas, NFE per row)."""
        o = dict(sample.option_defaults(*MDLM.sample_options), **opts)
        kw = dict(steps=o["steps"], gen_length=gen_length, temperature=o["temperature"], eos_id=eos_id,
                  forbid_eos=o["forbid_eos"], pad=pad, generator=generator, on_step=on_step)
        if o["fast"]:
            return fast_sample.generate(model, prompt, block_length=o["block_length"], remasking=o["remasking"],
                                        cache=o["cache"], threshold=o["threshold"], factor=o["factor"],
                                        eos_stop=o["eos_stop"], **kw)
        if o["sampler"] == "llada":
            return sample.generate(model, prompt, block_length=o["block_length"], remasking=o["remasking"],
                                   transfer=o["transfer"], alg_temp=o["alg_temp"], cfg_scale=o["cfg_scale"], **kw)
        return sample.generate_ancestral(model, prompt, eta=o["eta"] if o["sampler"] == "remdm" else 0.0, **kw)

    @staticmethod
    def describe(sampler="llada", fast=False, remasking="low_confidence", cache="dual", threshold=0.9, transfer="linear",
                 **_):
        """The sampler in a few words, for tables."""
        if fast:
            return f"fast {cache} cache, threshold {threshold}, {remasking}"
        return f"llada, {remasking}" + (", time grid" if transfer == "timegrid" else "") if sampler == "llada" else sampler
