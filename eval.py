"""
Measuring a model: one stick for every claim in this project.

    python eval.py --ckpts=out-shakespeare-char,out-shakespeare-char-ar --judge=out-judge-char

For each checkpoint (of any family: masked diffusion, Duo, AR) it prints one row of a table:
- params, training tokens and wall-clock (from the checkpoint);
- held-out NLL on the same val tokens, nats/token and bits/char (nats/token / ln 2 x tokens/char):
  every non-overlapping window of the val split; token 0 of each window is given, tokens 1..T-1 are
  scored, by the family's nll(): AR's exact NLL; masked diffusion's bound (negative ELBO, LLaDA's
  lower-variance form: exactly l ~ U{1..T-1} tokens masked, weight (T-1)/l) or Duo's, averaged over
  n_draws noise draws per window, +- its standard error. A bound is >= the true NLL, so it favours
  AR when the two are compared;
- generative perplexity: samples continue prompts taken from the val split; an AR judge (a bigger
  causal model trained on the same data, config/judge.py) scores the generated tokens only, never
  the prompt: exp(mean NLL). A low gen PPL alone can hide repetitive text, so beside it:
- entropy: the unigram entropy (nats) of the tokens of each sample, averaged over samples.
A 'val text' row scores the real continuations of the same prompts: the reference for both.
Sampling for evaluation draws its Gumbel noise in float64.

With --mode=accuracy it scores answers that can be checked instead (data/sudoku, data/automaton,
data/gsm8k): every record of a split is answered by the checkpoint's family with any of its samplers
(LLaDA's, --fast, or an AR checkpoint's cached decoding), in batches, and the table gives exact match
(and for Sudoku the blank cells filled right and the valid grids), NFE and answer tokens per second:

    python eval.py --mode=accuracy --ckpts=out-sudoku,out-sudoku-ar
    python eval.py --mode=accuracy --ckpts=out-automaton --gen_length=256 --block_length=32 --fast --threshold=0.9

A pretrained model (--init_from, a Hugging Face folder or hub id: LLaDA, Dream, SDAR, Fast-dLLM v2)
answers a task prepared with another tokenizer: its records are decoded and encoded again in the model's
tokens (tokenizer.recode), with --fewshot examples (lm-eval's format) and --chat if asked:

    python eval.py --mode=accuracy --init_from=GSAI-ML/LLaDA-8B-Instruct --dataset=gsm8k --fewshot=5 --fast
"""

import math
import os
import re
import time

import numpy as np
import torch
from tqdm import tqdm

from ar import token_nll
from configurator import (NON_NEGATIVE, PATH, POSITIVE, SEED, check, check_device, check_memory, check_writable,
                          command_line_keys, configure, fail, one_of)
from families import load, pretrained
from sample import SAMPLE_OPTIONS, cut_at_eos, left_pad, option_defaults, option_rules, sampling
from tokenizer import (as_pair, check_stream, dataset_dir, get_codec, load_meta, load_sft, recode, same_tokens,
                       write_files)


def val_windows(data_dir, T, split="val"):
    """Every non-overlapping window of T tokens of a split's token stream, checked (check_stream): (N, T)."""
    check_stream(data_dir, split, load_meta(data_dir)["vocab_size"])
    data = np.fromfile(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16).astype(np.int64)
    n = len(data) // T
    return torch.from_numpy(data[:n * T].reshape(n, T))


