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

The reverse process (the samplers, at the end of the file): LLaDA's remasking sampler, MDLM's
ancestral sampler and ReMDM's re-masking; Fast-dLLM's cached version of the first is fast_sample.py.

The family interface (class MDLM, at the end; families.py lists every family) is what train.py,
sample.py, eval.py and bench.py call: noise() and loss() to train, nll() to evaluate, generate() to
sample.
"""

import math

import torch
from torch.nn import functional as F

import fast_sample
from tokenizer import sft_rows
from unmask import add_gumbel_noise, blocks, canvas, check_blocks, commit, num_transfer_tokens, padded_forward

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
        x_t, masked = q_sample(x0, t, mask_id, schedule, maskable, generator)
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
        scored = None if maskable is None else maskable.to(x0.device)[None].expand_as(x0)
        for _ in range(n_draws):
            batch = noise(x0, scored, mask_id, schedule, "count" if count else "rate", eps, generator=gen)
            vals.append(loss(model, batch, reduce=False).float())
    v = torch.cat(vals)
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


# -----------------------------------------------------------------------------
# The reverse process: the samplers

SAMPLERS = ("llada", "ancestral", "remdm")


@torch.no_grad()
def generate(model, prompt, *, steps=128, gen_length=128, block_length=128, temperature=0.0,
             remasking="low_confidence", cfg_scale=0.0, mask_id=None, eos_id=-1, forbid_eos=False, pad=None,
             generator=None, on_step=None):
    """The LLaDA sampler. prompt: (B, P) ids, [MASK] allowed (infilled together with the first block);
    pad: optional (B,) left-padding counts. Returns (canvas (B, P + gen_length), NFE per row)."""
    m = model.config.mask_id if mask_id is None else mask_id
    x = canvas(prompt, gen_length, m)
    given = x != m  # prompt (and padding): never changed; masked out for the unconditional pass
    fwd, nfe = padded_forward(model, pad, x.size(1), eos_id if forbid_eos else -1), 0
    for lo, e, n_steps in blocks(x, prompt.size(1), gen_length, block_length, steps, m):
        k = num_transfer_tokens(x[:, lo:e] == m, n_steps)  # (B, n_steps) commits per step
        for i in range(n_steps):
            if cfg_scale > 0:  # classifier-free guidance: u + (s + 1)(c - u), u = prompt masked
                c, u = fwd(torch.cat([x, torch.where(given, m, x)]), torch.arange(len(x)).repeat(2)).chunk(2)
                logits = torch.where(c == float("-inf"), c, u + (cfg_scale + 1) * (c - u))  # -inf stays -inf
                nfe += 2
            else:
                logits = fwd(x)
                nfe += 1
            cand, chosen = commit(logits[:, lo:e], x[:, lo:e] == m, k[:, i], temperature, remasking, generator)
            x[:, lo:e] = torch.where(chosen, cand, x[:, lo:e])
            if on_step:
                on_step(x, torch.nn.functional.pad(chosen, (lo, x.size(1) - e)))
    return x, nfe


@torch.no_grad()
def generate_ancestral(model, prompt, *, steps=128, gen_length=128, temperature=1.0, schedule="linear", eta=0.0,
                       mask_id=None, eos_id=-1, forbid_eos=False, pad=None, generator=None, on_step=None):
    """MDLM ancestral sampling (eta = 0) or ReMDM remasking (eta > 0) on the time grid
    1 = t_0 > t_1 > ... > t_steps = 0. Returns (canvas, NFE per row)."""
    if steps <= 0:
        raise ValueError(f"steps={steps} must be positive")
    m = model.config.mask_id if mask_id is None else mask_id
    x = canvas(prompt, gen_length, m)
    B, given = x.size(0), x != m
    fwd = padded_forward(model, pad, x.size(1), eos_id if forbid_eos else -1)
    logits, stale, calls = None, torch.ones(B, dtype=torch.bool, device=x.device), 0
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        a_t, a_s = alpha(ts[i], schedule)[0].item(), alpha(ts[i + 1], schedule)[0].item()
        p_remask = min(eta, (1 - a_s) / a_t) if a_t > 0 else 0.0  # ReMDM's sigma_t, "cap" schedule; 0 for MDLM
        p_reveal = (a_s - (1 - p_remask) * a_t) / (1 - a_t)  # masked -> token: the reverse posterior
        if stale.any():  # the no-change shortcut: a row whose canvas did not change keeps its prediction
            rows = stale.nonzero().squeeze(1)
            out = fwd(x[rows], rows)  # (n, T, V)
            logits = out if logits is None else logits.index_copy_(0, rows, out)
            calls += len(rows)
        masked = x == m
        u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
        reveal = masked & (u < p_reveal)
        remask = ~masked & ~given & (u < p_remask)  # decoded -> [MASK] with probability sigma_t
        new = x.clone()
        new[reveal] = add_gumbel_noise(logits[reveal], temperature, generator).argmax(-1)
        new[remask] = m
        stale = (new != x).any(1)
        x = new
        if on_step:
            on_step(x, reveal)
    return x, calls / B


def check_sampling(sampler="llada", fast=False, cfg_scale=0.0, steps=128, gen_length=128, block_length=128, **_):
    """The rules between sampling options, raised as ValueError: --fast accelerates LLaDA's sampler
    without guidance; only LLaDA's sampler (and --fast) decodes in blocks."""
    if fast and (sampler != "llada" or cfg_scale > 0):
        raise ValueError("--fast accelerates the llada sampler without guidance (sampler=llada, cfg_scale=0)")
    if sampler == "llada":
        check_blocks(gen_length, block_length, steps)
    elif steps <= 0:
        raise ValueError(f"--steps={steps} must be positive")


