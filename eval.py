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

With --mode=accuracy it scores answers that can be checked instead (data/sudoku, data/automaton,
data/gsm8k): every record of a split is answered with any sampler (sample.py's, --fast, Duo's, or an
AR checkpoint's greedy decoding with its K/V cache), in batches, and the table gives exact match
(and for Sudoku the blank cells filled right and the valid grids), NFE and answer tokens per second:

    python eval.py --mode=accuracy --ckpts=out-sudoku,out-sudoku-ar
    python eval.py --mode=accuracy --ckpts=out-automaton --gen_length=256 --block_length=32 --fast --threshold=0.9
"""

import math
import os
import re
import sys
import time
from itertools import groupby

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

import ar
import duo
from configurator import (NON_NEGATIVE, POSITIVE, UNIT, check, check_device, check_writable, configure, fail, given,
                          one_of)
from diffusion import nll_bound
from model import load_checkpoint
import fast_sample
import sample
from sample import SAMPLERS, cut_at_eos, generate
from tokenizer import as_pair, get_codec, load_sft, same_tokens
from unmask import REMASKING, left_pad


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
    if model.config.time_cond:  # uniform-state diffusion: its discrete NELBO
        return duo.nll_bound(model, batches, n_draws=n_draws, seed=seed, maskable=maskable)
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
# Task accuracy

def is_sudoku(digits):
    """Whether 81 digits hold each of 1..9 once in every row, column and box."""
    if len(digits) != 81:
        return False
    g = [list(digits[r * 9:r * 9 + 9]) for r in range(9)]
    boxes = [[g[r][c] for r in range(br, br + 3) for c in range(bc, bc + 3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
    return all(sorted(u) == list(range(1, 10)) for u in g + [list(c) for c in zip(*g)] + boxes)


@torch.no_grad()
def answer_records(model, records, meta, *, batch_size=64, gen_length=0, generator=None, on_step=None, **opts):
    """Every record answered by the model: (answers, targets, NFE per record, seconds). An answer is what
    the model wrote: for a diffusion model the prompt with its holes filled (infilling records) then the
    generated tokens up to the first EOS; for an AR model (tokenizer.as_pair) its tokens up to EOS. The
    target is the same for the data. gen_length: tokens after each prompt (0: the longest response + 1,
    as the rows of training end: an infilling record's canvas then ends with the slot of its EOS).
    opts: sample.sample's sampler options (an AR model decodes greedily at opts' temperature)."""
    m, eos = meta["mask_id"], meta["eos_id"]
    answers, targets, nfe, t0 = [], [], 0.0, time.perf_counter()
    length = lambda i: len(records[i][0])  # noqa: E731  (of record i's prompt)
    order = sorted(range(len(records)), key=length)  # equal prompt lengths batch together
    batches = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    if model.config.causal:  # AR decoding has no padding: a batch is cut where the prompt length changes
        batches = [list(g) for b in batches for _, g in groupby(b, length)]
    for b in tqdm(batches, desc="answering", unit="batch", leave=False):
        batch = [records[i] for i in b]
        pairs = [as_pair(r, m) for r in batch]
        L = gen_length or max(len(r) for _, r, _ in batch) + 1  # the longest answer and its EOS, as in training
        if model.config.causal:  # the answer and its EOS, as far as the context allows (a longer answer is cut)
            x = torch.tensor([p for p, _ in pairs])
            T = min(max(len(a) for _, a in pairs) + 1, model.config.block_size - x.size(1))
            out = ar.generate(model, x.to(next(model.parameters()).device), T, opts.get("temperature", 0.0),
                              generator, eos_id=eos)
            hit = out[:, x.size(1):] == eos  # forwards: up to the last row's first EOS
            n = int(torch.where(hit.any(1), hit.int().argmax(1) + 1, T).max())
            got = [cut_at_eos(row[x.size(1):], eos, 0) for row in out.tolist()]
        else:
            prompts = [p if rec[2] else rec[0] for (p, _), rec in zip(pairs, batch)]  # holes masked
            x, pad = left_pad(prompts, eos)
            out, n = sample.sample(model, x.to(next(model.parameters()).device), gen_length=L, eos_id=eos,
                                   pad=pad if pad.any() else None, generator=generator, on_step=on_step, **opts)
            on_step = None  # the order is recorded for the first batch only
            P = x.size(1)  # each prompt ends at P (left padding)
            got = [(row[P - len(rec[0]):P] if rec[2] else []) + cut_at_eos(row[P:], eos, 0)
                   for row, rec in zip(out.tolist(), batch)]
        answers += got
        targets += [a for _, a in pairs]
        nfe += n * len(batch)
    return answers, targets, nfe / max(1, len(records)), time.perf_counter() - t0


def score(answers, targets, records, meta):
    """{'exact': fraction right, and for Sudoku 'cells': blanks filled right, 'valid': valid grids}."""
    decode = get_codec(meta)[1]
    if meta.get("task") == "gsm8k":
        right = [extract_answer(decode(a)) == extract_answer(decode(t)) for a, t in zip(answers, targets)]
    else:
        right = [a == t for a, t in zip(answers, targets)]
    out = dict(exact=sum(right) / max(1, len(right)))
    if meta.get("task") == "sudoku":  # answers are the 81 cells (an AR answer too: as_pair's whole grid)
        holes = [h for _, _, h in records]
        out["cells"] = sum(sum(len(a) > i and a[i] == t[i] for i in h) for a, t, h in zip(answers, targets, holes)) \
            / max(1, sum(map(len, holes)))
        digits = lambda a: [int(c) if c.isdigit() else 0 for c in decode(a)]  # noqa: E731
        out["valid"] = sum(is_sudoku(digits(a)) for a in answers) / max(1, len(answers))
    return out


def order_grid(steps, holes):
    """A Sudoku's blanks as a 9 x 9 text grid of the step at which the sampler filled each ('.' for a given)."""
    cells = [f"{steps[i]:>3}" if i in holes else "  ." for i in range(81)]
    return "\n".join(" ".join("".join(cells[r * 9 + c:r * 9 + c + 3]) for c in (0, 3, 6)) for r in range(9))


# -----------------------------------------------------------------------------
mode = "table"                  # 'table' (NLL, gen PPL, entropy against the judge) or 'accuracy' (a task's answers)
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
# accuracy: the split, the sampler (table defaults above apply unless given; accuracy's own: temperature 0,
# low_confidence, steps 0 = one token per step), batching, and the order in which a Sudoku was filled
split = "test"
max_records = 0                 # score the first this many records (0: all)
batch_size = 64
sampler = "llada"               # as sample.py: llada, ancestral, remdm (a Duo or AR checkpoint uses its own)
fast = False
cache = "dual"
threshold = 0.9
factor = 0.0
order = ""                      # write the step at which each blank of the first record was filled to this file
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------

def accuracy_main():
    """--mode=accuracy: one row per checkpoint, every record of --split answered and scored."""
    # the table's defaults are not the task's: an option not given on the command line takes the task's own
    # (the table's 112 is not an answer's length; answers are greedy, the most confident cell first)
    typed = given()
    L = gen_length if "gen_length" in typed else 0
    opts = dict(sampler=sampler, fast=fast, cache=cache, threshold=threshold, factor=factor, block_length=block_length,
                steps=steps, temperature=temperature if "temperature" in typed else 0.0,
                remasking=remasking if "remasking" in typed else "low_confidence")
    print("| model | sampler | records | exact | cells | valid grids | NFE | answer tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for out_dir in ckpts.split(","):
        model, ckpt = load_checkpoint(out_dir, device)
        meta = ckpt["meta"]
        get_codec(meta)  # the answers are decoded to be scored: a tokenizer that cannot load stops us before the work
        data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", ckpt["config"]["dataset"])
        try:
            records = load_sft(data_dir, split, model.config.block_size)
        except ValueError as e:
            fail(f"{out_dir}'s dataset has no {split} split of SFT records ({e})")
        records = records[:max_records or len(records)]
        g = torch.Generator(device=device).manual_seed(seed)
        steps_at = {}

        def record_order(x, chosen, k=[0]):  # the step at which each position of the first record was filled
            k[0] += 1
            for i in chosen[0].nonzero().flatten().tolist():
                steps_at[i] = k[0]
        kw = dict(opts)
        answer_len = L or max(len(r) for _, r, _ in records) + 1
        if not model.config.causal and not kw["steps"]:  # one token per step: every hole and generated token
            kw["steps"] = answer_len + max(len(h) for _, _, h in records)
        if kw["block_length"] == 0:  # one block
            kw["block_length"] = answer_len
        try:
            answers, targets, nfe, secs = answer_records(model, records, meta, batch_size=batch_size,
                                                         gen_length=L, generator=g,
                                                         on_step=record_order if order else None, **kw)
        except ValueError as e:
            fail(e)
        res = score(answers, targets, records, meta)
        # answer tokens: the holes and what follows the prompt (an AR model's copy of the givens not counted)
        n_tok = sum(len(h) + max(0, len(a) - (len(p) if h else 0)) for (p, _, h), a in zip(records, answers))
        kind = "AR greedy" if model.config.causal else "duo" if model.config.time_cond else \
            ("fast " + cache + f", thr {threshold}" if fast else sampler) + f", {kw['remasking']}"
        cells = [f"{100 * res[k]:.1f}%" if k in res else "" for k in ("exact", "cells", "valid")]
        print(f"| {out_dir} | {kind} | {len(records)} | " + " | ".join(cells) + f" | {nfe:.1f} | {n_tok / secs:.1f} |",
              flush=True)
        if order and records and records[0][2]:
            with open(order, "w") as f:
                f.write(order_grid(steps_at, set(records[0][2])) + "\n")


if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    defaults = {k: globals()[k] for k in config_keys}
    globals().update(configure(defaults))
    check(globals(), dict(mode=one_of("table", "accuracy"), n_draws=POSITIVE, num_samples=POSITIVE,
                          prompt_len=POSITIVE, gen_length=NON_NEGATIVE if mode == "accuracy" else POSITIVE,
                          steps=NON_NEGATIVE, block_length=NON_NEGATIVE, temperature=NON_NEGATIVE,
                          remasking=one_of(*REMASKING), seed=NON_NEGATIVE, max_records=NON_NEGATIVE,
                          batch_size=POSITIVE, sampler=one_of(*SAMPLERS), cache=one_of(*fast_sample.CACHES),
                          threshold=UNIT, factor=NON_NEGATIVE))
    if not all(ckpts.split(",")):
        fail(f"--ckpts={ckpts!r} has an empty name: give comma-separated out_dirs")
    check_device(device)
    if order:
        check_writable(order, "order")
    if mode == "accuracy":
        if gen_length != defaults["gen_length"] and gen_length and block_length and gen_length % block_length:
            fail(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}")
        accuracy_main()
        sys.exit(0)
    steps, block_length = steps or gen_length, block_length or gen_length
    if gen_length % block_length or steps % (gen_length // block_length):
        fail(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}, and --steps={steps} "
             f"of the number of blocks")
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
            elif model.config.time_cond:  # Duo: ancestral with the greedy tail, `steps` steps
                samples, _ = duo.generate(model, prompts, steps=steps, gen_length=gen_length, temperature=temperature,
                                          generator=g)
            else:
                samples, _ = generate(model, prompts, steps=steps, gen_length=gen_length, block_length=block_length,
                                      temperature=temperature, remasking=remasking, eos_id=eos, generator=g)
        except ValueError as e:  # the sampler's own checks, as sample.py reports them
            fail(e)
        mean, se = heldout_nll(model, windows, n_draws, seed)
        cells = [f"{model.num_params() / 1e6:.2f}M", f"{ckpt['tokens'] / 1e6:.1f}M", f"{ckpt['train_time'] / 60:.1f} min",
                 f"{mean:.3f} +- {se:.3f} ({'exact' if model.config.causal else 'bound'})"]
        cells += [f"{mean / math.log(2) * tok_per_char:.3f}"]
        kind = "AR" if model.config.causal else "Duo" if model.config.time_cond else "MDLM"
        row(f"{out_dir} ({kind})", cells, samples, eos)
    print(f"\nval NLL: {len(windows)} val windows of {T_nll} tokens, token 0 given; diffusion bound over "
          f"{n_draws} draws per window. Samples: {num_samples} x {gen_length} tokens after {prompt_len}-token "
          f"val prompts; diffusion: {steps} steps, blocks of {block_length}, {remasking} remasking; temperature "
          f"{temperature}. Judge: {judge} ({judge_model.num_params() / 1e6:.2f}M, AR).")
    for name, ids in shown:
        print(f"\n--- {name}:\n{decode(ids)}")
