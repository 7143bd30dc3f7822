"""
How a diffusion language model writes text: the command line of every family's sampler.

    python sample.py --prompt="ROMEO:" --gen_length=96 --show        # watch the canvas unmask
    python sample.py --sampler=ancestral --steps=32                  # MDLM ancestral sampling
    python sample.py --prompt="ROMEO:[MASK*40]JULIET:" --gen_length=0  # infilling
    python sample.py --fast --cache=dual --threshold=0.9             # Fast-dLLM
    python sample.py --out_dir=out-shakespeare-duo --steps=8         # Duo (a uniform-state checkpoint)
    python sample.py --init_from=GSAI-ML/LLaDA-8B-Instruct --chat --prompt="Hi" --fast   # LLaDA-8B

The canvas is the prompt followed by gen_length [MASK]s; [MASK] or [MASK*n] in the prompt text
opens masked spans anywhere (infilling). Given text is never changed. The checkpoint names its
family (families.py), and the family's generate() writes: for masked diffusion (diffusion.py)

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
- --fast: Fast-dLLM's version of llada (fast_sample.py: a K/V cache and parallel commits).

A Duo checkpoint samples with duo.py's ancestral sampler (--top_k, --top_p, --greedy_tail), an AR
one with ar.py's cached decoder, a block diffusion one block by block with bd3.py's exact cache.
This file holds what they share: the prompt, the live view, the options and their checks.
"""

import json
import os
import re
import shutil
import sys

import torch

from configurator import (NON_NEGATIVE, PATH, POSITIVE, SEED, STEPS, TEMPERATURE, UNIT, check, check_device,
                          check_memory, check_writable, configure, fail, one_of, rule)
from diffusion import SAMPLERS, generate, generate_ancestral  # noqa: F401  (sample.generate: LLaDA's sampler)
from families import FAMILIES, load, options_of, pretrained
from fast_sample import CACHES
from tokenizer import MASK_GLYPH, chat_prompt, get_codec, write_files
from unmask import REMASKING


def parse_prompt(text, encode, mask_id, limit=None):
    """Prompt text -> ids; '[MASK]' is one masked token, '[MASK*n]' n of them (infilling). ValueError for
    a '[MASK...]' of another form, or (before anything is expanded) more than `limit` tokens in all."""
    ids, n = [], 0
    pieces = re.split(r"(\[MASK[^\]]*\])", text)
    for piece in pieces:
        if piece.startswith("[MASK"):
            if not re.fullmatch(r"\[MASK(\*[1-9]\d*)?\]", piece):
                raise ValueError(f"{piece!r} is neither [MASK] nor [MASK*n] with n >= 1")
            n += int(piece[6:-1]) if "*" in piece else 1
        elif piece:
            ids.append(encode(piece))
            n += len(ids[-1])
    if limit is not None and n > limit:
        raise ValueError(f"{n} tokens, more than the model's context of {limit}")
    out = []
    for piece in pieces:
        if piece.startswith("[MASK"):
            out += [mask_id] * (int(piece[6:-1]) if "*" in piece else 1)
        elif piece:
            out += ids.pop(0)
    return out


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
        if self.trace:  # all or nothing: a failed write leaves an earlier trace as it was
            write_files(os.path.dirname(self.trace) or ".",
                        {os.path.basename(self.trace): json.dumps({"steps": self.steps}).encode()})


# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-char"
init_from = ""          # instead of out_dir: a LLaDA checkpoint in the Hugging Face layout, a folder or a hub id
chat = False            # wrap the prompt in the checkpoint's chat template (Instruct models)
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
cache = "dual"          # fast: 'none', 'prefix' or 'dual'; bd3: 'none' recomputes, any other is its block cache
threshold = 0.9         # fast, bd3: commit every position at least this sure (0: off)
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
    check(globals(), dict(out_dir=PATH, num_samples=POSITIVE, gen_length=NON_NEGATIVE, steps=STEPS,
                          block_length=POSITIVE, temperature=TEMPERATURE, sampler=one_of(*SAMPLERS), remasking=one_of(*REMASKING),
                          cfg_scale=NON_NEGATIVE, eta=UNIT, cache=one_of(*CACHES), threshold=UNIT,
                          factor=NON_NEGATIVE, top_k=NON_NEGATIVE, top_p=rule(lambda v: 0 < v <= 1, "in (0, 1]"),
                          seed=SEED))
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
    try:
        # the family: the one lookup (families.py); a pretrained checkpoint is masked diffusion
        model, ckpt, fam = pretrained(init_from, device) if init_from else load(out_dir, device)
        encode, decode = get_codec(ckpt["meta"])
        prompt = chat_prompt(ckpt["meta"], prompt) if chat else prompt
    except ValueError as e:
        fail(e)
    model.eval()
    for key in sorted({k for f in FAMILIES.values() for k in f.sample_options} - set(fam.sample_options)):
        if globals()[key] != defaults[key]:
            fail(f"--{key} does not apply to {init_from or out_dir}, a {ckpt['config']['objective']} checkpoint (its options: "
                 f"{', '.join(fam.sample_options) or 'none'})")
    meta, m = ckpt["meta"], model.config.mask_id
    try:
        ids = parse_prompt(prompt, encode, m, limit=model.config.block_size)
    except ValueError as e:
        fail(f"prompt: {e}")
    if gen_length == 0 and not (fam.infills and m in ids):
        fail("nothing to generate: gen_length is 0 and the prompt has no [MASK] to infill")
    opts = options_of(fam.sample_options, dict(globals(), steps=steps or gen_length or ids.count(m)))
    try:
        fam.check_sampling(gen_length=gen_length, **opts)  # the rules between options, before any work
    except ValueError as e:
        fail(e)
    if len(ids) + gen_length > model.config.block_size:
        fail(f"prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceeds the model's context "
             f"of {model.config.block_size} tokens")
    T, V = len(ids) + gen_length, model.config.vocab_size  # the logits of a step, and a float64 copy for the draw
    check_memory(num_samples * T * V * 12, f"--num_samples={num_samples} canvases of {T} tokens", device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    view = LiveView(decode, m, show, trace) if show or trace else None
    eos = meta.get("eos_id", -1)
    out, nfe = fam.generate(model, x, gen_length=gen_length, temperature=temperature, eos_id=eos, generator=gen,
                            on_step=view, **opts)
    for row in out.tolist():  # a chat prints the reply alone (the template's markup decodes as bare role names)
        print(decode(cut_at_eos(row, eos, len(ids))[len(ids) if chat else 0:]))
        print("---------------")
    if view:
        view.save()
    print(f"({fam.describe(**opts)}, {nfe:g} model forwards per sample (NFE) for {gen_length + ids.count(m)} tokens)",
          file=sys.stderr)
