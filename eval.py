"""
Measuring a model: one stick for every claim in this project.

    python eval.py --ckpts=out-shakespeare-char,out-shakespeare-char-ar --judge=out-judge-char

For each checkpoint (masked diffusion or AR) it prints one row of a table:
- params, training tokens and wall-clock (from the checkpoint);
- held-out NLL on the same val tokens, nats/token and bits/char (nats/token / ln 2 x tokens/char):
  every non-overlapping window of the val split; token 0 of each window is given, tokens 1..T-1 are
  scored. AR: the exact NLL.
  Diffusion: the NLL bound (negative ELBO, LLaDA's lower-variance form: exactly l ~ U{1..T-1}
  tokens masked, weight (T-1)/l), averaged over n_draws noise draws per window, +- its standard
  error. The bound is >= the true NLL, so it favours AR when the two are compared;
- generative perplexity: samples continue prompts taken from the val split; an AR judge (a bigger
  causal model trained on the same data, config/judge.py) scores the generated tokens only, never
  the prompt: exp(mean NLL). A low gen PPL alone can hide repetitive text, so beside it:
- entropy: the unigram entropy (nats) of the tokens of each sample, averaged over samples.
A 'val text' row scores the real continuations of the same prompts: the reference for both.
Sampling for evaluation draws its Gumbel noise in float64.

exact_match() is the task-accuracy hook (GSM8K-style answers).
"""

import math
import os
import re
import sys

import numpy as np
import torch
from torch.nn import functional as F

import ar
from configurator import NON_NEGATIVE, POSITIVE, check, check_device, configure, fail, one_of
from diffusion import nll_bound
from model import load_checkpoint
from sample import cut_at_eos, generate
from unmask import REMASKING
from tokenizer import get_codec, same_tokens


def val_windows(data_dir, T):
    """Every non-overlapping window of T tokens of the val split: (N, T)."""
    data = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint16).astype(np.int64)
    n = len(data) // T
    return torch.from_numpy(data[:n * T].reshape(n, T))


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
def heldout_nll(model, windows, n_draws=8, seed=0, batch_size=64):
    """Nats per scored token on val windows (token 0 given, 1..T-1 scored): (mean, standard error).
    AR: exact (standard error over windows). Diffusion: the ELBO bound with exactly l masked."""
    if model.config.causal:
        nll = token_nll(model, windows, batch_size).mean(1)
        return nll.mean().item(), (nll.std() / math.sqrt(len(nll))).item()
    maskable = torch.ones(windows.size(1), dtype=torch.bool)
    maskable[0] = False  # the same conditioning as AR: token 0 is context
    batches = windows.split(batch_size)
    return nll_bound(model, batches, model.config.mask_id, n_draws=n_draws, seed=seed, count=True,
                     maskable=maskable)


def generated(samples, prompt_len, eos_id=-1):
    """(B, N - prompt_len) bool: the generated tokens that count, those before each row's first EOS."""
    gen = samples[:, prompt_len:]
    return (gen == eos_id).long().cumsum(1) == 0 if eos_id >= 0 else torch.ones_like(gen, dtype=torch.bool)


def gen_ppl(judge, samples, prompt_len, eos_id=-1):
    """exp(mean judge NLL over the generated tokens, i.e. positions >= prompt_len and before the
    first EOS, pooled). The judge is causal, so what follows the first EOS never changes a score."""
    nll = token_nll(judge, torch.where(samples == eos_id, 0, samples))[:, prompt_len - 1:]
    return math.exp(nll[generated(samples, prompt_len, eos_id)].mean().item())


def entropy(samples, prompt_len, eos_id=-1):
    """Unigram entropy (nats) of the generated tokens of each sample, averaged over the samples."""
    hs = []
    for row, keep in zip(samples[:, prompt_len:].tolist(), generated(samples, prompt_len, eos_id).tolist()):
        row = [t for t, k in zip(row, keep) if k]
        if row:
            p = np.bincount(row) / len(row)
            p = p[p > 0]
            hs.append(float(-(p * np.log(p)).sum()))
    return sum(hs) / max(1, len(hs))


