"""
Block diffusion: BD3-LM (Arriola et al., ICLR 2025). Autoregressive across blocks, masked diffusion
(diffusion.py) within a block.

The L tokens of x are cut into blocks x^1, x^2, ... of b tokens (--bd3_block; the last may be shorter).
The likelihood factorises over blocks, each given the clean blocks before it, and each factor is
bounded by masked diffusion's continuous-time NELBO on its block (BD3-LM section 3.1, the L_BD bound):
    -log p(x) = sum_k -log p(x^k | x^{<k})
             <= sum_k E_{t_k} [ -alpha'_t/(1 - alpha_t) sum_{i in block k, x_t^i = m} -log p(x^i | x_t^k, x^{<k}) ]
every block with its own time t_k (antithetic over all blocks of a batch); divided by the L scored
positions, nats per token. b = 1 is autoregression (the one token of a block is masked w.p. t and
weighted 1/t: in expectation its next-token cross-entropy); b = L is MDLM.

Training in one forward (BD3-LM section 3.2): the model reads the noisy and the clean copy side by side,
[x_t, x] (2L tokens, both at positions 0..L-1), under the block-causal mask (train_mask)
    noisy block k sees itself and the clean blocks < k;  clean block k sees the clean blocks <= k,
so the clean copy computes the keys/values a sampler caches for the blocks before k, and the noisy
half's logits give every block's loss at once.

Sampling (generate): block by block, left to right. A clean block never sees what follows it, so the
committed blocks' keys/values are computed once, from their clean tokens, and stay exact (Fast-dLLM's
caches are approximations). The first step of a block runs the block before it, now clean, together
with the new fully masked one, and writes the clean keys/values; its other steps run the block alone
against the cache (model.py's K/V seam). Inside a block: LLaDA's commit step (sample.commit), a fixed
number of steps, or Fast-dLLM's threshold. Blocks end where the prompt ends (a prompt's first block
may be short), so left-padded prompts of different lengths share block boundaries; each keeps its own
positions and hides its padding (sample.padded_forward): a row gets what it would get alone. After each
block, a row that has written EOS with only EOS after it stops there, EOS after it (sample.eos_fill).
The canvas must fit the context (the RoPE tables and the training windows end there).

From an AR checkpoint (train.py --init_from=<an objective=ar out_dir>, BD3.converts): the same weights,
the block-causal mask instead of the causal one. Its logits are not shifted (as SDAR's): position i
predicts token i, as in MDLM and in a BD3 model trained from scratch, so one loss serves both (with a
shift, a block's first token would be predicted in the clean copy, and the loss would read both halves).
The price: the AR head, which predicted the next token, learns to predict its own position.

The real block diffusion checkpoints (pretrained.py) sample here too. SDAR and Fast-dLLM v2 count blocks
from position 0 (config.bd3_from_start): the prompt's tail shares the first block with the first generated
tokens and is recomputed with it. SDAR's rules are commit counts (fast_sample.parallel_rule): static is the
fixed schedule, dynamic the threshold with the schedule's count as its floor, entropy-bounded the surest
positions while their entropies sum below eb_threshold. Fast-dLLM v2 shifts its logits: a block's first
token is the output at the last position of the block before it, which only the block's first step computes
(the step that caches that block, clean): that step commits it alone (sample.lead_first), the later steps
read shifted outputs inside the block. It decodes a block in sub-blocks left to right (sub_block), and with
fast its block cache: once a sub-block's first position is decoded, the sub-block runs alone against the
keys/values of the last whole-block step.

    python train.py config/shakespeare_bd3.py      # then: python sample.py --out_dir=out-shakespeare-bd3
"""

import torch
from torch.nn import functional as F

import diffusion
from configurator import rule
from fast_sample import parallel_rule
from model import kv_buffers
from sample import canvas, commit, eos_fill, lead_first, num_transfer_tokens, padded_forward
from tokenizer import as_pair, sft_rows


def train_mask(L, b, device=None):
    """The block-causal mask of [x_t, x]: (2L, 2L) bool, True where a query (row) sees a key (column)."""
    k = torch.arange(L, device=device) // b  # (L,) each position's block
    same, before = k[:, None] == k[None], k[:, None] > k[None]
    return torch.cat([torch.cat([same, before], 1),                             # noisy: itself, clean blocks < k
                      torch.cat([torch.zeros_like(same), same | before], 1)])  # clean: clean blocks <= k