def val_prompts(data_dir, T, num_samples, prompt_len, split="val"):
    """(num_samples prompts, what follows them), evenly spaced over a split: the starts of its windows
    of T tokens and the windows themselves, or, for an SFT dataset, the prompts of its records (all of
    one length, e.g. shakespeare_speech, automaton) and their responses. ValueError if there are none."""
    if os.path.exists(os.path.join(data_dir, f"{split}_sft.pkl")):
        records = load_sft(data_dir, split, 10**9, load_meta(data_dir)["vocab_size"])
        records = [records[i] for i in torch.linspace(0, len(records) - 1, num_samples).long().tolist()]
        if len({len(p) for p, _, _ in records}) > 1 or any(h for _, _, h in records):
            raise ValueError(f"the {split} prompts of {data_dir} must all have one length and no holes")
        return torch.tensor([p for p, _, _ in records]), [r for _, r, _ in records]
    w = val_windows(data_dir, T, split)
    if len(w) == 0:
        raise ValueError(f"the {split} split of {data_dir} is shorter than {T} tokens")
    w = w[torch.linspace(0, len(w) - 1, num_samples).long()]
    return w[:, :prompt_len], w


def heldout_nll(model, fam, windows, n_draws=8, seed=0, batch_size=64):
    """Nats per scored token on val windows (N, T), token 0 given and 1..T-1 scored, by the family's
    nll(): exact for AR, a bound for diffusion. (mean, standard error)."""
    scored = torch.ones(windows.size(1), dtype=torch.bool)
    scored[0] = False  # the same conditioning for every family: token 0 is context
    return fam.nll(model, windows, scored, n_draws=n_draws, seed=seed, batch_size=batch_size)


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


def quality(judge, samples, prompt_len, eos_id=-1):
    """The two quality cells of every table: gen PPL under the judge and entropy, as text."""
    return [f"{gen_ppl(judge, samples, prompt_len, eos_id):.2f}", f"{entropy(samples, prompt_len, eos_id):.3f}"]


def load_judge(path, device, meta=None):
    """(judge, its checkpoint): the AR model that scores samples, in eval mode; one line if it is missing,
    not autoregressive, or (given a dataset's meta) trained on other data."""
    judge, ckpt, fam = load(path, device, hint="train the judge: python train.py config/judge.py")
    if not fam.exact:
        fail(f"the judge {path} must be an autoregressive model (objective=ar)")
    if meta is not None and not same_tokens(meta, ckpt["meta"]):
        fail(f"the judge {path} was trained on other data ({ckpt['config']['dataset']})")
    return judge.eval(), ckpt


