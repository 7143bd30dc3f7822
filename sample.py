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

The step they share with fast_sample.py (the Fast-dLLM version of generate) lives in unmask.py: the
canvas, the block plan, the model with left padding, and the commit step. sample() picks a sampler
by its command-line options; the command line itself is at the end of this file.
"""

import json
import os
import re
import shutil
import sys

import torch

from configurator import (NON_NEGATIVE, POSITIVE, UNIT, check, check_device, check_writable, configure, fail, one_of,
                          rule)
from diffusion import alpha
from model import load_checkpoint
from tokenizer import MASK_GLYPH, get_codec
from unmask import REMASKING, add_gumbel_noise, blocks, canvas, commit, num_transfer_tokens, padded_forward
import duo
import fast_sample

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
        sigma = min(eta, (1 - a_s) / a_t) if a_t > 0 else 0.0  # ReMDM "cap" schedule; 0 for MDLM
        p_reveal = (a_s - (1 - sigma) * a_t) / (1 - a_t)  # masked -> token: the reverse posterior
        if stale.any():  # the no-change shortcut: a row whose canvas did not change keeps its prediction
            rows = stale.nonzero().squeeze(1)
            out = fwd(x[rows], rows)  # (n, T, V)
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


def sample(model, prompt, *, sampler="llada", fast=False, steps=128, gen_length=128, block_length=128,
           temperature=0.0, remasking="low_confidence", cfg_scale=0.0, eta=0.0, cache="dual", threshold=0.9,
           factor=0.0, top_k=0, top_p=1.0, greedy_tail=True, **kw):
    """Any sampler of the project by its command-line options: sampler='llada' (generate), 'ancestral'
    or 'remdm' (generate_ancestral, eta > 0 only for remdm), and fast=True for Fast-dLLM's version of
    llada (fast_sample.generate); a time-conditioned (uniform-state) model samples with duo.generate.
    kw: mask_id, eos_id, forbid_eos, pad, generator, on_step. Returns (canvas, NFE per row)."""
    if model.config.time_cond:
        return duo.generate(model, prompt, steps=steps, gen_length=gen_length, temperature=temperature, top_k=top_k,
                            top_p=top_p, greedy_tail=greedy_tail, generator=kw.get("generator"),
                            on_step=kw.get("on_step"))
    if fast:
        if sampler != "llada" or cfg_scale > 0:
            raise ValueError("--fast accelerates the llada sampler without guidance (sampler=llada, cfg_scale=0)")
        return fast_sample.generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                                    temperature=temperature, remasking=remasking, cache=cache, threshold=threshold,
                                    factor=factor, **kw)
    if sampler == "llada":
        return generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                        temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, **kw)
    return generate_ancestral(model, prompt, steps=steps, gen_length=gen_length, temperature=temperature,
                              eta=eta if sampler == "remdm" else 0.0, **kw)


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

    def __call__(self, x, chosen):
        row, new = x[0].tolist(), set(chosen[0].nonzero().flatten().tolist())
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
steps = 0               # denoising steps (0: gen_length, one token per step); model calls can differ (guidance, ancestral, --fast)
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
top_k = 0               # duo: sample from the k most likely tokens of each prediction (0: all)
top_p = 1.0             # duo: ... from the smallest set with this probability (nucleus)
greedy_tail = True      # duo: one more forward at t = 0, every position takes its most likely token
show = False            # live view of the unmasking (the first sample)
trace = ""              # save the step-by-step history of the first sample to this JSON file
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    defaults = {k: globals()[k] for k in config_keys}
    globals().update(configure(defaults))
    check(globals(), dict(num_samples=POSITIVE, gen_length=NON_NEGATIVE, steps=NON_NEGATIVE, block_length=POSITIVE,
                          temperature=NON_NEGATIVE, sampler=one_of(*SAMPLERS), remasking=one_of(*REMASKING),
                          cfg_scale=NON_NEGATIVE, eta=UNIT, cache=one_of(*fast_sample.CACHES), threshold=UNIT,
                          factor=NON_NEGATIVE, top_k=NON_NEGATIVE, top_p=rule(lambda v: 0 < v <= 1, "in (0, 1]"),
                          seed=NON_NEGATIVE))
    if fast and (sampler != "llada" or cfg_scale > 0):
        fail("--fast accelerates the llada sampler without guidance (sampler=llada, cfg_scale=0)")
    check_device(device)
    if trace:
        check_writable(trace, "trace")
    if prompt.startswith("FILE:"):
        path = prompt[5:]
        if not os.path.isfile(path):
            fail(f"prompt file {path} {'is a folder' if os.path.isdir(path) else 'not found'}")
        try:
            with open(path, encoding="utf-8") as f:
                prompt = f.read()
        except (UnicodeDecodeError, OSError) as e:
            fail(f"prompt file {path} is not readable UTF-8 text ({type(e).__name__})")
    model, ckpt = load_checkpoint(f"{out_dir}/ckpt.pt", device)
    if model.config.causal:
        fail(f"{out_dir}/ckpt.pt is an autoregressive model (objective=ar); sample.py samples diffusion models")
    model.eval()
    kind = "duo" if model.config.time_cond else "mdlm"  # the checkpoint says which sampler family applies
    only = dict(mdlm=["sampler", "block_length", "remasking", "cfg_scale", "eta", "forbid_eos", "fast", "cache",
                      "threshold", "factor"], duo=["top_k", "top_p", "greedy_tail"])
    for key in only["duo" if kind == "mdlm" else "mdlm"]:
        if globals()[key] != defaults[key]:
            fail(f"--{key} does not apply to {out_dir}, a {kind} checkpoint ({'uniform-state' if kind == 'duo' else 'masked'} diffusion)")
    meta, m = ckpt["meta"], model.config.mask_id
    encode, decode = get_codec(meta)
    try:
        ids = parse_prompt(prompt, encode, m)
    except ValueError as e:
        fail(f"prompt: {e}")
    if len(ids) + gen_length > model.config.block_size:
        fail(f"prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceeds the model's context "
             f"of {model.config.block_size} tokens")
    if gen_length == 0 and m not in ids:
        fail("nothing to generate: gen_length is 0 and the prompt has no [MASK]")
    steps = steps or gen_length or ids.count(m)
    if kind == "mdlm" and sampler == "llada":  # only LLaDA's sampler (and --fast) decodes in blocks
        if gen_length % block_length:
            fail(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}")
        n_blocks = gen_length // block_length if gen_length else 1
        if steps % n_blocks:
            fail(f"--steps={steps} must be a multiple of the {n_blocks} blocks (gen_length / block_length)")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    view = LiveView(decode, m, show, trace) if show or trace else None
    eos = meta.get("eos_id", -1)
    try:
        out, nfe = sample(model, x, sampler=sampler, fast=fast, steps=steps, gen_length=gen_length,
                          block_length=block_length if gen_length else 0, temperature=temperature, remasking=remasking,
                          cfg_scale=cfg_scale, eta=eta, cache=cache, threshold=threshold, factor=factor, top_k=top_k,
                          top_p=top_p, greedy_tail=greedy_tail, eos_id=eos, forbid_eos=forbid_eos, generator=gen,
                          on_step=view)
    except ValueError as e:
        fail(e)
    for row in out.tolist():
        print(decode(cut_at_eos(row, eos, len(ids))))
        print("---------------")
    if view:
        view.save()
    name = "duo ancestral" + (", greedy tail" if greedy_tail else "") if kind == "duo" else sampler
    print(f"({'fast ' + cache + ' cache, ' if fast else ''}{name}, {nfe:g} model forwards per sample (NFE) for "
          f"{gen_length + ids.count(m)} tokens)", file=sys.stderr)
