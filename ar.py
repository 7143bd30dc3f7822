"""
The autoregressive baseline: the same transformer (model.py, causal=True) trained on next-token
prediction, its exact NLL and its sampler with a K/V cache. It is a family like diffusion.py and
duo.py, with the same interface (class AR at the end; families.py says what each name means).
"""

import math

import torch
from torch.nn import functional as F

from model import kv_buffers
from sample import add_gumbel_noise, canvas, eos_fill
from tokenizer import sft_rows


def loss(model, batch):
    """Mean next-token cross-entropy over the scored targets, nats per token: position i predicts
    x0[:, i + 1] from x0[:, :i + 1]. batch: (x0 (B, T + 1), scored (B, T + 1) bool)."""
    x0, scored = batch
    logits = model(x0[:, :-1])  # (B, T, V)
    scored = scored[:, 1:].flatten()
    return F.cross_entropy(logits.flatten(0, 1)[scored], x0[:, 1:].flatten()[scored])


@torch.no_grad()
def token_nll(model, ids, batch_size=64):
    """-log p(ids[:, i] | ids[:, :i]) under a causal model, for i = 1..N-1: (B, N-1). Sequences longer
    than its context are scored with a sliding window: every token keeps at least half a context."""
    W, (B, N) = model.config.block_size, ids.shape
    out = torch.empty(B, N - 1, device=ids.device)
    for b in range(0, B, batch_size):
        x, done = ids[b:b + batch_size], 1  # done: the next position to score
        while done < N:
            end = min(N, max(W, done + W // 2))
            begin = max(0, end - W)
            logits = model(x[:, begin:end])  # (b, end - begin, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, begin + 1:end], reduction="none")
            out[b:b + batch_size, done - 1:end - 1] = nll[:, done - 1 - begin:]
            done = end
    return out


@torch.no_grad()
def decode(model, prompt, gen_length, temperature=1.0, generator=None, eos_id=-1, on_step=None):
    """Sample gen_length tokens after prompt (B, P) with a K/V cache: buffers for the whole sequence,
    filled as it grows (the causal mask hides the positions not written yet). Gumbel-max in float64
    at the given temperature (0: greedy). With eos_id >= 0 a row that writes EOS is done, EOS after it
    (sample.eos_fill), and decoding stops when every row is. Returns (B, P + gen_length) and the number
    of forwards."""
    B, P = prompt.shape
    m = model.config.mask_id
    x = canvas(prompt, gen_length, m)  # the positions not written yet hold [MASK]
    logits, fresh = model(prompt, return_kv=True)
    kv = kv_buffers(fresh, B, P + gen_length)
    for (kb, vb), (k, v) in zip(kv, fresh):  # (B, H, P, D) into buffers (B, H, P + gen_length, D)
        kb[:, :, :P], vb[:, :, :P] = k, v
    for i in range(gen_length):
        tok = add_gumbel_noise(logits[:, -1], temperature, generator).argmax(-1)  # (B,)
        x[:, P + i] = torch.where(x[:, P + i] == m, tok, x[:, P + i])  # a finished row keeps its EOS
        eos_fill(x, P, m, eos_id)
        if on_step:  # the canvas so far and the position just written
            on_step(x, torch.arange(x.size(1), device=x.device)[None].expand(B, -1) == P + i)
        if not (x[:, P:] == m).any():
            return x, i + 1
        logits = model(x[:, P + i:P + i + 1], start=P + i, kv=kv)
    return x, gen_length


@torch.no_grad()
def generate(model, prompt, *, gen_length, temperature=1.0, eos_id=-1, pad=None, generator=None, on_step=None):
    """decode() with the family interface: prompt (B, P), left-padded by pad (B,) counts when the prompts
    differ in length (the rows of each prompt length decode together: a causal model reads no padding).
    The output is cut at the context. Returns (canvas (B, P + gen_length), forwards per row)."""
    B, P = prompt.shape
    if pad is None:
        pad = torch.zeros(B, dtype=torch.long, device=prompt.device)
    out = prompt.new_full((B, P + gen_length), model.config.mask_id)  # what the context leaves unwritten
    nfe = 0.0
    for n in pad.unique().tolist():  # rows with n padding tokens: their prompt is prompt[:, n:]
        rows = (pad == n).nonzero().squeeze(1)
        x, k = decode(model, prompt[rows, n:], min(gen_length, model.config.block_size - (P - n)), temperature=temperature,
                      generator=generator, eos_id=eos_id, on_step=on_step if len(rows) == B else None)
        out[rows, n:n + x.size(1)] = x
        out[rows, :n] = prompt[rows, :n]
        nfe += k * len(rows)
    return out, nfe / B


# -----------------------------------------------------------------------------
# The family interface: the names train.py, sample.py, eval.py and bench.py call (as diffusion.MDLM)

class AR:
    """The autoregressive baseline."""
    flags = dict(causal=True, time_cond=False)  # the model it trains (GPTConfig): causal attention
    row_extra = 1     # a training row is block_size + 1 tokens: the last is only a target
    exact = True      # its held-out number is the exact NLL
    infills = False   # generate() writes after the prompt; an answer to an infilling record is the whole text
    converts = ()     # --init_from takes only checkpoints with its flags
    train_options = {}  # no train.py option of its own
    model_options = ()
    sample_options = ("temperature",)

    def __init__(self, config, meta, model):
        self.saved = {}  # modules to checkpoint (none)

    @staticmethod
    def check(config, meta, sft):
        """What this family cannot train on, as ValueError (any dataset will do)."""

    @staticmethod
    def noise(x0, maskable, generator, step, val):
        """No noise: the batch is the rows (B, block_size + 1) and their scored targets."""
        return x0, maskable

    loss = val_loss = staticmethod(loss)

    def begin_step(self, step, model):
        """Called before every optimizer step (nothing to do)."""

    @staticmethod
    def sft_rows(records, T, eos_id, generator, mask_id):
        return sft_rows(records, T, eos_id, generator, mask_id, causal=True)

    @staticmethod
    def nll(model, windows, scored, n_draws=8, seed=0, batch_size=64):
        """The exact NLL per scored token of windows (N, T); scored: (T,) bool, never position 0 (it has
        no context). (mean, standard error over windows); n_draws and seed are not needed."""
        if scored[0]:
            raise ValueError("an autoregressive model cannot score the first token of a window")
        nll = token_nll(model, windows, batch_size)[:, scored[1:].to(windows.device)].mean(1)
        return nll.mean().item(), (nll.std() / math.sqrt(len(nll))).item()

    generate = staticmethod(generate)

    @staticmethod
    def describe(**_):
        return "AR, K/V cache"