def noise(x0, maskable, b, mask_id, schedule="linear", eps=1e-3, antithetic=True, flat=False, generator=None):
    """diffusion.noise with a time per block: x0, maskable (B, L) seen as (B * n_blocks, b) blocks (the last padded,
    never masked). Returns (x_t (B, L), x0, w (B, L) the ELBO weight of each position's block, masked (B, L),
    maskable). flat=True: diffusion.flat_weight's surrogate weights (not a bound)."""
    B, L = x0.shape
    pad = -L % b
    blocks = F.pad(x0, (0, pad), value=mask_id).view(-1, b), F.pad(maskable, (0, pad)).view(-1, b)
    x_t, _, w, masked, _ = diffusion.noise(*blocks, mask_id, schedule=schedule, eps=eps, antithetic=antithetic, flat=flat,
                                           generator=generator)
    w = w.view(B, -1).repeat_interleave(b, 1)[:, :L]
    return x_t.view(B, -1)[:, :L], x0, w, masked.view(B, -1)[:, :L], maskable


def loss(model, batch, b, reduce=True):
    """The block NELBO of a batch from noise(), nats per maskable position, in one forward over [x_t, x]
    (B, 2L) with train_mask: the batch mean, or each row's (B,)."""
    x_t, x0, w, masked, maskable = batch
    L = x0.size(1)
    pos = torch.arange(L, device=x0.device).repeat(2)[None]  # (1, 2L): the clean copy at the noisy one's positions
    logits = model(torch.cat([x_t, x0], 1), pos=pos, attn_mask=train_mask(L, b, x0.device))[:, :L]  # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    per_row = (w * torch.where(masked, ce, 0.0)).sum(1) / maskable.sum(1).clamp(min=1)
    return per_row.mean() if reduce else per_row


# -----------------------------------------------------------------------------
# Sampling with an exact block cache

def step_forward(fwd, x, rows, lo, hi, e, see, kv):
    """Logits (r, hi - lo, V) of canvas positions [lo, hi) for the given rows, each query seeing the keys of
    [0, e) that see allows, and the cache. kv: per layer (B, H, T, D) buffers (model.kv_buffers), whose keys/
    values of [0, e) are read and those of [lo, hi) written; None with lo = 0: the first forward, which makes
    the buffers from its own keys/values (no cache: kv stays None, every step runs [0, e))."""
    if kv is None:
        if lo > 0:  # no cache: the whole canvas up to the block's end
            return fwd(x[rows, :e], rows, attn_mask=see[:e, :e])[:, lo:hi], None
        logits, fresh = fwd(x[rows, :e], rows, return_kv=True, attn_mask=see[:e, :e])
        kv = kv_buffers(fresh, len(x), x.size(1))
    else:
        part = [(kb[rows, :, :e], vb[rows, :, :e]) for kb, vb in kv]  # the rows' cache up to e (a copy)
        logits, fresh = fwd(x[rows, lo:hi], rows, start=lo, kv=part, return_kv=True, attn_mask=see[lo:hi, :e])
    for (kb, vb), (k, v) in zip(kv, fresh):
        kb[rows, :, lo:hi], vb[rows, :, lo:hi] = k[:, :, :hi - lo], v[:, :, :hi - lo]
    return logits[:, :hi - lo], kv


def by_offset(model, prompt, pad, **kw):
    """generate() for left-padded rows whose blocks, counted from each row's own position 0
    (config.bd3_from_start), start at different canvas positions: each group of rows with the same padding
    modulo the block, alone. Returns (canvas, NFE per row)."""
    b, out, nfe = model.config.bd3_block, None, 0.0
    for r in sorted(set((pad % b).tolist())):
        rows = (pad % b == r).nonzero().squeeze(1)
        x, n = generate(model, prompt[rows], pad=pad[rows], **kw)
        out = x.new_zeros(len(prompt), x.size(1)) if out is None else out
        out[rows], nfe = x, nfe + n * len(rows)
    return out, nfe / len(prompt)


