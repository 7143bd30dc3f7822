"""
The autoregressive baseline: the same transformer (model.py, causal=True) trained on next-token
prediction, and its sampler. It shares train.py's seam with diffusion.py and duo.py: noise() turns
a batch of clean rows into what the loss needs (for AR: nothing to draw, the rows are their own
targets shifted by one) and loss() is the training loss.
"""

import torch
from torch.nn import functional as F

from unmask import add_gumbel_noise


def noise(x0, maskable):
    """x0: (B, T + 1) clean rows, one token longer than the model's input (the last target);
    maskable: (B, T + 1) bool, the tokens that are predicted and scored (all for pretraining; the
    response and its padding for SFT). AR draws no noise: the batch is the rows themselves."""
    return x0, maskable


def loss(model, batch):
    """Mean next-token cross-entropy over the scored targets, nats per token: position i predicts
    x0[:, i + 1] from x0[:, :i + 1]."""
    x0, maskable = batch
    logits = model(x0[:, :-1])  # (B, T, V)
    scored = maskable[:, 1:].flatten()
    return F.cross_entropy(logits.flatten(0, 1)[scored], x0[:, 1:].flatten()[scored])


@torch.no_grad()
def generate(model, prompt, gen_length, temperature=1.0, generator=None, eos_id=-1):
    """Sample gen_length tokens after prompt (B, P) with a K/V cache: buffers for the whole sequence,
    filled as it grows (the causal mask hides the positions not written yet). Gumbel-max in float64
    at the given temperature (0: greedy). With eos_id >= 0 it stops once every row has written EOS and
    fills the rest with EOS. Returns (B, P + gen_length)."""
    B, P = prompt.shape
    logits, fresh = model(prompt, return_kv=True)
    kv = []
    for k, v in fresh:  # (B, H, P, D) -> buffers (B, H, P + gen_length, D)
        kb, vb = k.new_zeros(B, k.size(1), P + gen_length, k.size(3)), v.new_zeros(B, v.size(1), P + gen_length, v.size(3))
        kb[:, :, :P], vb[:, :, :P] = k, v
        kv.append((kb, vb))
    x, done = prompt, torch.zeros(B, dtype=torch.bool, device=prompt.device)
    for i in range(gen_length):
        tok = add_gumbel_noise(logits[:, -1], temperature, generator).argmax(-1, keepdim=True)  # (B, 1)
        x = torch.cat([x, tok], 1)
        done |= tok[:, 0] == eos_id
        if eos_id >= 0 and done.all():
            return torch.cat([x, x.new_full((B, gen_length - i - 1), eos_id)], 1)
        if i + 1 < gen_length:
            logits = model(tok, start=P + i, kv=kv)
    return x