def extract_answer(text):
    """The final answer of a GSM8K-style response: what follows '####', else the last number."""
    hit = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    nums = [hit.group(1)] if hit else re.findall(r"-?[\d,]*\.?\d+", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else ""


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
def answer_records(model, fam, records, meta, *, batch_size=64, gen_length=0, generator=None, on_step=None, **opts):
    """Every record answered by the model: (answers, targets, NFE per record, seconds). A record is read
    as prompt -> target (tokenizer.as_pair: the prompt with its holes masked; for an infilling record the
    target is the whole text). An answer is what the model wrote: the prompt with its holes filled (a
    family that infills), then the tokens after the prompt up to the first EOS. gen_length: tokens after
    each prompt (0: the longest answer + its EOS, as the rows of training end). opts: the family's
    sampling options (fam.generate). Prompts of different lengths are left-padded with EOS."""
    m, eos = meta["mask_id"], meta["eos_id"]
    answers, targets, nfe, t0 = [], [], 0.0, time.perf_counter()
    order = sorted(range(len(records)), key=lambda i: len(records[i][0]))  # similar prompt lengths batch together
    for j in tqdm(range(0, len(order), batch_size), desc="answering", unit="batch", leave=False):
        batch = [records[i] for i in order[j:j + batch_size]]
        pairs = [as_pair(r, m) for r in batch]
        L = gen_length or max(len(r) if fam.infills else len(a) for (_, a), (_, r, _) in zip(pairs, batch)) + 1
        x, pad = left_pad([p for p, _ in pairs], eos)
        out, n = fam.generate(model, x.to(next(model.parameters()).device), gen_length=L, eos_id=eos,
                              pad=pad if pad.any() else None, generator=generator, on_step=on_step, **opts)
        on_step = None  # the order is recorded for the first batch only
        P = x.size(1)  # each prompt ends at P (left padding)
        answers += [(row[P - len(p):P] if rec[2] and fam.infills else []) + cut_at_eos(row[P:], eos, 0)
                    for row, rec, (p, _) in zip(out.tolist(), batch, pairs)]
        targets += [a for _, a in pairs]
        nfe += n * len(batch)
    return answers, targets, nfe / max(1, len(records)), time.perf_counter() - t0


def task_records(data_dir, split, meta, block_size, n=0, fewshot=0, chat=False):
    """(records, stop, meta) of a task for a model (meta: its checkpoint's): the split's first n records
    (0: all) whose prompts fit block_size, in the model's tokens (recode, when they are not the task's
    or examples or chat are asked for), and the meta their answers are scored with (the task's name added)."""
    task_meta = load_meta(data_dir)
    records = load_sft(data_dir, split, block_size, task_meta["vocab_size"])
    records, stop = records[:n or len(records)], ""
    if fewshot or chat or not same_tokens(task_meta, meta):
        shots = load_sft(data_dir, "train", block_size, task_meta["vocab_size"])[:fewshot]
        records, stop = recode(records, task_meta, meta, shots, chat)
        records = [r for r in records if len(r[0]) < block_size]
    return records, stop, dict(meta, task=task_meta.get("task"))


def score(answers, targets, records, meta, stop=""):
    """{'exact': fraction right, and for Sudoku 'cells': blanks filled right, 'valid': valid grids}. stop:
    a GSM8K answer is read up to this text (lm-eval's generation stop, 'Question:' after few-shot examples)."""
    decode = get_codec(meta)[1]
    if meta.get("task") == "gsm8k":
        cut = (lambda s: s.split(stop)[0]) if stop else (lambda s: s)
        right = [extract_answer(cut(decode(a))) == extract_answer(decode(t)) for a, t in zip(answers, targets)]
    elif meta["tokenizer"] == "hf":  # re-encoded answers: the same text may take other tokens
        right = [decode(a).strip() == decode(t).strip() for a, t in zip(answers, targets)]
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


class FillOrder:
    """An on_step callback: the step at which each position of the first row was committed."""

    def __init__(self):
        self.step, self.at = 0, {}

    def __call__(self, x, chosen):
        self.step += 1
        for i in chosen[0].nonzero().flatten().tolist():
            self.at[i] = self.step


# -----------------------------------------------------------------------------
mode = "table"                  # 'table' (NLL, gen PPL, entropy against the judge) or 'accuracy' (a task's answers)
ckpts = "out-shakespeare-char"  # comma-separated out_dirs
judge = "out-judge-char"        # out_dir of the AR judge
n_draws = 8                     # noise draws per val window for the diffusion bound
num_samples = 64
prompt_len = 16                 # prompt tokens, from the val split
gen_length = 112                # generated tokens per sample (accuracy: 0, the longest answer + its EOS)
# accuracy: the split, batching, and the order in which a Sudoku was filled
split = "test"
max_records = 0                 # score the first this many records (0: all)
batch_size = 64
init_from = ""                  # accuracy: a Hugging Face checkpoint (pretrained.py), folder or hub id, not --ckpts
dataset = ""                    # accuracy: the task answered (default: each checkpoint's own; needed with --init_from)
fewshot = 0                     # accuracy: the first k train records before each prompt as worked examples (lm-eval)
chat = False                    # accuracy, --init_from: each prompt wrapped in the checkpoint's chat template
order = ""                      # write the step at which each blank of the first record was filled to this file
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
globals().update(option_defaults())  # the sampling options (sample.SAMPLE_OPTIONS), with these defaults of eval's own:
block_length = 0                # one block: the table's exact samples and the task's answers decode the whole canvas
temperature = 1.0               # the table's samples are exact draws (accuracy: 0 unless given, the best answer)
remasking = "random"            # a uniformly random order, one token per step (accuracy: low_confidence unless given)
# -----------------------------------------------------------------------------


def accuracy_main():
    """--mode=accuracy: one row per checkpoint, every record of --split answered and scored."""
    # the table's defaults are not the task's: an option not given on the command line takes the task's own
    # (the table's 112 is not an answer's length; answers are greedy, the most confident cell first)
    typed = command_line_keys()
    L = gen_length if "gen_length" in typed else 0
    task = dict(globals(), temperature=temperature if "temperature" in typed else 0.0,
                remasking=remasking if "remasking" in typed else "low_confidence")
    print("| model | sampler | records | exact | cells | valid grids | NFE | answer tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for out_dir in [init_from] if init_from else ckpts.split(","):
        model, ckpt, fam = pretrained(out_dir, device) if init_from else load(out_dir, device)
        meta = ckpt["meta"]
        get_codec(meta)  # the answers are decoded to be scored: a tokenizer that cannot load stops us before the work
        records, stop, meta = task_records(dataset_dir(dataset or ckpt["config"]["dataset"]), split, meta,
                                           model.config.block_size, n=max_records, fewshot=fewshot, chat=chat)
        if not records:
            fail(f"{out_dir}'s dataset has no {split} record that fits its context")
        answer_len = L or max(len(r) for _, r, _ in records) + 1
        if max(len(p) for p, _, _ in records) + answer_len > model.config.block_size:
            fail(f"the longest {split} prompt ({max(len(p) for p, _, _ in records)} tokens) + answers of {answer_len} "
                 f"exceed {out_dir}'s context of {model.config.block_size} tokens (--gen_length)")
        opts = sampling(fam, task, answer_len, max(len(h) for _, _, h in records))  # steps 0: every hole and token
        fill = FillOrder()
        answers, targets, nfe, secs = answer_records(
            model.eval(), fam, records, meta, batch_size=batch_size, gen_length=L,
            generator=torch.Generator(device=device).manual_seed(seed), on_step=fill if order else None, **opts)
        res = score(answers, targets, records, meta, stop)
        # answer tokens: the holes and what follows the prompt (an AR model's copy of the givens not counted)
        n_tok = sum(len(h) + max(0, len(a) - (len(p) if h else 0)) for (p, _, h), a in zip(records, answers))
        cells = [f"{100 * res[k]:.1f}%" if k in res else "" for k in ("exact", "cells", "valid")]
        print(f"| {out_dir} | {fam.describe(**opts)} | {len(records)} | " + " | ".join(cells) + f" | {nfe:.1f} | "
              f"{n_tok / secs:.1f} |", flush=True)
        if order and records and records[0][2]:
            write_files(os.path.dirname(order) or ".",
                        {os.path.basename(order): (order_grid(fill.at, set(records[0][2])) + "\n").encode()})


def table_main():
    """--mode=table: held-out NLL, gen PPL and entropy of every checkpoint, beside the val text's."""
    judge_model, judge_ckpt = load_judge(judge, device)
    meta = judge_ckpt["meta"]
    data_dir = dataset_dir(judge_ckpt["config"]["dataset"])
    T = prompt_len + gen_length
    check_memory(num_samples * T * meta["vocab_size"] * 12, f"--num_samples={num_samples} samples of {T} tokens", device)
    prompts, real = val_prompts(data_dir, T, num_samples, prompt_len)
    prompts, real = prompts.to(device), real.to(device)
    models = []
    for out_dir in ckpts.split(","):
        model, ckpt, fam = load(out_dir, device)
        if not same_tokens(ckpt["meta"], meta):
            fail(f"{out_dir} was trained on other data than the judge ({ckpt['config'].get('dataset')})")
        if T > model.config.block_size:
            fail(f"prompt_len + gen_length = {T} exceeds {out_dir}'s context of {model.config.block_size}")
        opts = sampling(fam, globals(), gen_length)
        models.append((out_dir, model.eval(), ckpt, fam, opts))
    T_nll = min(net.config.block_size for _, net, _, _, _ in models)  # every model scored on the same windows
    windows = val_windows(data_dir, T_nll).to(device)
    decode = get_codec(meta)[1]
    val_ids = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint16).tolist()
    tok_per_char = len(val_ids) / len(decode(val_ids))  # 1 for characters; ~0.3 for GPT-2 BPE on English
    print("| model | params | train tokens | wall-clock | val NLL (nats/token) | bits/char | gen PPL | entropy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("| val text | " + " | ".join([""] * 5 + quality(judge_model, real, prompt_len)) + " |", flush=True)
    shown = [("val text", real[0].tolist())]
    for out_dir, model, ckpt, fam, opts in models:
        eos = ckpt["meta"].get("eos_id", -1)  # an SFT vocabulary's EOS, past the judge's embedding: cut there
        samples, _ = fam.generate(model, prompts, gen_length=gen_length, eos_id=eos,
                                  generator=torch.Generator(device=device).manual_seed(seed), **opts)
        mean, se = heldout_nll(model, fam, windows, n_draws, seed)
        cells = [f"{model.num_params() / 1e6:.2f}M", f"{ckpt['tokens'] / 1e6:.1f}M", f"{ckpt['train_time'] / 60:.1f} min",
                 f"{mean:.3f} +- {se:.3f} ({'exact' if fam.exact else 'bound'})", f"{mean / math.log(2) * tok_per_char:.3f}"]
        name = f"{out_dir} ({ckpt['config']['objective']}: {fam.describe(**opts)})"
        print(f"| {name} | " + " | ".join(cells + quality(judge_model, samples, prompt_len, eos)) + " |", flush=True)
        shown.append((name, cut_at_eos(samples[0].tolist(), eos, prompt_len)))  # the judge's vocabulary has no EOS
    print(f"\nval NLL: {len(windows)} val windows of {T_nll} tokens, token 0 given; diffusion bound over "
          f"{n_draws} draws per window. Samples: {num_samples} x {gen_length} tokens after {prompt_len}-token "
          f"val prompts; masked diffusion: {steps or gen_length} steps, blocks of {block_length or gen_length}, "
          f"{remasking} remasking; temperature {temperature}. Judge: {judge} ({judge_model.num_params() / 1e6:.2f}M, AR).")
    for name, ids in shown:
        print(f"\n--- {name}:\n{decode(ids)}")


if __name__ == "__main__":
    config_keys = [k for k, v in globals().items()  # its options: the lower-case names of plain values
                   if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys},
                               notes={k: what for k, (_, _, what) in SAMPLE_OPTIONS.items()}))
    check(globals(), dict(mode=one_of("table", "accuracy"), n_draws=POSITIVE, num_samples=POSITIVE,
                          prompt_len=POSITIVE, gen_length=NON_NEGATIVE if mode == "accuracy" else POSITIVE, judge=PATH,
                          seed=SEED, max_records=NON_NEGATIVE, batch_size=POSITIVE, fewshot=NON_NEGATIVE,
                          **option_rules()))
    if not all(c.strip() for c in ckpts.split(",")):
        fail(f"--ckpts={ckpts!r} has an empty name: give comma-separated out_dirs")
    if (init_from or dataset or fewshot or chat) and mode != "accuracy":
        fail("--init_from, --dataset, --fewshot and --chat are options of --mode=accuracy")
    if init_from and not dataset:
        fail("--init_from needs --dataset: a pretrained checkpoint has no task of its own (--dataset=gsm8k)")
    for c in [] if init_from else ckpts.split(","):  # every name before any work: a typo in the last one must not wait for the first
        if not os.path.isfile(os.path.join(c, "ckpt.pt") if os.path.isdir(c) else c):
            fail(f"--ckpts: checkpoint {c} not found (train one first: python train.py config/shakespeare.py)")
    check_device(device)
    if order:
        check_writable(order, "order")
    try:
        accuracy_main() if mode == "accuracy" else table_main()
    except ValueError as e:  # what the library functions refuse (a missing checkpoint, a bad sampler option)
        fail(e)
