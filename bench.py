"""
Speed and quality of the samplers, side by side in one run on one machine.

    python bench.py --what=samplers                                     # sample.py's samplers
    python bench.py --what=fast --out_dir=out-shakespeare-long           # Fast-dLLM vs the baseline
    python bench.py --what=fewstep --out_dir=out-shakespeare-char,out-shakespeare-duo --temperature=1
    python bench.py --what=fewstep --out_dir=out-shakespeare-duo --temperature=1 --greedy_tail=False --top_p=0.95

Every row of a table is measured in the same run, on the same prompts (the starts of val windows),
one prompt at a time (batch size 1, as in Fast-dLLM's figures), the methods interleaved prompt by
prompt so that the load of a shared machine weighs on every row alike. Quality stands beside every speed:
gen PPL and entropy under the AR judge (eval.py), and for --what=fast the agreement of the
generated tokens with the baseline's. Speed-ups are ratios of tokens/s measured in this run
(generated non-EOS tokens over wall-clock; the prompt is never counted).
"""

import os
import pickle
import sys
import time

import torch

import ar
import duo
import fast_sample
import sample
from configurator import NON_NEGATIVE, POSITIVE, UNIT, check, check_device, configure, fail, one_of, rule
from eval import entropy, gen_ppl, generated, val_windows
from sample import cut_at_eos
from model import load_checkpoint
from tokenizer import load_sft, same_tokens
from unmask import canvas

# -----------------------------------------------------------------------------
what = "samplers"               # 'samplers' (sample.py), 'fast' (fast_sample.py vs sample.py) or 'fewstep' (MDLM vs Duo)
out_dir = "out-shakespeare-char"  # fewstep: comma-separated out_dirs
judge = "out-judge-char"
num_samples = 8                 # prompts (one generation each per row)
prompt_len = 16
gen_length = 96                 # samplers: the generation length
lengths = "128,256,512,1024"    # fast: generation lengths (those that fit the model's context)
temperature = 0.0
block_length = 32
threshold = 0.9
factor = 1.0
eta = 0.02                      # remdm's re-masking cap
ar_out_dir = ""                 # fast: also an AR model's greedy decoding with its K/V cache, in the same table
split = "val"                   # fast, on a task (SFT records): the split whose prompts are answered
step_counts = "8,16,32,64,256"  # fewstep: the numbers of sampling steps
top_p = 1.0                     # fewstep, Duo: nucleus on the model's prediction (as sample.py)
greedy_tail = True              # fewstep, Duo: one more forward at t = 0, the most likely tokens
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------


def timed(f):
    """(f(), seconds it took), waiting for the GPU if there is one."""
    t0 = time.perf_counter()
    out = f()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(fns, prompts, seed=1337):
    """Generate for each prompt alone with every fn(x, generator) -> (samples, NFE) in turn,
    interleaved prompt by prompt so that a slow spell of a shared machine hits every method alike;
    per fn: (samples (N, P + L), NFE per sample, seconds)."""
    res = [([], 0.0, 0.0) for _ in fns]
    for j in range(len(prompts)):
        for i, fn in enumerate(fns):
            g = torch.Generator(device=prompts.device).manual_seed(seed + j)
            (out, n), dt = timed(lambda: fn(prompts[j:j + 1], g))
            outs, nfe, secs = res[i]
            res[i] = (outs + [out], nfe + (n or 0), secs + dt)
    return [(torch.cat(outs), nfe / len(prompts), secs) for outs, nfe, secs in res]