# -----------------------------------------------------------------------------
# The family interface: the names train.py, sample.py, eval.py and bench.py call, the same in ar.AR,
# duo.Duo and duo.DCD (families.py lists them)

class MDLM:
    """Masked diffusion (MDLM / LLaDA)."""
    flags = dict(causal=False, time_cond=False)  # the model it trains (GPTConfig): bidirectional, no time input
    shift = 0         # a training row is block_size tokens
    exact = False     # its held-out number is a bound on the NLL
    infills = True    # generate() also fills the [MASK]s inside a prompt
    converts = ()     # --init_from takes only checkpoints with its flags
    options = ("schedule", "masking", "train_loss", "t_eps", "antithetic")  # the train.py options it reads
    sample_options = ("steps", "sampler", "block_length", "remasking", "cfg_scale", "eta", "forbid_eos", "fast",
                      "cache", "threshold", "factor")  # the sampling options generate() reads

    def __init__(self, cfg, meta, model):
        """The training side, for train.py's options cfg on a dataset with vocabulary meta."""
        self.cfg, self.mask_id, self.extra = cfg, meta["mask_id"], {}  # extra: modules to checkpoint (none)

    @staticmethod
    def check(cfg, meta, sft):
        """What this family cannot train on, as ValueError (masked diffusion trains on any dataset)."""

    def noise(self, x0, maskable, generator, step, val):
        """The noise of a batch of clean rows; the val bound always takes the lower-variance count
        estimator and the ELBO's own weights, whatever trains."""
        c = self.cfg
        return noise(x0, maskable, self.mask_id, c["schedule"], "count" if val else c["masking"], c["t_eps"],
                     c["antithetic"], flat=c["train_loss"] == "flat" and not val, generator=generator)

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
        return nll_bound(model, windows.split(batch_size), model.config.mask_id, n_draws=n_draws, seed=seed,
                         count=True, maskable=scored)

    check_sampling = staticmethod(check_sampling)

    @staticmethod
    def generate(model, prompt, *, sampler="llada", fast=False, steps=128, gen_length=128, block_length=128,
                 temperature=0.0, remasking="low_confidence", cfg_scale=0.0, eta=0.0, cache="dual", threshold=0.9,
                 factor=0.0, **kw):
        """Any masked-diffusion sampler by its command-line options: sampler='llada' (generate), 'ancestral'
        or 'remdm' (generate_ancestral, eta for remdm only), fast=True for Fast-dLLM's version of llada
        (fast_sample.generate). kw: eos_id, forbid_eos, pad, generator, on_step. (canvas, NFE per row)."""
        check_sampling(sampler, fast, cfg_scale, steps, gen_length, block_length)
        if fast:
            return fast_sample.generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                                        temperature=temperature, remasking=remasking, cache=cache,
                                        threshold=threshold, factor=factor, **kw)
        if sampler == "llada":
            return generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                            temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, **kw)
        return generate_ancestral(model, prompt, steps=steps, gen_length=gen_length, temperature=temperature,
                                  eta=eta if sampler == "remdm" else 0.0, **kw)

    @staticmethod
    def describe(sampler="llada", fast=False, remasking="low_confidence", cache="dual", threshold=0.9, **_):
        """The sampler in a few words, for tables."""
        if fast:
            return f"fast {cache} cache, threshold {threshold}, {remasking}"
        return f"llada, {remasking}" if sampler == "llada" else sampler
