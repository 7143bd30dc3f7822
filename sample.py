"""
How a masked diffusion model writes text: the LLaDA and MDLM samplers.

    python sample.py --prompt="ROMEO:" --gen_length=96 --show        # watch the canvas unmask
    python sample.py --sampler=ancestral --steps=32                  # MDLM ancestral sampling
    python sample.py --prompt="ROMEO:[MASK*40]JULIET:" --gen_length=0  # infilling

The canvas is the prompt followed by gen_length [MASK]s; [MASK] or [MASK*n] in the prompt text
opens masked spans anywhere (infilling). Given text is never changed. Samplers:

- llada (LLaDA, Nie et al. 2025, Algorithm 4 + semi-autoregressive blocks): the answer is cut into
  blocks of block_length, decoded left to right, each with steps / num_blocks steps. At every step
  the model predicts all masked positions, a token is drawn at each (Gumbel-max at temperature T,
  in float64), and only the k most confident predictions of the current block are committed
  ("low-confidence remasking"); k follows the linear schedule (the block's masks split evenly over
  its steps, the remainder first). With steps = gen_length it commits one token per step.
- ancestral (MDLM, Sahoo et al. 2024): from t to s < t, each masked token is revealed with the
  true reverse posterior's probability (alpha_s - alpha_t) / (1 - alpha_t) and drawn from the
  model; a step that reveals nothing does not call the model again (it has no time input).
- remdm (ReMDM, Wang et al. 2025): the ancestral step, plus each decoded token is re-masked with
  probability sigma_t = min(eta, (1 - alpha_s) / alpha_t) so the model can revise it: self-correction.
"""

import json
import os
import re
import shutil
import sys

import torch
from torch.nn import functional as F

from configurator import configure
from diffusion import alpha
from model import load_checkpoint
from tokenizer import MASK_GLYPH, get_codec

REMASKING = ("low_confidence", "random", "margin", "entropy")
SAMPLERS = ("llada", "ancestral", "remdm")


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


def confidence(logits, x0, remasking, generator=None):
    """How sure the model is of each candidate x0: (B, T) float64, higher = commit first."""
    if remasking == "random":
        return torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
    p = F.softmax(logits.double(), dim=-1)  # (B, T, V)
    if remasking == "low_confidence":  # the probability of the drawn token
        return torch.gather(p, -1, x0[..., None]).squeeze(-1)
    if remasking == "margin":  # top-1 minus top-2 probability
        top = p.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":  # negative entropy of the prediction
        return torch.special.xlogy(p, p).sum(-1)
    raise ValueError(f"unknown remasking {remasking!r}; choose from {REMASKING}")


def left_pad(rows, pad_id):
    """Prompts of different lengths -> (B, P) ids left-padded with pad_id, and (B,) pad counts."""
    P = max(len(r) for r in rows)
    return (torch.tensor([[pad_id] * (P - len(r)) + r for r in rows], dtype=torch.long),
            torch.tensor([P - len(r) for r in rows], dtype=torch.long))


def padded_forward(model, pad, T):
    """The model as a function of (part of) the canvas: f(x, rows, start, kv, return_kv) runs the
    tokens x of the given rows at positions start..; with left padding, padded keys are hidden and
    each row gets its own positions, so a row sees exactly what it would see alone."""
    if pad is None:
        return lambda x, rows=slice(None), start=0, kv=None, return_kv=False: \
            model(x, start=start, kv=kv, return_kv=return_kv)
    ar = torch.arange(T, device=pad.device)[None]
    key_mask, pos = ar >= pad[:, None], (ar - pad[:, None]).clamp(min=0)  # (B, T)

    def f(x, rows=slice(None), start=0, kv=None, return_kv=False):
        return model(x, start=start, kv=kv, pos=pos[rows, start:start + x.size(1)], key_mask=key_mask[rows],
                     return_kv=return_kv)
    return f


def first_masked(x, m, s):
    """The window of a block starts at its first position s, or earlier if an infill mask is left."""
    cols = (x[:, :s] == m).any(0).nonzero()
    return int(cols[0]) if len(cols) else s


