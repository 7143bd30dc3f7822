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
the block-causal mask instead of the causal one. Logits are not shifted (as SDAR; Fast-dLLM v2 and
Dream shift them): position i predicts token i, as in MDLM and in a BD3 model trained from scratch, so
one loss and one sampler serve both. With a shift, a block's first token would be predicted at the
last position of the block before it, in the clean copy: the loss would read both halves and the
sampler a clean position's output at every step. The price: the AR head, which predicted the next
token, learns to predict its own position, during the continued training.

    python train.py config/shakespeare_bd3.py      # then: python sample.py --out_dir=out-shakespeare-bd3
"""

import torch
from torch.nn import functional as F

import diffusion
from configurator import rule
from fast_sample import parallel_rule
from model import kv_buffers
from sample import canvas, commit, eos_fill, num_transfer_tokens, padded_forward
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

def step_forward(fwd, x, rows, lo, e, see, kv):
    """Logits (r, e - lo, V) of canvas positions [lo, e) for the given rows, each query seeing the keys
    see[lo:e, :e] allows, and the cache. kv: per layer (B, H, T, D) buffers (model.kv_buffers), whose keys/
    values of [0, lo) are read and those of [lo, e) written; None with lo = 0: the first forward, which
    makes the buffers from its own keys/values (cache=False: kv stays None, every step runs [0, e))."""
    if kv is None:
        if lo > 0:  # no cache: the whole canvas up to e
            return fwd(x[rows, :e], rows, attn_mask=see[:e, :e]), None
        logits, fresh = fwd(x[rows, :e], rows, return_kv=True, attn_mask=see[:e, :e])
        kv = kv_buffers(fresh, len(x), x.size(1))
    else:
        part = [(kb[rows, :, :e], vb[rows, :, :e]) for kb, vb in kv]  # the rows' cache up to e (a copy)
        logits, fresh = fwd(x[rows, lo:e], rows, start=lo, kv=part, return_kv=True, attn_mask=see[lo:e, :e])
    for (kb, vb), (k, v) in zip(kv, fresh):
        kb[rows, :, lo:e], vb[rows, :, lo:e] = k, v
    return logits, kv


@torch.no_grad()
def generate(model, prompt, *, steps, gen_length, temperature=0.0, remasking="low_confidence", bd3_cache=True,
             threshold=0.9, eos_id=-1, pad=None, generator=None, on_step=None):
    """Block-by-block sampling after prompt (B, P), left-padded by pad (B,) counts. threshold > 0:
    Fast-dLLM's rule, else steps // blocks steps per block (at least one) on LLaDA's schedule. bd3_cache:
    the exact block K/V cache (False: every step runs the whole canvas up to its block; the same tokens).
    Returns (canvas (B, P + gen_length), NFE per row)."""
    b, m = model.config.bd3_block, model.config.mask_id
    x = canvas(prompt, gen_length, m)
    B, P, T = x.size(0), prompt.size(1), x.size(1)
    blk = (torch.arange(T, device=x.device) - P).div(b, rounding_mode="floor")  # (T,) blocks from the prompt's end
    see = blk[:, None] >= blk[None]  # (T, T) block-causal: a query sees its block and those before it
    fwd, nfe, done, kv = padded_forward(model, pad, T), 0, 0, None  # done: [0, done) is cached from clean tokens
    n_steps = max(1, steps // max(1, -(-gen_length // b)))
    for s in range(P, T, b):
        e = min(s + b, T)
        n_commit = num_transfer_tokens(x[:, s:e] == m, n_steps)  # (B, n_steps), for the fixed schedule
        for i in range(n_steps if threshold <= 0 else e - s):  # the threshold commits >= 1 per step and row
            rows = (x[:, s:e] == m).any(1).nonzero().squeeze(1)  # rows with masks left (not stopped at EOS)
            if len(rows) == 0:
                break
            lo = done if bd3_cache else 0
            logits, kv = step_forward(fwd, x, rows, lo, e, see=see, kv=kv if bd3_cache else None)
            logits = logits[:, s - lo:]  # (r, e - s, V)
            done, nfe = s, nfe + len(rows)
            n = parallel_rule(threshold, 0.0) if threshold > 0 else n_commit[rows, i]
            cand, chosen = commit(logits, x[rows, s:e] == m, n, temperature=temperature, remasking=remasking,
                                  generator=generator)
            x[rows, s:e] = torch.where(chosen, cand, x[rows, s:e])
            if on_step:
                full = torch.zeros_like(x, dtype=torch.bool)
                full[rows, s:e] = chosen
                on_step(x, full)
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
    sample_options = ("steps", "temperature", "remasking", "bd3_cache", "threshold")  # sample.SAMPLE_OPTIONS

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
    def describe(bd3_cache=True, threshold=0.9, remasking="low_confidence", **_):
        return (f"bd3, {'block K/V cache' if bd3_cache else 'no cache'}, "
                + (f"threshold {threshold}" if threshold > 0 else remasking))