def extract_answer(text):
    """The final answer of a GSM8K-style response: what follows '####', else the last number."""
    m = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    nums = [m.group(1)] if m else re.findall(r"-?[\d,]*\.?\d+", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else ""


def exact_match(preds, refs, extract=extract_answer):
    """Task accuracy: the fraction of predictions whose extracted answer equals the reference's."""
    assert len(preds) == len(refs)
    return sum(extract(p) == extract(r) for p, r in zip(preds, refs)) / max(1, len(refs))


# -----------------------------------------------------------------------------
ckpts = "out-shakespeare-char"  # comma-separated out_dirs
judge = "out-judge-char"        # out_dir of the AR judge
n_draws = 8                     # noise draws per val window for the diffusion bound
num_samples = 64
prompt_len = 16                 # prompt tokens, from the val split
gen_length = 112                # generated tokens per sample
steps = 0                       # diffusion sampling steps; 0: gen_length (one token per step)
block_length = 0                # 0: gen_length (no semi-autoregressive blocks)
temperature = 1.0
remasking = "random"            # random + one token per step + T=1: an exact sample from the model
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys}))
    check(globals(), dict(n_draws=POSITIVE, num_samples=POSITIVE, prompt_len=POSITIVE, gen_length=POSITIVE,
                          steps=NON_NEGATIVE, block_length=NON_NEGATIVE, temperature=NON_NEGATIVE,
                          remasking=one_of(*REMASKING), seed=NON_NEGATIVE))
    if not all(ckpts.split(",")):
        fail(f"--ckpts={ckpts!r} has an empty name: give comma-separated out_dirs")
    steps, block_length = steps or gen_length, block_length or gen_length
    if gen_length % block_length or steps % (gen_length // block_length):
        fail(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}, and --steps={steps} "
             f"of the number of blocks")
    check_device(device)
    judge_model, judge_ckpt = load_checkpoint(judge, device, hint="train the judge: python train.py config/judge.py")
    if not judge_model.config.causal:
        fail(f"the judge {judge} must be an autoregressive model (objective=ar)")
    judge_model.eval()
    meta = judge_ckpt["meta"]
    data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", judge_ckpt["config"]["dataset"])
    if not os.path.isfile(os.path.join(data_dir, "val.bin")):
        fail(f"the judge's dataset {data_dir} has no val.bin: prepare it first")
    decode = get_codec(meta)[1]

    # prompts and their real continuations: evenly spaced val windows
    T = prompt_len + gen_length
    real = val_windows(data_dir, T)
    if len(real) == 0:
        fail(f"the val split of {data_dir} is shorter than prompt_len + gen_length = {T} tokens")
    real = real[torch.linspace(0, len(real) - 1, num_samples).long()].to(device)
    prompts = real[:, :prompt_len]
    models = []
    for out_dir in ckpts.split(","):
        model, ckpt = load_checkpoint(out_dir, device)
        if not same_tokens(ckpt["meta"], meta):
            fail(f"{out_dir} was trained on other data than the judge ({ckpt['config'].get('dataset')})")
        if T > model.config.block_size:
            fail(f"prompt_len + gen_length = {T} exceeds {out_dir}'s context of {model.config.block_size}")
        models.append((out_dir, model.eval(), ckpt))
    T_nll = min(m.config.block_size for _, m, _ in models)  # every model scored on the same windows
    windows = val_windows(data_dir, T_nll).to(device)

    val_ids = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint16).tolist()
    tok_per_char = len(val_ids) / len(decode(val_ids))  # 1 for characters; ~0.3 for GPT-2 BPE on English
    print("| model | params | train tokens | wall-clock | val NLL (nats/token) | bits/char | gen PPL | entropy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    shown = []

    def row(name, cells, samples, eos=-1):
        ppl, h = gen_ppl(judge_model, samples, prompt_len, eos), entropy(samples, prompt_len, eos)
        print(f"| {name} | " + " | ".join(cells + [f"{ppl:.2f}", f"{h:.3f}"]) + " |", flush=True)
        shown.append((name, cut_at_eos(samples[0].tolist(), eos, prompt_len)))  # the judge's vocabulary has no EOS

    row("val text", [""] * 5, real)  # the reference: the real continuations
    for out_dir, model, ckpt in models:
        g = torch.Generator(device=device).manual_seed(seed)
        eos = ckpt["meta"].get("eos_id", -1)  # an SFT vocabulary's EOS, past the judge's embedding: cut there
        try:
            if model.config.causal:
                samples = ar.generate(model, prompts, gen_length, temperature, g)
            else:
                samples, _ = generate(model, prompts, steps=steps, gen_length=gen_length, block_length=block_length,
                                      temperature=temperature, remasking=remasking, eos_id=eos, generator=g)
        except ValueError as e:  # the sampler's own checks, as sample.py reports them
            fail(e)
        mean, se = heldout_nll(model, windows, n_draws, seed)
        cells = [f"{model.num_params() / 1e6:.2f}M", f"{ckpt['tokens'] / 1e6:.1f}M", f"{ckpt['train_time'] / 60:.1f} min",
                 f"{mean:.3f} +- {se:.3f} ({'exact' if model.config.causal else 'bound'})"]
        cells += [f"{mean / math.log(2) * tok_per_char:.3f}"]
        row(f"{out_dir} ({'AR' if model.config.causal else 'MDLM'})", cells, samples, eos)
    print(f"\nval NLL: {len(windows)} val windows of {T_nll} tokens, token 0 given; diffusion bound over "
          f"{n_draws} draws per window. Samples: {num_samples} x {gen_length} tokens after {prompt_len}-token "
          f"val prompts; diffusion: {steps} steps, blocks of {block_length}, {remasking} remasking; temperature "
          f"{temperature}. Judge: {judge} ({judge_model.num_params() / 1e6:.2f}M, AR).")
    for name, ids in shown:
        print(f"\n--- {name}:\n{decode(ids)}")
