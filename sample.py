"""
Sample from a trained masked diffusion model with the LLaDA sampler (Nie et al. 2025, Algorithm 4 +
semi-autoregressive blocks):

    python sample.py --out_dir=out-shakespeare-char --prompt="ROMEO:" --gen_length=200

The canvas is the prompt followed by gen_length [MASK]s. The answer is cut into blocks of
block_length, decoded left to right; each block gets steps / num_blocks steps. At every step the
model predicts all masked positions at once, a token is drawn at each (Gumbel-max at temperature T,
in float64), and only the k most confident predictions of the current block are committed; the
rest stay masked ("low-confidence remasking"). k follows the linear schedule: the block's masks
split evenly over its steps, the remainder going to the first steps.
"""

import os
import sys

import torch
from torch.nn import functional as F

from configurator import configure
from model import load_checkpoint
from tokenizer import get_codec

REMASKING = ("low_confidence", "random")


def add_gumbel_noise(logits, temperature, generator=None):
    """argmax(logits/T + Gumbel) samples from softmax(logits / T). In float64: float32/bf16 Gumbel
    noise is coarse in the tail, which lowers diversity and fakes a better perplexity."""
    if temperature == 0:
        return logits
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.double() / temperature - torch.log(-torch.log(u))


def num_transfer_tokens(block_masked, steps):
    """How many tokens to commit at each step: (B, steps). Each row's masks split evenly, the
    remainder on the first steps (LLaDA's linear schedule)."""
    n = block_masked.sum(1, keepdim=True)  # (B, 1)
    base, rem = n // steps, n % steps
    return base + (torch.arange(steps, device=n.device)[None, :] < rem).long()


@torch.no_grad()
def generate(model, prompt, gen_length=128, steps=128, block_length=32, temperature=0.0,
             remasking="low_confidence", mask_id=None, generator=None):
    """prompt: (B, P) ids. Returns the canvas (B, P + gen_length) with every mask filled."""
    mask_id = model.config.mask_id if mask_id is None else mask_id
    B, P = prompt.shape
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not divisible by block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} is not divisible by the number of blocks {num_blocks}")
    steps //= num_blocks
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length  # the current block is x[:, s:e]
        k = num_transfer_tokens(x[:, s:e] == mask_id, steps)  # (B, steps)
        for i in range(steps):
            masked = x == mask_id  # (B, T)
            logits = model(x)  # (B, T, V)
            x0 = add_gumbel_noise(logits, temperature, generator).argmax(-1)  # (B, T) candidates
            if remasking == "low_confidence":  # the probability of the drawn token, float64
                p = F.softmax(logits.double(), dim=-1)
                conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            elif remasking == "random":
                conf = torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
            else:
                raise ValueError(f"unknown remasking {remasking!r}; choose from {REMASKING}")
            conf[:, e:] = float("-inf")  # only the current block (and anything masked before it)
            conf = torch.where(masked, conf, float("-inf"))
            commit = torch.zeros_like(masked)
            for b in range(B):
                commit[b, torch.topk(conf[b], k=int(k[b, i])).indices] = True
            x = torch.where(commit, x0, x)
    return x


# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-char"
prompt = "\n"           # text, or FILE:path to read it from a file
num_samples = 3
gen_length = 96         # prompt + gen_length must fit the model's context (128 for config/shakespeare.py)
steps = 0               # model calls; 0 means gen_length: one token committed per step
block_length = 32       # semi-autoregressive blocks, decoded left to right; gen_length for one block
temperature = 0.8
remasking = "low_confidence"
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys}))
    if remasking not in REMASKING:
        sys.exit(f"error: remasking must be one of {REMASKING}, got {remasking!r}")
    model, ckpt = load_checkpoint(f"{out_dir}/ckpt.pt", device)
    if model.config.causal:
        sys.exit(f"error: {out_dir}/ckpt.pt is an autoregressive model (objective=ar); sample.py samples diffusion models")
    model.eval()
    encode, decode = get_codec(ckpt["meta"])
    if prompt.startswith("FILE:"):
        if not os.path.isfile(prompt[5:]):
            sys.exit(f"error: prompt file {prompt[5:]} not found")
        with open(prompt[5:], encoding="utf-8") as f:
            prompt = f.read()
    try:
        ids = encode(prompt)
    except ValueError as e:
        sys.exit(f"error: prompt: {e}")
    if len(ids) + gen_length > model.config.block_size:
        sys.exit(f"error: prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceeds the model's context "
                 f"of {model.config.block_size} tokens")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    try:
        out = generate(model, x, gen_length, steps or gen_length, block_length, temperature, remasking, generator=gen)
    except ValueError as e:
        sys.exit(f"error: {e}")
    for row in out.tolist():
        print(decode(row))
        print("---------------")