def canvas(prompt, gen_length, mask_id):
    """prompt (B, P) followed by gen_length masks: (B, P + gen_length)."""
    return torch.cat([prompt, prompt.new_full((prompt.size(0), gen_length), mask_id)], 1)


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", mask_id=None, eos_id=-1, forbid_eos=False, pad=None, generator=None,
             on_step=None):
    """The LLaDA sampler, with the arguments of LLaDA's generate() first and in its order.
    prompt: (B, P) ids, [MASK] allowed (infilled together with the first block); pad: optional (B,)
    left-padding counts. Returns (canvas (B, P + gen_length), NFE: model calls)."""
    m = model.config.mask_id if mask_id is None else mask_id
    B, P = prompt.shape
    if gen_length and gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not divisible by block_length={block_length}")
    num_blocks = gen_length // block_length if gen_length else 1  # gen_length 0: one block, the infill
    if steps % num_blocks:
        raise ValueError(f"steps={steps} is not divisible by the number of blocks {num_blocks}")
    steps //= num_blocks
    x = canvas(prompt, gen_length, m)
    given = x != m  # prompt (and padding): never changed; masked out for the unconditional pass
    fwd, nfe = padded_forward(model, pad, x.size(1)), 0
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length if gen_length else P  # the block
        w = first_masked(x, m, s)  # commits can happen in x[:, w:e]: the block and any infill before it
        k = num_transfer_tokens(x[:, w:e] == m, steps)  # (B, steps)
        for i in range(steps):
            masked = x[:, w:e] == m  # (B, e - w)
            if cfg_scale > 0:  # classifier-free guidance: u + (s + 1)(c - u), u = prompt masked
                c, u = fwd(torch.cat([x, torch.where(given, m, x)]), torch.arange(B).repeat(2)).chunk(2)
                logits = u + (cfg_scale + 1) * (c - u)
                logits[..., m] = float("-inf")  # -inf - (-inf) is nan: [MASK] stays impossible
                nfe += 2
            else:
                logits = fwd(x)
                nfe += 1
            logits = logits[:, w:e]  # (B, e - w, V): the float64 work below only where commits can happen
            if forbid_eos and eos_id >= 0:
                logits[..., eos_id] = float("-inf")
            x0 = add_gumbel_noise(logits, temperature, generator).argmax(-1)  # (B, e - w) candidates
            conf = torch.where(masked, confidence(logits, x0, remasking, generator), float("-inf"))
            commit = torch.zeros_like(masked)
            for b in range(B):  # per row: its own count, LLaDA's torch.topk selection
                commit[b, torch.topk(conf[b], k=int(k[b, i])).indices] = True
            x[:, w:e] = torch.where(commit, x0, x[:, w:e])
            if on_step:
                on_step(x, F.pad(commit, (w, x.size(1) - e)))
    return x, nfe


@torch.no_grad()
def generate_ancestral(model, prompt, steps=128, gen_length=128, temperature=1.0, schedule="linear",
                       eta=0.0, mask_id=None, eos_id=-1, forbid_eos=False, pad=None, generator=None, on_step=None):
    """MDLM ancestral sampling (eta = 0) or ReMDM remasking (eta > 0) on the time grid
    1 = t_0 > t_1 > ... > t_steps = 0. Returns (canvas, NFE: model calls per row)."""
    m = model.config.mask_id if mask_id is None else mask_id
    x = canvas(prompt, gen_length, m)
    B, given = x.size(0), x != m
    fwd = padded_forward(model, pad, x.size(1))
    logits, stale, calls = None, torch.ones(B, dtype=torch.bool, device=x.device), 0
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        a_t, a_s = alpha(ts[i], schedule)[0].item(), alpha(ts[i + 1], schedule)[0].item()
        sigma = min(eta, (1 - a_s) / a_t) if a_t > 0 else 0.0  # ReMDM "cap" schedule; 0 for MDLM
        p_reveal = (a_s - (1 - sigma) * a_t) / (1 - a_t)  # masked -> token: the reverse posterior
        if stale.any():  # the no-change shortcut: a row whose canvas did not change keeps its prediction
            rows = stale.nonzero().squeeze(1)
            out = fwd(x[rows], rows)  # (n, T, V)
            if forbid_eos and eos_id >= 0:
                out[..., eos_id] = float("-inf")
            logits = out if logits is None else logits.index_copy_(0, rows, out)
            calls += len(rows)
        masked = x == m
        u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
        reveal = masked & (u < p_reveal)
        remask = ~masked & ~given & (u < sigma)  # decoded -> [MASK] with probability sigma
        new = x.clone()
        new[reveal] = add_gumbel_noise(logits[reveal], temperature, generator).argmax(-1)
        new[remask] = m
        stale = (new != x).any(1)
        x = new
        if on_step:
            on_step(x, reveal)
    return x, calls / B


def parse_prompt(text, encode, mask_id):
    """Prompt text -> ids; '[MASK]' is one masked token, '[MASK*n]' n of them (infilling)."""
    ids = []
    for piece in re.split(r"(\[MASK(?:\*\d+)?\])", text):
        if piece.startswith("[MASK"):
            ids += [mask_id] * (int(piece[6:-1]) if "*" in piece else 1)
        elif piece:
            ids += encode(piece)
    return ids


def cut_at_eos(ids, eos_id, start):
    """Drop everything after the first EOS at or after `start` (the generated part)."""
    if eos_id >= 0 and eos_id in ids[start:]:
        return ids[:ids.index(eos_id, start)]
    return ids


