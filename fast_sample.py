"""
Fast-dLLM (Wu et al. 2025): training-free acceleration of the LLaDA sampler of sample.py, with
the same structure and names; read the two generate() side by side. What changes:

1. A block-wise K/V cache. At the start of every block one full forward refreshes the keys/values
   of every layer at every position; that forward is also the block's first decoding step. Later
   steps of the block run only part of the canvas against the cache (model.py's K/V seam):
   - prefix: the block and everything after it, attending to the cached keys/values before it;
   - dual:   the block alone, attending to cached keys/values before and after it.
   Both are approximations: attention is bidirectional, so the cached positions would change as
   the block is decoded; the cache is exact right after a refresh (and for a causal model the
   prefix cache is exact). Fast-dLLM's observation: within a block they barely change.
2. Parallel decoding by confidence. Instead of LLaDA's fixed k per step:
   - threshold: commit every masked position of the block whose confidence is >= tau, and always
     at least the most confident one (without it the loop could stall);
   - factor: with confidences sorted c(1) >= c(2) >= ..., commit the largest n with
     (n + 1)(1 - c(n)) < f. When all committed marginals exceed 1 - eps and (n + 1) eps <= 1,
     greedy parallel decoding equals greedy sequential decoding (Fast-dLLM, Theorem 1).
   With neither, the fixed schedule of sample.py is kept.
3. Rows finish independently: a row whose block is decoded stops calling the model (parallel
   rules), and a row that has committed EOS with only EOS after it is filled with EOS and done
   (the reference decodes every position). NFE counts model calls per row.

    python sample.py --fast --cache=dual --threshold=0.9
"""

import torch

from sample import add_gumbel_noise, canvas, confidence, first_masked, num_transfer_tokens, padded_forward

CACHES = ("none", "prefix", "dual")


def factor_rule(conf, f):
    """(B, n) confidences -> (B,) how many to commit: the largest n with (n + 1)(1 - c(n)) < f, at least 1."""
    c = conf.sort(dim=1, descending=True).values  # (B, n); -inf (not masked) sorts last and never passes
    n = torch.arange(1, c.size(1) + 1, device=c.device)
    ok = (n + 1) * (1 - c) < f  # true for a prefix: both factors grow with n
    return ok.sum(1).clamp(min=1)


def eos_fill(x, P, m, eos_id):
    """Rows that have committed EOS with nothing but EOS (or masks) after it: fill those masks with EOS."""
    gen = x[:, P:]
    is_eos = gen == eos_id
    j = torch.where(is_eos.any(1), is_eos.float().argmax(1), gen.size(1))  # first EOS (or none)
    after = torch.arange(gen.size(1), device=x.device)[None] > j[:, None]
    clean = ~(after & (gen != eos_id) & (gen != m)).any(1)  # only EOS or masks after it
    gen[after & clean[:, None] & (gen == m)] = eos_id


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0,
             remasking="low_confidence", mask_id=None, threshold=0.9, factor=None, cache="dual", eos_id=-1,
             forbid_eos=False, pad=None, eos_stop=True, generator=None, on_step=None):
    """Fast-dLLM, with the arguments of its generate_with_dual_cache() first and in its order.
    threshold > 0: the threshold rule; else factor > 0: the factor rule; else (both 0 or None) sample.py's
    fixed schedule of `steps`. Returns (canvas (B, P + gen_length), NFE: model calls per row)."""
    m = model.config.mask_id if mask_id is None else mask_id
    threshold, factor = threshold or 0.0, factor or 0.0
    B, P = prompt.shape
    if gen_length and gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not divisible by block_length={block_length}")
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; choose from {CACHES}")
    num_blocks = gen_length // block_length if gen_length else 1  # gen_length 0: one block, the infill
    if steps % num_blocks:
        raise ValueError(f"steps={steps} is not divisible by the number of blocks {num_blocks}")
    steps //= num_blocks
    fixed = threshold <= 0 and factor <= 0
    x = canvas(prompt, gen_length, m)
    T = x.size(1)
    fwd, calls, kv = padded_forward(model, pad, T), 0, None
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length if gen_length else P  # the block
        w = first_masked(x, m, s)  # commits can happen in x[:, w:e]: the block and any infill before it
        k = num_transfer_tokens(x[:, w:e] == m, steps)  # (B, steps), for the fixed schedule
        for i in range(steps if fixed else e - w):  # the parallel rules commit >= 1 per step and row
            masked = x[:, w:e] == m  # (B, e - w)
            active = (x == m).any(1) & (masked.any(1) | fixed)  # rows that still need the model
            if not active.any():
                break
            rows = active.nonzero().squeeze(1) if not active.all() else slice(None)
            if cache == "none":
                logits = fwd(x[rows], rows)[:, w:e]
            elif i == 0:  # refresh: a full forward, also this step's prediction
                logits, fresh = fwd(x[rows], rows, return_kv=True)
                logits = logits[:, w:e]
                if kv is None:  # the cache: (B, H, T, D) buffers per layer for the whole canvas
                    kv = [(k_.new_zeros(B, *k_.shape[1:]), v_.new_zeros(B, *v_.shape[1:])) for k_, v_ in fresh]
                for (kb, vb), (k_, v_) in zip(kv, fresh):
                    kb[rows], vb[rows] = k_, v_
            else:
                kv_rows = kv if isinstance(rows, slice) else [(kb[rows], vb[rows]) for kb, vb in kv]
                if cache == "prefix":  # the block and everything after it, against the cached prefix
                    logits = fwd(x[rows, w:], rows, start=w, kv=kv_rows)[:, :e - w]
                else:  # dual: the block alone, against cached keys/values on both sides
                    logits = fwd(x[rows, w:e], rows, start=w, kv=kv_rows)
            calls += int(active.sum())
            if forbid_eos and eos_id >= 0:
                logits[..., eos_id] = float("-inf")
            x0 = add_gumbel_noise(logits, temperature, generator).argmax(-1)  # (b, e - w) candidates
            conf = torch.where(masked[rows], confidence(logits, x0, remasking, generator), float("-inf"))
            if fixed:  # sample.py's schedule: the k[b, i] most confident
                commit = torch.zeros_like(conf, dtype=torch.bool)
                for j, b in enumerate(active.nonzero().squeeze(1).tolist()):
                    commit[j, torch.topk(conf[j], k=int(k[b, i])).indices] = True
            else:
                if threshold > 0:  # every position at least tau sure
                    commit = conf >= threshold
                else:  # the factor rule's n most confident
                    rank = conf.argsort(dim=1, descending=True).argsort(dim=1)
                    commit = rank < factor_rule(conf, factor)[:, None]
                commit[torch.arange(len(conf)), conf.argmax(1)] = True  # always at least the most confident
                commit &= masked[rows]
            x[rows, w:e] = torch.where(commit, x0, x[rows, w:e])
            if eos_stop and eos_id >= 0:
                eos_fill(x, P, m, eos_id)
            if on_step:
                full = torch.zeros_like(x, dtype=torch.bool)
                full[rows, w:e] = commit
                on_step(x, full)
    return x, calls / B