def bench_samplers(model, judge, prompts, L, *, block_length=32, temperature=0.0, eta=0.02, seed=1337, eos=-1):
    """One row per sampler and step count: NFE, gen PPL, entropy, seconds per sample."""
    P = prompts.size(1)
    print("| sampler | steps | NFE | gen PPL | entropy | s/sample |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for steps in (L // 4, L // 2, L):
        for name, rm, bl in [(f"llada low_confidence, blocks of {block_length}", "low_confidence", block_length),
                             ("llada low_confidence, one block", "low_confidence", L),
                             (f"llada margin, blocks of {block_length}", "margin", block_length),
                             (f"llada entropy, blocks of {block_length}", "entropy", block_length),
                             ("llada random, one block", "random", L)]:
            if steps % (L // bl) == 0:
                rows.append((name, steps, lambda x, g, s=steps, rm=rm, bl=bl: sample.generate(
                    model, x, steps=s, gen_length=L, block_length=bl, temperature=temperature, remasking=rm,
                    eos_id=eos, generator=g)))
    for steps in (L // 4, L // 2, L, 2 * L):  # more steps than tokens: room for ReMDM to revise
        for name, e in [("mdlm ancestral", 0.0), (f"remdm (eta {eta})", eta)]:
            rows.append((name, steps, lambda x, g, s=steps, e=e: sample.generate_ancestral(
                model, x, steps=s, gen_length=L, temperature=temperature, eta=e, eos_id=eos, generator=g)))
    for (name, steps, _), (samples, nfe, secs) in zip(rows, run([fn for _, _, fn in rows], prompts, seed)):
        ppl, h = gen_ppl(judge, samples, P, eos), entropy(samples, P, eos)
        print(f"| {name} | {steps} | {nfe:.1f} | {ppl:.2f} | {h:.3f} | {secs / len(prompts):.2f} |", flush=True)


def bench_fast(model, judge, prompts, Ls, *, block_length=32, temperature=0.0, threshold=0.9, factor=1.0,
               seed=1337, eos=-1, answers=None, ar_model=None):
    """For each generation length: the baseline (sample.py) and Fast-dLLM's caches and rules, with
    tok/s, NFE, speed-up, quality and agreement with the baseline's tokens; then the cost of one full
    forward against one dual-cache block step. Quality: gen PPL and entropy under the judge, or, for a
    task (answers: the right answer of each prompt), exact-match accuracy. ar_model: also an AR model's
    greedy decoding with its K/V cache (ar.generate), stopping at EOS, in the same run."""
    P = prompts.size(1)
    configs = [("baseline (sample.py)", None),
               (f"+ parallel (threshold {threshold})", dict(cache="none", threshold=threshold)),
               ("+ prefix cache", dict(cache="prefix", threshold=0.0)),
               ("+ dual cache", dict(cache="dual", threshold=0.0)),
               (f"+ prefix cache + parallel ({threshold})", dict(cache="prefix", threshold=threshold)),
               (f"+ dual cache + parallel ({threshold})", dict(cache="dual", threshold=threshold)),
               (f"+ dual cache + factor ({factor})", dict(cache="dual", threshold=0.0, factor=factor))]
    if eos >= 0:  # how much of the speed-up is the EOS stop (the reference decodes every position)
        configs.append((f"+ dual cache + parallel ({threshold}), no EOS stop",
                        dict(cache="dual", threshold=threshold, eos_stop=False)))
    if ar_model is not None:
        configs.append(("AR greedy + K/V cache (ar.py)", "ar"))

    def quality(samples):
        if answers is None:
            return [f"{gen_ppl(judge, samples, P, eos):.2f}", f"{entropy(samples, P, eos):.3f}"]
        right = [cut_at_eos(row[P:], eos, 0) == a for row, a in zip(samples.tolist(), answers)]
        return [f"{100 * sum(right) / len(right):.1f}%"]
    cols = "gen PPL | entropy" if answers is None else "accuracy"
    print(f"| L | method | tok/s | NFE | speed-up | tokens/sample | {cols} | agree |")
    print("| --- " * (8 + (answers is None)) + "|")
    for L in Ls:  # one length at a time, every method on the same prompts, the baseline first
        opts = dict(steps=L, gen_length=L, block_length=block_length, temperature=temperature, eos_id=eos)
        fns = [(lambda x, g, o=opts: sample.generate(model, x, generator=g, **o)) if kw is None else
               (lambda x, g, L=L: (ar.generate(ar_model, x, L, temperature, g, eos_id=eos), None)) if kw == "ar" else
               (lambda x, g, o=opts, kw=kw: fast_sample.generate(model, x, generator=g, **o, **kw)) for _, kw in configs]
        for (name, kw), (samples, nfe, secs) in zip(configs, run(fns, prompts, seed)):
            tokens = int(generated(samples, P, eos).sum())  # before the first EOS, as the output is cut
            if kw is None:
                base, base_tok_s = samples, tokens / secs
            if kw == "ar":  # one forward per token written, EOS included
                nfe = float(generated(samples, P, eos).sum(1).add(1).clamp(max=L).float().mean())
            agree = (samples[:, P:] == base[:, P:]).float().mean().item()
            print(f"| {L} | {name} | {tokens / secs:.1f} | {nfe:.1f} | {tokens / secs / base_tok_s:.1f}x | "
                  f"{tokens / len(prompts):.0f} | " + " | ".join(quality(samples)) + f" | {agree:.2f} |", flush=True)
    print("\n| L | one forward: all P + L positions | one block with the dual cache | ratio |")
    print("| --- | --- | --- | --- |")
    for L in Ls:  # what a baseline step and a cached step cost (medians of 20, batch 1)
        full, step = forward_costs(model, prompts[:1], L, block_length)
        print(f"| {L} | {full:.1f} ms | {step:.1f} ms | {full / step:.1f} |")


def bench_fewstep(models, judge, prompts, L, step_counts, *, temperature=1.0, top_p=1.0, greedy_tail=True, seed=1337,
                  real=None):
    """Few-step generation: every model at every step count, all prompts in one batch; a masked model
    by MDLM ancestral sampling (each step reveals by the true posterior), a uniform-state one by
    duo.generate (top_p, greedy_tail: its options). "tail rewrites": the share of generated tokens the
    greedy tail changed (a model that trusts what it reads at t = 0 changes few). models: [(name, model)].
    real: the val windows (B, P + L) the prompts come from; the share of their last L tokens that each
    uniform-state model's tail rewrites is printed under the table (the same measure on data)."""
    P = prompts.size(1)
    print("| model | sampler | steps | NFE | gen PPL | entropy | tail rewrites | s/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model in models:
        for steps in step_counts:
            g, last = torch.Generator(device=prompts.device).manual_seed(seed), {}
            has_tail = model.config.time_cond and greedy_tail  # the last on_step call is the tail's
            if model.config.time_cond:
                kind = "duo" + (", greedy tail" if greedy_tail else "") + (f", top_p {top_p}" if top_p < 1 else "")
                fn = lambda: duo.generate(model, prompts, steps=steps, gen_length=L, temperature=temperature,  # noqa: E731
                                          top_p=top_p, greedy_tail=greedy_tail, generator=g,
                                          on_step=lambda x, changed: last.update(changed=changed))
            else:
                kind, fn = "mdlm ancestral", lambda: sample.generate_ancestral(
                    model, prompts, steps=steps, gen_length=L, temperature=temperature, generator=g)
            (samples, nfe), secs = timed(fn)
            rewrites = f"{100 * last['changed'][:, P:].float().mean():.1f}%" if has_tail else "-"
            print(f"| {name} | {kind} | {steps} | {nfe:.1f} | {gen_ppl(judge, samples, P):.2f} | "
                  f"{entropy(samples, P):.3f} | {rewrites} | {secs / len(prompts):.3f} |", flush=True)
    for name, model in models:
        if real is not None and model.config.time_cond:
            print(f"\n{name}: its greedy tail rewrites {100 * (duo.tail(model, real) != real)[:, P:].float().mean():.1f}%"
                  " of the val text itself")


@torch.no_grad()
def forward_costs(model, prompt, L, block_length, n=20):
    """Milliseconds of a forward over the whole canvas (what the baseline pays per step) and of a
    dual-cache step over the first block (what fast_sample.py pays): medians of n runs."""
    x, P = canvas(prompt, L, model.config.mask_id), prompt.size(1)
    _, kv = model(x, return_kv=True)

    def ms(f):
        return 1e3 * sorted(timed(f)[1] for _ in range(n))[n // 2]
    return ms(lambda: model(x)), ms(lambda: model(x[:, P:P + block_length], start=P, kv=kv))


def prompts_for(data_dir, T, num_samples, prompt_len, split="val"):
    """(num_samples prompts, what follows them), evenly spaced over a split: the starts of val windows
    of T tokens and the windows themselves, or, for an SFT dataset, the prompts of its records (all of
    one length, e.g. shakespeare_speech, automaton) and their responses."""
    if os.path.exists(os.path.join(data_dir, f"{split}_sft.pkl")):
        records = load_sft(data_dir, split, 10**9)
        records = [records[i] for i in torch.linspace(0, len(records) - 1, num_samples).long().tolist()]
        if len({len(p) for p, _, _ in records}) > 1 or any(h for _, _, h in records):
            raise ValueError(f"the {split} prompts of {data_dir} must all have one length and no holes")
        return torch.tensor([p for p, _, _ in records]), [r for _, r, _ in records]
    w = val_windows(data_dir, T)
    if len(w) == 0:
        raise ValueError(f"the val split of {data_dir} is shorter than {T} tokens")
    w = w[torch.linspace(0, len(w) - 1, num_samples).long()]
    return w[:, :prompt_len], w


def parse_lengths(text):
    """'128,256' -> [128, 256]; None unless every item is a positive integer."""
    try:
        Ls = [int(v) for v in text.split(",")]
    except ValueError:
        return None
    return Ls if all(L > 0 for L in Ls) else None


if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys}))
    check(globals(), dict(what=one_of("samplers", "fast", "fewstep"), num_samples=POSITIVE, prompt_len=POSITIVE,
                          split=one_of("train", "val", "test"),
                          gen_length=POSITIVE, lengths=rule(parse_lengths, "comma-separated positive integers"),
                          step_counts=rule(parse_lengths, "comma-separated positive integers"),
                          temperature=NON_NEGATIVE, block_length=POSITIVE, threshold=UNIT, factor=NON_NEGATIVE,
                          eta=UNIT, seed=NON_NEGATIVE, top_p=rule(lambda v: 0 < v <= 1, "in (0, 1]")))
    Ls = parse_lengths(lengths)
    for L in [gen_length] if what == "samplers" else Ls if what == "fast" else []:
        if L % block_length:
            fail(f"--block_length={block_length} must divide every generation length ({L})")
    if what != "fewstep" and "," in out_dir:
        fail(f"--out_dir={out_dir!r}: one checkpoint for --what={what} (several only for --what=fewstep)")
    if not all(out_dir.split(",")):
        fail(f"--out_dir={out_dir!r} has an empty name")
    check_device(device)
    if what == "fewstep":
        judge_model, judge_ckpt = load_checkpoint(judge, device, hint="train the judge: python train.py config/judge.py")
        if not judge_model.config.causal:
            fail(f"the judge {judge} must be an autoregressive model")
        models = []
        for d in out_dir.split(","):
            m, ck = load_checkpoint(d, device)
            if m.config.causal or not same_tokens(ck["meta"], judge_ckpt["meta"]):
                fail(f"{d} must be a diffusion model trained on the judge's data")
            if prompt_len + gen_length > m.config.block_size:
                fail(f"prompt_len + gen_length exceeds {d}'s context of {m.config.block_size}")
            models.append((d, m.eval()))
        data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", judge_ckpt["config"]["dataset"])
        try:
            prompts, real = prompts_for(data_dir, prompt_len + gen_length, num_samples, prompt_len)
        except ValueError as e:
            fail(e)
        real = real.to(device)
        bench_fewstep(models, judge_model.eval(), prompts.to(device), gen_length, parse_lengths(step_counts),
                      temperature=temperature, top_p=top_p, greedy_tail=greedy_tail, seed=seed, real=real)
        print(f"\n{num_samples} samples of {gen_length} tokens after {prompt_len}-token val prompts, temperature "
              f"{temperature}, one batch; val text: gen PPL {gen_ppl(judge_model, real, prompt_len):.2f}, entropy "
              f"{entropy(real, prompt_len):.3f}. Judge: {judge}.")
        sys.exit(0)
    model, ckpt = load_checkpoint(out_dir, device)
    task = ckpt["meta"].get("task")  # a task is scored by its answers: no judge needed
    if model.config.causal or model.config.time_cond:
        fail("out_dir must hold a masked diffusion model (Duo: --what=fewstep)")
    if task and what != "fast":
        fail(f"{out_dir} was trained on a task ({task}): --what=fast, or eval.py --mode=accuracy")
    if not task:
        judge_model, judge_ckpt = load_checkpoint(judge, device, hint="train the judge: python train.py config/judge.py")
        if not judge_model.config.causal:
            fail(f"the judge {judge} must be an autoregressive model")
        if not same_tokens(ckpt["meta"], judge_ckpt["meta"]):
            fail(f"{out_dir} and the judge {judge} were trained on different data")
        judge_model.eval()
    ar_model = None
    if ar_out_dir:
        ar_model, ar_ckpt = load_checkpoint(ar_out_dir, device)
        if not ar_model.config.causal or not same_tokens(ar_ckpt["meta"], ckpt["meta"]):
            fail(f"--ar_out_dir={ar_out_dir} must hold an AR model trained on {out_dir}'s data")
        ar_model.eval()
    model.eval()
    data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", ckpt["config"]["dataset"])
    if not any(os.path.isfile(os.path.join(data_dir, f)) for f in ("val.bin", "val_sft.pkl")):
        fail(f"{out_dir}'s dataset {data_dir} is not prepared")
    eos = ckpt["meta"].get("eos_id", -1)
    torch.manual_seed(seed)
    opts = dict(block_length=block_length, temperature=temperature, seed=seed, eos=eos)
    try:
        if what == "samplers":
            if prompt_len + gen_length > model.config.block_size:
                fail(f"prompt_len + gen_length exceeds the model's context of {model.config.block_size}")
            prompts, real = prompts_for(data_dir, prompt_len + gen_length, num_samples, prompt_len)
            bench_samplers(model, judge_model, prompts.to(device), gen_length, eta=eta, **opts)
            if torch.is_tensor(real):
                real = real.to(device)
                print(f"\n{len(prompts)} samples of {gen_length} tokens after {prompt_len}-token val prompts, "
                      f"temperature {temperature}; val text: gen PPL {gen_ppl(judge_model, real, prompt_len):.2f}, "
                      f"entropy {entropy(real, prompt_len):.3f}")
        else:
            prompts, follow = prompts_for(data_dir, prompt_len + max(Ls), num_samples, prompt_len, split)
            P = prompts.size(1)
            Ls = [L for L in Ls if P + L <= model.config.block_size]
            if not Ls:
                fail(f"no length in {lengths} fits the model's context of {model.config.block_size} with a "
                     f"{P}-token prompt")
            bench_fast(model, None if task else judge_model, prompts.to(device), Ls, threshold=threshold,
                       factor=factor, answers=follow if task else None, ar_model=ar_model, **opts)
            print(f"\n{len(prompts)} prompts of {P} tokens, one at a time; steps = L, blocks of {block_length}, "
                  f"temperature {temperature}, low-confidence remasking; tok/s: generated tokens before the first EOS "
                  f"per second; speed-up: over the baseline's tok/s in this run; agree: the fraction of generated "
                  f"positions equal to the baseline's. {'Task: ' + task + ', ' + split + ' split' if task else 'Judge: ' + judge}. "
                  f"Device: {device}, {torch.get_num_threads()} threads.")
    except ValueError as e:
        fail(e)