class LiveView:
    """Re-draws the canvas in place as it unmasks: masks as MASK_GLYPH, fresh commits highlighted.
    With a trace path it also records every step for later rendering (JSON)."""

    def __init__(self, decode, mask_id, show, trace):
        self.decode, self.m, self.show, self.trace, self.lines, self.steps = decode, mask_id, show, trace, 0, []

    def __call__(self, x, commit):
        row, new = x[0].tolist(), set(commit[0].nonzero().flatten().tolist())
        self.steps.append({"canvas": self.decode(row), "committed": sorted(new)})
        if not self.show:
            return
        text = "".join(f"\x1b[7m{self.decode([t])}\x1b[0m" if i in new else
                       f"\x1b[2m{MASK_GLYPH}\x1b[0m" if t == self.m else self.decode([t]) for i, t in enumerate(row))
        width = shutil.get_terminal_size().columns
        up = f"\x1b[{self.lines}F" if self.lines else "\r"
        sys.stdout.write(up + "\x1b[J" + text + "\n")
        sys.stdout.flush()
        plain = self.decode(row)
        self.lines = sum(1 + max(0, len(line) - 1) // width for line in plain.split("\n"))

    def save(self):
        if self.trace:
            with open(self.trace, "w") as f:
                json.dump({"steps": self.steps}, f)


# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-char"
prompt = "\n"           # text ([MASK] / [MASK*n] for spans to infill), or FILE:path
num_samples = 3
gen_length = 96         # prompt + gen_length must fit the model's context (128 for config/shakespeare.py)
steps = 0               # model calls; 0 means gen_length: one token committed per step
block_length = 32       # semi-autoregressive blocks, decoded left to right; gen_length for one block
temperature = 0.8
sampler = "llada"       # 'llada', 'ancestral' (MDLM) or 'remdm' (ancestral + re-masking)
remasking = "low_confidence"  # llada: low_confidence, random, margin, entropy
cfg_scale = 0.0         # llada: classifier-free guidance scale (0: off)
eta = 0.02              # remdm: re-masking probability cap
forbid_eos = False      # never sample EOS (datasets with an EOS token)
fast = False            # Fast-dLLM (fast_sample.py): block-wise K/V cache + parallel decoding
cache = "dual"          # fast: 'none', 'prefix' or 'dual'
threshold = 0.9         # fast: commit every position at least this sure (0: off)
factor = 0.0            # fast, threshold 0: the factor rule (n + 1)(1 - c(n)) < factor (0: off)
show = False            # live view of the unmasking (the first sample)
trace = ""              # save the step-by-step history of the first sample to this JSON file
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys}))
    for key, allowed in [("remasking", REMASKING), ("sampler", SAMPLERS)]:
        if globals()[key] not in allowed:
            sys.exit(f"error: {key} must be one of {allowed}, got {globals()[key]!r}")
    model, ckpt = load_checkpoint(f"{out_dir}/ckpt.pt", device)
    if model.config.causal:
        sys.exit(f"error: {out_dir}/ckpt.pt is an autoregressive model (objective=ar); sample.py samples diffusion models")
    model.eval()
    meta, m = ckpt["meta"], model.config.mask_id
    encode, decode = get_codec(meta)
    if prompt.startswith("FILE:"):
        if not os.path.isfile(prompt[5:]):
            sys.exit(f"error: prompt file {prompt[5:]} not found")
        with open(prompt[5:], encoding="utf-8") as f:
            prompt = f.read()
    try:
        ids = parse_prompt(prompt, encode, m)
    except ValueError as e:
        sys.exit(f"error: prompt: {e}")
    if len(ids) + gen_length > model.config.block_size:
        sys.exit(f"error: prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceeds the model's context "
                 f"of {model.config.block_size} tokens")
    if gen_length == 0 and m not in ids:
        sys.exit("error: nothing to generate: gen_length is 0 and the prompt has no [MASK]")
    steps = steps or gen_length or ids.count(m)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    view = LiveView(decode, m, show, trace) if show or trace else None
    eos = meta.get("eos_id", -1)
    if fast and (sampler != "llada" or cfg_scale > 0):
        sys.exit("error: --fast accelerates the llada sampler without guidance (sampler=llada, cfg_scale=0)")
    try:
        if fast:
            from fast_sample import generate as fast_generate
            out, nfe = fast_generate(model, x, steps, gen_length, block_length if gen_length else 0, temperature,
                                     remasking, threshold=threshold, factor=factor, cache=cache, eos_id=eos,
                                     forbid_eos=forbid_eos, generator=gen, on_step=view)
        elif sampler == "llada":
            out, nfe = generate(model, x, steps, gen_length, block_length if gen_length else 0, temperature, cfg_scale,
                                remasking, eos_id=eos, forbid_eos=forbid_eos, generator=gen, on_step=view)
        else:
            out, nfe = generate_ancestral(model, x, steps, gen_length, temperature, eta=eta if sampler == "remdm" else 0.0,
                                          eos_id=eos, forbid_eos=forbid_eos, generator=gen, on_step=view)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if view:
        view.save()
    for row in out.tolist():
        print(decode(cut_at_eos(row, eos, len(ids))))
        print("---------------")
    print(f"({'fast ' + cache + ' cache, ' if fast else ''}{sampler}, {nfe:g} model calls per sample for "
          f"{gen_length + ids.count(m)} tokens)", file=sys.stderr)
