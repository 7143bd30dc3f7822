"""
Fast-dLLM (Wu et al. 2025): training-free acceleration of LLaDA's sampler (sample.generate), built from
the same pieces (sample.py's canvas, block plan, commit step); read the two generate() side by side.
What changes:

1. A block-wise K/V cache. At the start of every block one full forward refreshes the keys/values
   of every layer at every position; that forward is also the block's first decoding step. Later
   steps of the block run only part of the canvas against the cache (model.py's K/V seam):
   - prefix: the block and everything after it, attending to the cached keys/values before it;
   - dual:   the block alone, attending to cached keys/values before and after it.
   Both are approximations: attention is bidirectional, so the cached positions would change as
   the block is decoded; the cache is exact right after a refresh (and for a causal model the
   prefix cache is exact). Fast-dLLM's observation: within a block they barely change.
2. Parallel decoding by confidence. Instead of LLaDA's fixed k per step:
   - threshold: commit every masked position of the block whose confidence is >= threshold, and always
     at least the most confident one (without it the loop could stall);
   - factor: with confidences sorted c(1) >= c(2) >= ..., commit the largest n with
     (n + 1)(1 - c(n)) < f. When all committed marginals exceed 1 - eps and (n + 1) eps <= 1,
     greedy parallel decoding equals greedy sequential decoding (Fast-dLLM, Theorem 1).
   With neither, sample.generate's fixed schedule is kept.

A shifted model (config.shift, Dream: output j predicts token j + 1) reads the window's first position
from the output before the window, which only the refresh computes: the refresh commits that position
alone (sample.lead_first, as Fast-dLLM's Dream code), then the cached calls read shifted outputs within
the window, whose first position is decoded; the fixed schedule spreads the other masks over the other steps.

Where it differs from Fast-dLLM's reference code (which decodes every position of every row):
3. Finished rows stop: under a parallel rule a row whose block is decoded no longer calls the model,
   so a batch costs each row its own number of forwards (NFE counts model calls per row).
4. The EOS stop (eos_stop=True, sample.eos_fill): a row that has committed EOS with only EOS after it is
   filled with EOS and done. eos_stop=False decodes every position, as the reference.

    python sample.py --fast --cache=dual --threshold=0.9
"""

import torch

from model import kv_buffers
from sample import CACHES, block_plan, canvas, commit, eos_fill, lead_first, num_transfer_tokens, padded_forward


def factor_rule(conf, f):
    """(B, n) confidences -> (B,) how many to commit: the largest n with (n + 1)(1 - c(n)) < f, at least 1."""
    c = conf.sort(dim=1, descending=True).values  # (B, n); -inf (not masked) sorts last and never passes
    n = torch.arange(1, c.size(1) + 1, device=c.device)
    ok = (n + 1) * (1 - c) < f  # true for a prefix: both factors grow with n
    return ok.sum(1).clamp(min=1)


def parallel_rule(threshold, factor, eb=0.0, least=None):
    """The parallel rules' commit count as a function of the confidences (b, W) -> (b,):
    - eb > 0 (SDAR's entropy-bounded rule; the confidences are negative entropies, remasking="entropy"): the
      surest positions for as long as their entropies add up to less than eb;
    - else threshold > 0: every position at least `threshold` sure (Fast-dLLM);
    - else the factor rule (Fast-dLLM).
    Each commits at least least[b] (SDAR's dynamic threshold: the fixed schedule's count), and at least one."""
    def count(conf):
        if eb > 0:
            k = (-conf.sort(dim=1, descending=True).values).cumsum(1).lt(eb).sum(1)  # entropies ascending; +inf unmasked
        elif threshold > 0:
            k = (conf >= threshold).sum(1)
        else:
            k = factor_rule(conf, factor)
        return (k if least is None else torch.maximum(k, least)).clamp(min=1)
    return count


def active_rows(x, lo, e, m, fixed):
    """The rows that still need the model: a mask left on the canvas and, under a parallel rule, in
    the window (a finished row stops calling the model). slice(None) for all, None for none."""
    active = (x == m).any(1) & ((x[:, lo:e] == m).any(1) | fixed)
    if active.all():
        return slice(None)
    return active.nonzero().squeeze(1) if active.any() else None


def cached_forward(fwd, x, rows, lo, e, cache, kv, refresh):
    """The window's logits (b, e - lo, V) for the given rows, and the cache (model.kv_buffers: per layer
    (B, H, T, D) key and value buffers for the whole canvas). A refresh (a block's first step) is a full
    forward whose keys/values become the cache; later steps run the block and everything after it against
    it (prefix) or the block alone (dual); cache='none' always runs the full canvas."""
    if cache == "none":
        return fwd(x[rows], rows)[:, lo:e], kv
    if refresh:
        logits, fresh = fwd(x[rows], rows, return_kv=True)
        if kv is None:
            kv = kv_buffers(fresh, len(x), x.size(1))
        for (kb, vb), (k, v) in zip(kv, fresh):
            kb[rows], vb[rows] = k, v
        return logits[:, lo:e], kv
    kv_rows = kv if isinstance(rows, slice) else [(kb[rows], vb[rows]) for kb, vb in kv]
    if cache == "prefix":
        return fwd(x[rows, lo:], rows, start=lo, kv=kv_rows)[:, :e - lo], kv
    return fwd(x[rows, lo:e], rows, start=lo, kv=kv_rows), kv


@torch.no_grad()
def generate(model, prompt, *, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence",
             cache="dual", threshold=0.9, factor=0.0, eos_stop=True, eos_id=-1, forbid_eos=False, pad=None,
             generator=None, on_step=None):
    """Fast-dLLM: sample.generate with a K/V cache and parallel commits. threshold > 0: the threshold
    rule; else factor > 0: the factor rule; else sample.generate's fixed schedule of `steps`.
    Returns (canvas (B, P + gen_length), NFE per row)."""
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; choose from {CACHES}")
    m = model.config.mask_id
    fixed = threshold <= 0 and factor <= 0
    x = canvas(prompt, gen_length, m)
    fwd, nfe, kv = padded_forward(model, pad, x.size(1), eos_id if forbid_eos else -1), 0, None
    lead = model.config.shift and cache != "none"  # a shifted model: the refresh commits the window's first position
    for lo, e, n_steps in block_plan(x, prompt.size(1), gen_length=gen_length, block_length=block_length, steps=steps,
                                     mask_id=m):
        # (B, steps) for the fixed schedule; with a lead step, the other masks over the other steps (at least one)
        n_commit = num_transfer_tokens((x[:, lo:e] == m)[:, lead:], max(n_steps - lead, 1))
        for i in range(n_commit.size(1) + lead if fixed else e - lo):  # the parallel rules commit >= 1 per step and row
            rows = active_rows(x, lo, e, m, fixed)
            if rows is None:
                break
            logits, kv = cached_forward(fwd, x, rows, lo, e, cache=cache, kv=kv, refresh=i == 0)
            nfe += len(logits)
            masked = x[rows, lo:e] == m
            if lead and i == 0:
                masked = lead_first(masked)
                n = masked.sum(1)
            else:
                n = n_commit[rows, i - lead] if fixed else parallel_rule(threshold, factor)
            cand, chosen = commit(logits, masked, n, temperature=temperature, remasking=remasking,
                                  generator=generator)
            x[rows, lo:e] = torch.where(chosen, cand, x[rows, lo:e])
            if eos_stop:
                eos_fill(x, prompt.size(1), m, eos_id)
            if on_step:
                full = torch.zeros_like(x, dtype=torch.bool)
                full[rows, lo:e] = chosen
                on_step(x, full)
    return x, nfe / len(x)