@torch.no_grad()
def generate(model, prompt, *, steps, gen_length, temperature=0.0, remasking="low_confidence", bd3_cache=True,
             threshold=0.9, eb_threshold=0.0, sub_block=0, fast=False, eos_id=-1, pad=None, generator=None,
             on_step=None):
    """Block-by-block sampling after prompt (B, P), left-padded by pad (B,) counts. Each block takes its
    share of the steps (steps x its positions / gen_length, at least one) on LLaDA's schedule; threshold > 0:
    every position that sure, and at least the schedule's count (SDAR's dynamic rule; at one step a token,
    Fast-dLLM's); eb_threshold > 0: SDAR's entropy bound (remasking="entropy"). sub_block > 0: the block is
    decoded in sub-blocks of that many positions, left to right (Fast-dLLM v2); fast: a sub-block whose first
    position is decoded runs alone against the block's keys/values of the last whole-block step (Fast-dLLM v2's
    block cache: approximate, like a dual cache). bd3_cache: the exact block K/V cache (False: every step runs
    the whole canvas up to its block; the same tokens). Returns (canvas (B, P + gen_length), NFE per row)."""
    cfg = model.config
    b, m, sb = cfg.bd3_block, cfg.mask_id, sub_block or cfg.bd3_block
    if cfg.bd3_from_start and pad is not None and len(set((pad % b).tolist())) > 1:
        return by_offset(model, prompt, pad, steps=steps, gen_length=gen_length, temperature=temperature,
                         remasking=remasking, bd3_cache=bd3_cache, threshold=threshold, eb_threshold=eb_threshold,
                         sub_block=sub_block, fast=fast, eos_id=eos_id, generator=generator, on_step=on_step)
    x = canvas(prompt, gen_length, m)
    B, P, T = x.size(0), prompt.size(1), x.size(1)
    # the block grid: from each row's position 0 (SDAR, Fast-dLLM v2; rows padded alike modulo b) or from the
    # prompt's end (blocks trained from a window's start: the generated text starts a block)
    o = (int(pad[0]) % b if pad is not None else 0) if cfg.bd3_from_start else P
    blk = (torch.arange(T, device=x.device) - o).div(b, rounding_mode="floor")  # (T,) each position's block
    see = blk[:, None] >= blk[None]  # (T, T) block-causal: a query sees its block and those before it
    fwd, nfe, done, kv = padded_forward(model, pad, T), 0, 0, None  # done: [0, done) is cached from clean tokens
    for bs in range(P - (P - o) % b, T, b):  # the block holding the prompt's end, then the next ones
        s, e = max(bs, P), min(bs + b, T)  # generated: [s, e); [bs, s) is the prompt's tail
        n_steps = max(1, steps * (e - s) // gen_length)  # its share (steps = gen_length: one a token)
        lead = cfg.shift and s == bs  # a shifted model: only the first step's forward sees the output before s
        n_commit = num_transfer_tokens((x[:, s:e] == m)[:, lead:], max(n_steps - lead, 1))  # (B, steps)
        whole = torch.zeros(B, dtype=torch.bool, device=x.device)  # a whole-block step ran since the block began
        i = 0
        while True:
            rows = (x[:, s:e] == m).any(1).nonzero().squeeze(1)  # rows with masks left (not stopped at EOS)
            if len(rows) == 0:
                break
            masked = x[rows, s:e] == m  # (r, e - s)
            cs = bs + (s + masked.float().argmax(1) - bs) // sb * sb  # (r,) the sub-block of each row's first mask
            in_sub = (torch.arange(s, e, device=x.device)[None] - cs[:, None]).div(sb, rounding_mode="floor") == 0
            allowed = lead_first(masked) if lead and i == 0 else masked & in_sub  # where this step may commit
            alone = whole[rows] & (x[rows, cs] != m) if fast and bd3_cache else torch.zeros_like(rows, dtype=torch.bool)
            # the forwards: the first step from the last block's start (it is clean now: its keys/values become
            # exact), the others the block, or (fast) a sub-block alone
            logits = torch.zeros(len(rows), e - s, cfg.vocab_size, device=x.device)
            wins = [(done if i == 0 else bs, e, ~alone)] + [(c, min(c + sb, e), alone & (cs == c))
                                                            for c in cs[alone].unique().tolist()]
            for lo, hi, g in wins:
                if g.any():
                    out, kv = step_forward(fwd, x, rows[g], lo if bd3_cache else 0, hi, e, see=see,
                                           kv=kv if bd3_cache else None)
                    lo = lo if bd3_cache else 0
                    logits[g, max(lo, s) - s:hi - s] = out[:, max(lo, s) - lo:]
            whole[rows] |= ~alone & (i > 0 or not lead)
            nfe += len(rows)
            k = n_commit[rows, i - lead] if i - lead < n_commit.size(1) else torch.ones_like(rows)  # then one a step
            if lead and i == 0:
                n = allowed.sum(1)
            else:
                n = parallel_rule(threshold, 0.0, eb_threshold, least=None if eb_threshold > 0 else k) \
                    if threshold > 0 or eb_threshold > 0 else k
            cand, chosen = commit(logits, allowed, n, temperature=temperature, remasking=remasking, generator=generator)
            x[rows, s:e] = torch.where(chosen, cand, x[rows, s:e])
            if on_step:
                full = torch.zeros_like(x, dtype=torch.bool)
                full[rows, s:e] = chosen
                on_step(x, full)
            i += 1
        done = bs
        eos_fill(x, P, m, eos_id)  # a row that has written EOS with only EOS after it ends there
    return x, nfe / B


# -----------------------------------------------------------------------------
# The family interface (families.py), the same names as diffusion.MDLM and ar.AR

class BD3:
    """Block diffusion (BD3-LM)."""
    flags = dict(causal=False, time_cond=False)  # the model it trains (GPTConfig): its own mask, no time input
    row_extra = 0     # a training row is block_size tokens
    exact = False     # its held-out number is a bound on the NLL
    infills = False   # generate() writes after the prompt, block by block
    converts = ("ar",)  # --init_from may be an AR checkpoint: the same weights, block-causal (not shifted)
    train_options = {  # the train.py options it reads: its block size, and masked diffusion's own
        "bd3_block": (4, rule(lambda v: v > 0, "> 0 (and at most --block_size)"),
                      "bd3: tokens per block (1: autoregression, block_size: MDLM)"),
        **{k: diffusion.MDLM.train_options[k] for k in ("schedule", "train_loss", "t_eps", "antithetic")}}
    model_options = ("bd3_block",)  # written into the model's config: its sampler and bound read it there
    sample_options = ("steps", "temperature", "remasking", "bd3_cache", "threshold", "eb_threshold", "sub_block",
                      "fast")  # sample.SAMPLE_OPTIONS

    def __init__(self, config, meta, model):
        self.config, self.b, self.mask_id, self.saved = config, config["bd3_block"], meta["mask_id"], {}

    @staticmethod
    def check(config, meta, sft):
        """What this family cannot train on, as ValueError: blocks longer than the rows."""
        if config["bd3_block"] > config["block_size"]:
            raise ValueError(f"--bd3_block={config['bd3_block']} exceeds --block_size={config['block_size']}: "
                             f"every row would be padded to one block")

    def noise(self, x0, maskable, generator, step, val):
        """The noise of a batch, a time per block; the val bound always takes the ELBO's weights."""
        o = self.config  # train.py's options
        return noise(x0, maskable, self.b, self.mask_id, schedule=o["schedule"], eps=o["t_eps"],
                     antithetic=o["antithetic"], flat=o["train_loss"] == "flat" and not val, generator=generator)

    def loss(self, model, batch):
        return loss(model, batch, self.b)

    val_loss = loss

    def begin_step(self, step, model):
        """Called before every optimizer step (nothing to do)."""

    @staticmethod
    def sft_rows(records, T, eos_id, generator, mask_id):
        """LLaDA's rows (prompt, answer, EOS padding of any length) of as_pair's records: an infilling
        record's answer is its whole text, written after the prompt (a block never infills)."""
        return sft_rows([(*as_pair(r, mask_id), []) for r in records], T, eos_id, generator, mask_id)

    @staticmethod
    def nll(model, windows, scored, n_draws=8, seed=0, batch_size=64):
        """The block NELBO of held-out windows (N, T), the scored (T,) positions masked, the others given
        clean: (mean, standard error), nats per scored token."""
        b, m = model.config.bd3_block, model.config.mask_id
        return diffusion.nll_bound(lambda x0, keep, g: loss(model, noise(x0, keep, b, m, generator=g), b, reduce=False),
                                   windows, scored, n_draws=n_draws, seed=seed, batch_size=batch_size)

    generate = staticmethod(generate)

    @staticmethod
    def describe(bd3_cache=True, threshold=0.9, remasking="low_confidence", eb_threshold=0.0, sub_block=0, fast=False,
                 **_):
        rule = (f"entropy bound {eb_threshold}" if eb_threshold > 0 else f"threshold {threshold}" if threshold > 0
                else remasking)
        return (f"bd3, {'block K/V cache' if bd3_cache else 'no cache'}{' + sub-block cache' if fast else ''}, "
                + rule + (f", sub-blocks of {sub_block}" if sub_block else ""))
