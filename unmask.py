"""
One unmasking step, shared by the masked-diffusion samplers (diffusion.py) and their Fast-dLLM version
(fast_sample.py): the canvas, the plan of semi-autoregressive blocks, the model as a function of (part
of) the canvas, and the commit step (draw a candidate token at every masked position, score how
sure the model is of it, commit the most confident). The two samplers differ only in what they
do around these: fast_sample.py adds the K/V cache and the parallel commit rules.

Names: a block is canvas positions [s, e); its window [lo, e) is where commits can happen (the
block, plus any infill [MASK] left before it); `cand` are a step's candidate tokens, `conf` their
confidences; NFE counts model forwards per row.
"""

import torch
from torch.nn import functional as F

REMASKING = ("low_confidence", "random", "margin", "entropy")


def add_gumbel_noise(logits, temperature, generator=None):
    """argmax(logits / T + Gumbel) is a sample of softmax(logits / T). In float64: float32 or bf16
    noise is coarse in the tail, which lowers diversity and fakes a better perplexity."""
    if temperature == 0:
        return logits
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.double() / temperature - torch.log(-torch.log(u))


def num_transfer_tokens(masked, steps):
    """How many tokens to commit at each step: (B, steps). Each row's masks split evenly, the
    remainder on the first steps (LLaDA's linear schedule)."""
    n = masked.sum(1, keepdim=True)  # (B, 1)
    base, rem = n // steps, n % steps
    return base + (torch.arange(steps, device=n.device)[None, :] < rem).long()


def confidence(logits, cand, remasking, generator=None):
    """How sure the model is of each candidate: (B, W) float64, higher = commit first."""
    if remasking == "random":
        return torch.rand(cand.shape, dtype=torch.float64, device=cand.device, generator=generator)
    p = F.softmax(logits.double(), dim=-1)  # (B, W, V)
    if remasking == "low_confidence":  # the probability of the drawn token
        return torch.gather(p, -1, cand[..., None]).squeeze(-1)
    if remasking == "margin":  # top-1 minus top-2 probability
        top = p.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":  # negative entropy of the prediction
        return torch.special.xlogy(p, p).sum(-1)
    raise ValueError(f"unknown remasking {remasking!r}; choose from {REMASKING}")


def commit(logits, masked, n, temperature, remasking, generator=None):
    """The commit step: a candidate at each position of the window by Gumbel-max at temperature T,
    its confidence, and the n[b] most confident masked positions of each row (LLaDA's torch.topk).
    logits: (B, W, V); masked: (B, W) bool; n: (B,) counts, or a function of the confidences
    (B, W) -> (B,) counts (Fast-dLLM's parallel rules). Returns (cand (B, W), commit (B, W) bool)."""
    cand = add_gumbel_noise(logits, temperature, generator).argmax(-1)
    conf = torch.where(masked, confidence(logits, cand, remasking, generator), float("-inf"))
    n = torch.minimum(n(conf) if callable(n) else n, masked.sum(1))  # never more than the masks left
    chosen = torch.zeros_like(masked)
    for b in range(len(conf)):  # per row: its own count
        chosen[b, torch.topk(conf[b], k=int(n[b])).indices] = True
    return cand, chosen


def canvas(prompt, gen_length, mask_id):
    """prompt (B, P) followed by gen_length masks: (B, P + gen_length)."""
    return torch.cat([prompt, prompt.new_full((prompt.size(0), gen_length), mask_id)], 1)


def check_blocks(gen_length, block_length, steps):
    """The number of blocks of the semi-autoregressive plan (gen_length 0: one, the infill in the
    prompt); ValueError unless block_length divides gen_length and the blocks divide the steps."""
    if gen_length and (block_length <= 0 or gen_length % block_length):
        raise ValueError(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}")
    num_blocks = gen_length // block_length if gen_length else 1
    if steps <= 0 or steps % num_blocks:
        raise ValueError(f"--steps={steps} must be a positive multiple of the {num_blocks} blocks "
                         f"(gen_length / block_length)")
    return num_blocks


def blocks(x, P, gen_length, block_length, steps, mask_id):
    """The semi-autoregressive plan on canvas x (B, P + gen_length): yields (lo, e, steps per block)
    for each block, left to right. The window start lo is taken when the block starts: the block's
    first position, or earlier if an infill mask is left before it. Bad sizes raise ValueError
    (check_blocks) before anything runs."""
    num_blocks = check_blocks(gen_length, block_length, steps)
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length if gen_length else P
        cols = (x[:, :s] == mask_id).any(0).nonzero()
        yield int(cols[0]) if len(cols) else s, e, steps // num_blocks


def padded_forward(model, pad, T, forbid=-1):
    """The model as a function of (part of) the canvas: f(x, rows, start, kv, return_kv, **kw) runs the
    tokens x of the given rows at positions start.. (kw: more of model.forward's, e.g. attn_mask); with
    left padding (pad: (B,) counts), padded keys are hidden and each row gets its own positions, so a
    row sees exactly what it would see alone. forbid >= 0: that token (EOS) is never predicted."""
    if pad is None:
        key_mask = pos = None
    else:
        ar = torch.arange(T, device=pad.device)[None]
        key_mask, pos = ar >= pad[:, None], (ar - pad[:, None]).clamp(min=0)  # (B, T)

    def f(x, rows=slice(None), start=0, kv=None, return_kv=False, **kw):
        if pad is not None:
            kw.update(pos=pos[rows, start:start + x.size(1)], key_mask=key_mask[rows])
        out = model(x, start=start, kv=kv, return_kv=return_kv, **kw)
        if forbid >= 0:
            (out[0] if return_kv else out)[..., forbid] = float("-inf")
        return out
    return f


def left_pad(rows, pad_id):
    """Prompts of different lengths -> (B, P) ids left-padded with pad_id, and (B,) pad counts."""
    P = max(len(r) for r in rows)
    return (torch.tensor([[pad_id] * (P - len(r)) + r for r in rows], dtype=torch.long),
            torch.tensor([P - len(r) for r in rows], dtype=torch.long))
