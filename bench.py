"""
Speed and quality of the samplers, side by side in one run on one machine.

    python bench.py --what=samplers                                     # masked diffusion's samplers
    python bench.py --what=fast --out_dir=out-shakespeare-long           # Fast-dLLM vs the baseline
    python bench.py --what=fast --out_dir=out-automaton --other_dirs=out-automaton-ar,out-automaton-bd3 --split=test
    python bench.py --what=fast --init_from=GSAI-ML/LLaDA-8B-Instruct --dataset=gsm8k --split=test --fewshot=5
    python bench.py --what=fewstep --out_dir=out-shakespeare-char,out-shakespeare-duo --temperature=1
    python bench.py --what=fewstep --out_dir=out-shakespeare-duo --temperature=1 --greedy_tail=False --top_p=0.95
    python bench.py --what=cost --init_from=config/shapes/SDAR-1.7B-Chat   # random weights at a checkpoint's shape

Every row of a table is measured in the same run, on the same prompts (the starts of val windows),
one prompt at a time (batch size 1, as in Fast-dLLM's figures), the methods interleaved prompt by
prompt so that the load of a shared machine weighs on every row alike. Quality stands beside every speed:
gen PPL and entropy under the AR judge (eval.py), and for --what=fast the agreement of the
generated tokens with the baseline's. Speed-ups are ratios of tokens/s measured in this run
(generated non-EOS tokens over wall-clock; the prompt is never counted).
"""

import sys
import time

import torch

from configurator import (MAX_STEPS, PATH, POSITIVE, SEED, check, check_device, check_memory, configure, fail, one_of,
                          rule)
from eval import generated, load_judge, quality, score, task_records, val_prompts
from families import FAMILIES, load, pretrained
from model import GPT, rope_tables
from pretrained import read_config
from sample import SAMPLE_OPTIONS, canvas, cut_at_eos, left_pad, option_defaults, option_rules, sampling
from tokenizer import dataset_dir, load_meta, same_tokens

# -----------------------------------------------------------------------------
what = "samplers"               # 'samplers' (masked diffusion's samplers), 'fast' (Fast-dLLM vs LLaDA), 'fewstep' or 'cost'
out_dir = "out-shakespeare-char"  # fewstep: comma-separated out_dirs
judge = "out-judge-char"
num_samples = 8                 # prompts (one generation each per row)
prompt_len = 16
gen_length = 96                 # samplers, fewstep: the generation length
lengths = "128,256,512,1024"    # fast: generation lengths (those that fit the model's context)
other_dirs = ""                 # fast: other models' decodings too, comma-separated out_dirs (AR, block diffusion)
split = "val"                   # fast, on a task (SFT records): the split whose prompts are answered
init_from = ""                  # fast: a checkpoint in the Hugging Face layout (folder or hub id), not out_dir; cost:
                                # a folder whose config.json gives the shape (its weights are not read)
dataset = ""                    # fast: the task its prompts come from (default: the checkpoint's own; with init_from)
fewshot = 0                     # fast, on a task: the first k train records before each prompt (as eval.py)
chat = False                    # fast, init_from: each prompt wrapped in the checkpoint's chat template
step_counts = "8,16,32,64,256"  # fewstep: the numbers of sampling steps
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# the sampling options the tables vary around (sample.SAMPLE_OPTIONS), with these defaults of bench's own:
SAMPLING = ("block_length", "temperature", "threshold", "factor", "eta", "top_p", "greedy_tail")
globals().update(option_defaults(*SAMPLING))
temperature = 0.0               # greedy, as Fast-dLLM's tables: every row a deterministic decoding, agreement exact
factor = 1.0                    # the fast table's factor row needs a factor (0 turns the rule off)
# -----------------------------------------------------------------------------


def timed(f):
    """(f(), seconds it took), waiting for the GPU if there is one."""
    t0 = time.perf_counter()
    out = f()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(fns, prompts, seed=1337, pad=None):
    """Generate for each prompt alone with every fn(x, generator) -> (samples, NFE) in turn,
    interleaved prompt by prompt so that a slow spell of a shared machine hits every method alike.
    prompts: (N, P), left-padded by pad (N,) counts, each run without its padding. Per fn: (the tokens
    written after each prompt (N, L), NFE per sample, seconds)."""
    res = [([], 0.0, 0.0) for _ in fns]
    for j in range(len(prompts)):
        x = prompts[j:j + 1, 0 if pad is None else int(pad[j]):]
        for i, fn in enumerate(fns):
            g = torch.Generator(device=prompts.device).manual_seed(seed + j)
            (out, n), dt = timed(lambda: fn(x, g))
            outs, nfe, secs = res[i]
            res[i] = (outs + [out[:, x.size(1):]], nfe + n, secs + dt)
    return [(torch.cat(outs), nfe / len(prompts), secs) for outs, nfe, secs in res]


def sampler_rows(L, block_length, eta):
    """(name, steps, options) of every masked-diffusion sampler setting the samplers table compares."""
    rows = []
    for steps in (L // 4, L // 2, L):
        for name, rm, bl in [(f"llada low_confidence, blocks of {block_length}", "low_confidence", block_length),
                             ("llada low_confidence, one block", "low_confidence", L),
                             (f"llada margin, blocks of {block_length}", "margin", block_length),
                             (f"llada entropy, blocks of {block_length}", "entropy", block_length),
                             ("llada random, one block", "random", L)]:
            if steps % (L // bl) == 0:
                rows.append((name, steps, dict(sampler="llada", remasking=rm, block_length=bl)))
    for steps in (L // 4, L // 2, L, 2 * L):  # more steps than tokens: room for ReMDM to revise
        rows += [("mdlm ancestral", steps, dict(sampler="ancestral")),
                 (f"remdm (eta {eta})", steps, dict(sampler="remdm", eta=eta))]
    return rows


def bench_samplers(model, fam, judge, prompts, L, *, block_length=32, temperature=0.0, eta=0.02, seed=1337, eos=-1):
    """One row per sampler and step count: NFE, gen PPL, entropy, seconds per sample."""
    P = prompts.size(1)
    print("| sampler | steps | NFE | gen PPL | entropy | s/sample |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = sampler_rows(L, block_length, eta)
    fns = [lambda x, g, s=steps, o=o: fam.generate(model, x, steps=s, gen_length=L, temperature=temperature, eos_id=eos,
                                                     generator=g, **o) for _, steps, o in rows]
    for (name, steps, _), (gen, nfe, secs) in zip(rows, run(fns, prompts, seed)):
        print(f"| {name} | {steps} | {nfe:.1f} | " + " | ".join(quality(judge, torch.cat([prompts, gen], 1), P, eos))
              + f" | {secs / len(prompts):.2f} |", flush=True)


def fast_rows(model, fam, threshold, factor, eos):
    """(name, options) of the baseline and every fast setting the fast table compares: masked diffusion,
    LLaDA's sampler and Fast-dLLM's caches and rules; block diffusion (bd3.py), the canvas recomputed every
    step, then its exact block cache, the threshold, Fast-dLLM v2's sub-blocks and their cache."""
    if "cache" not in fam.sample_options:
        sb = model.config.bd3_block // 4  # Fast-dLLM v2: 8 in blocks of 32 (blocks of 4, SDAR's: none)
        return [("baseline (bd3, no cache)", dict(bd3_cache=False, threshold=0.0)),
                ("+ exact block cache", dict(threshold=0.0)),
                (f"+ threshold {threshold}", dict(threshold=threshold))] + ([
                (f"+ sub-blocks of {sb}", dict(threshold=threshold, sub_block=sb)),
                ("+ sub-block cache (--fast)", dict(threshold=threshold, sub_block=sb, fast=True))] if sb > 1 else [])
    rows = [("baseline (llada)", dict(fast=False)),
            (f"+ parallel (threshold {threshold})", dict(cache="none", threshold=threshold)),
            ("+ prefix cache", dict(cache="prefix", threshold=0.0)),
            ("+ dual cache", dict(cache="dual", threshold=0.0)),
            (f"+ prefix cache + parallel ({threshold})", dict(cache="prefix", threshold=threshold)),
            (f"+ dual cache + parallel ({threshold})", dict(cache="dual", threshold=threshold)),
            (f"+ dual cache + factor ({factor})", dict(cache="dual", threshold=0.0, factor=factor))]
    if eos >= 0:  # how much of the speed-up is the EOS stop (the reference decodes every position)
        rows.append((f"+ dual cache + parallel ({threshold}), no EOS stop",
                     dict(cache="dual", threshold=threshold, eos_stop=False)))
    return [(name, dict(dict(fast=True), **o)) for name, o in rows]


def bench_fast(model, fam, judge, prompts, Ls, *, block_length=32, temperature=0.0, threshold=0.9, factor=1.0,
               seed=1337, eos=-1, accuracy=None, others=(), pad=None):
    """For each generation length: the baseline (LLaDA's sampler) and Fast-dLLM's caches and rules, with
    tok/s, NFE, speed-up, quality and agreement with the baseline's tokens; then the cost of one full
    forward against one dual-cache block step. Quality: gen PPL and entropy under the judge, or, for a
    task, accuracy(generated (N, L)) -> its exact-match cell. others: [(name, model, family)] of other
    models decoding the same prompts in the same run, each by its family's sampler (an AR one: greedy with
    its K/V cache; a block diffusion one: its exact cache and the threshold), on a canvas of at most L
    that fits its context (both stop at EOS). pad: the prompts' left padding (run)."""
    P = prompts.size(1)
    rows = fast_rows(model, fam, threshold, factor, eos)

    def cells(gen):  # the quality columns of a row
        return quality(judge, torch.cat([prompts, gen], 1), P, eos) if accuracy is None else [accuracy(gen)]
    cols = "gen PPL | entropy" if accuracy is None else "accuracy"
    print(f"| L | method | tok/s | NFE | speed-up | tokens/sample | {cols} | agree |")
    print("| --- " * (8 + (accuracy is None)) + "|")
    for L in Ls:  # one length at a time, every method on the same prompts, the baseline first
        opts = dict(steps=L, gen_length=L, temperature=temperature, eos_id=eos,
                    **({"block_length": block_length} if "block_length" in fam.sample_options else {}))
        fns = [lambda x, g, o=o: fam.generate(model, x, generator=g, **opts, **o) for _, o in rows]
        names = [name for name, _ in rows]
        for name, net2, fam2 in others:
            L2 = min(L, net2.config.block_size - P)
            o2 = sampling(fam2, dict(steps=L2, threshold=threshold, temperature=temperature), L2)
            names.append(f"{name} ({fam2.describe(**o2)}{'' if L2 == L else f', L = {L2}'})")
            fns.append(lambda x, g, net2=net2, fam2=fam2, L2=L2, o2=o2: fam2.generate(
                net2, x, gen_length=L2, eos_id=eos, generator=g, **o2))
        for i, (name, (gen, nfe, secs)) in enumerate(zip(names, run(fns, prompts, seed, pad))):
            tokens = int(generated(gen, 0, eos).sum())  # before the first EOS, as the output is cut
            if i == 0:
                base, base_tok_s = gen, tokens / secs
            n = min(gen.size(1), base.size(1))
            agree = (gen[:, :n] == base[:, :n]).float().mean().item()
            speedup = f"{tokens / secs / base_tok_s:.1f}x" if base_tok_s else "-"  # a baseline that wrote only EOS: none
            print(f"| {L} | {name} | {tokens / secs:.1f} | {nfe:.1f} | {speedup} | "
                  f"{tokens / len(prompts):.0f} | " + " | ".join(cells(gen)) + f" | {agree:.2f} |", flush=True)
    print("\n| L | one forward: all P + L positions | one block with the dual cache | ratio |")
    print("| --- | --- | --- | --- |")
    for L in Ls:  # what a baseline step and a cached step cost (medians of 20, batch 1)
        full, step = forward_costs(model, prompts[:1, 0 if pad is None else int(pad[0]):], L, block_length)
        print(f"| {L} | {full:.1f} ms | {step:.1f} ms | {full / step:.1f} |")


def bench_fewstep(models, judge, prompts, L, step_counts, *, temperature=1.0, top_p=1.0, greedy_tail=True, seed=1337):
    """Few-step generation: every model at every step count, all prompts in one batch, each by its
    family's sampler (masked diffusion: MDLM ancestral sampling; uniform-state: duo.generate with
    top_p and greedy_tail). "tail rewrites": the share of generated tokens the greedy tail changed (a
    model that trusts what it reads at t = 0 changes few). models: [(name, model, family)]."""
    P = prompts.size(1)
    print("| model | sampler | steps | NFE | gen PPL | entropy | tail rewrites | s/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model, fam in models:
        for steps in step_counts:
            opts = sampling(fam, dict(sampler="ancestral", steps=steps, temperature=temperature, top_p=top_p,
                                      greedy_tail=greedy_tail), L)
            g, last = torch.Generator(device=prompts.device).manual_seed(seed), {}
            (samples, nfe), secs = timed(lambda: fam.generate(
                model, prompts, gen_length=L, generator=g, on_step=lambda x, changed: last.update(changed=changed),
                **opts))
            rewrites = f"{100 * last['changed'][:, P:].float().mean():.1f}%" if opts.get("greedy_tail") else "-"
            print(f"| {name} | {fam.describe(**opts)} | {steps} | {nfe:.1f} | "
                  + " | ".join(quality(judge, samples, P)) + f" | {rewrites} | {secs / len(prompts):.3f} |", flush=True)


def bench_cost(model, fam, P, L, seed=1337):
    """What a model costs on this machine by every sampler of the fast table (fast_rows) at one token a step
    (threshold 0: the fixed schedule, whatever the weights predict), one prompt of P random tokens, L generated:
    NFE, seconds per model call and per generated token. With random weights the tokens mean nothing; the
    costs are a trained model's at this schedule (a parallel rule divides them by the tokens it commits per step)."""
    prompt = torch.randint(0, model.config.mask_id, (1, P), generator=torch.Generator().manual_seed(seed))
    opts = dict(steps=L, gen_length=L, temperature=0.0, **({"block_length": 32} if "block_length" in fam.sample_options
                                                           else {}))
    rows = []
    for _, o in fast_rows(model, fam, 0.5, 1.0, -1):  # each cache of the fast table once, at one token a step
        o = {k: 0.0 if k == "threshold" else v for k, v in o.items() if k != "factor"}
        if o not in rows and o.get("cache") != "none":
            rows.append(o)
    if "sampler" in fam.sample_options:  # MDLM's ancestral sampler: a full forward a step too
        rows.insert(1, dict(sampler="ancestral"))
    print("| sampler | NFE | s per model call | s per token |")
    print("| --- | --- | --- | --- |")
    for o in rows:
        (_, nfe), secs = timed(lambda: fam.generate(model, prompt, **opts, **o))
        print(f"| {fam.describe(**o)} | {nfe:.0f} | {secs / nfe:.3f} | {secs / L:.3f} |", flush=True)


def random_model(folder, dtype=torch.bfloat16):
    """(model in eval mode, family) of a checkpoint's shape with random weights N(0, 0.02), in dtype: its
    config.json read as from_pretrained reads it (pretrained.read_config), its weights never."""
    cfg, fam, _, _ = read_config(folder)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device=device).to(dtype).eval()
    if cfg.tie:  # to_empty gives the two names storage of their own
        model.lm_head.weight = model.wte.weight
    g = torch.Generator(device=device).manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02, generator=g) if p.dim() > 1 else torch.nn.init.ones_(p)
    model.cos, model.sin = (t.to(device) for t in rope_tables(cfg.d_head, cfg.block_size, cfg.rope_theta))
    return model, FAMILIES[fam]


@torch.no_grad()
def forward_costs(model, prompt, L, block_length, n=20):
    """Milliseconds of a forward over the whole canvas (what the baseline pays per step) and of a
    dual-cache step over the first block (what fast_sample.py pays): medians of n runs."""
    x, P = canvas(prompt, L, model.config.mask_id), prompt.size(1)
    _, kv = model(x, return_kv=True)

    def ms(f):
        return 1e3 * sorted(timed(f)[1] for _ in range(n))[n // 2]
    return ms(lambda: model(x)), ms(lambda: model(x[:, P:P + block_length], start=P, kv=kv))


def parse_lengths(text):
    """'128,256' -> [128, 256]; None unless every item is a positive integer."""
    try:
        Ls = [int(v) for v in text.split(",")]
    except ValueError:
        return None
    return Ls if all(L > 0 for L in Ls) else None


def load_models(names, meta=None, reader=""):
    """[(name, model, family, ckpt)] of comma-separated out_dirs, in eval mode; with a meta (of the judge, or
    of the model whose prompts they answer: reader), each must read its tokens."""
    models = []
    for d in names.split(","):
        net, ck, fam = load(d, device)
        if meta is not None and not same_tokens(ck["meta"], meta):
            fail(f"{d} and {reader} were trained on different data")
        models.append((d, net.eval(), fam, ck))
    return models


def fewstep_main():
    judge_model, judge_ckpt = load_judge(judge, device)
    models = load_models(out_dir, judge_ckpt["meta"], f"the judge {judge}")
    for d, net, _, _ in models:
        if prompt_len + gen_length > net.config.block_size:
            fail(f"prompt_len + gen_length exceeds {d}'s context of {net.config.block_size}")
    prompts, real = val_prompts(dataset_dir(judge_ckpt["config"]["dataset"]), prompt_len + gen_length, num_samples,
                                prompt_len)
    real = real.to(device)
    bench_fewstep([(d, m, fam) for d, m, fam, _ in models], judge_model, prompts.to(device), gen_length,
                  parse_lengths(step_counts), temperature=temperature, top_p=top_p, greedy_tail=greedy_tail, seed=seed)
    print(f"\n{num_samples} samples of {gen_length} tokens after {prompt_len}-token val prompts, temperature "
          f"{temperature}, one batch; val text: gen PPL, entropy {', '.join(quality(judge_model, real, prompt_len))}. "
          f"Judge: {judge}.")


def samplers_main(model, fam, ckpt, judge_model, data_dir, opts):
    if prompt_len + gen_length > model.config.block_size:
        fail(f"prompt_len + gen_length exceeds the model's context of {model.config.block_size}")
    prompts, real = val_prompts(data_dir, prompt_len + gen_length, num_samples, prompt_len)
    bench_samplers(model, fam, judge_model, prompts.to(device), gen_length, eta=eta, **opts)
    print(f"\n{len(prompts)} samples of {gen_length} tokens after {prompt_len}-token val prompts, temperature "
          f"{temperature}; val text: gen PPL, entropy {', '.join(quality(judge_model, real.to(device), prompt_len))}")


def fast_main(model, fam, ckpt, judge_model, data_dir, opts):
    meta, eos = ckpt["meta"], opts["eos"]
    task, pad = load_meta(data_dir).get("task"), None
    Ls = parse_lengths(lengths)
    if task:  # num_samples records evenly spaced over the split, in the model's tokens, left-padded to one length
        records, stop, smeta = task_records(data_dir, split, meta, model.config.block_size, fewshot=fewshot, chat=chat)
        records = [records[i] for i in torch.linspace(0, len(records) - 1, min(num_samples, len(records))).long()]
        prompts, pad = left_pad([p for p, _, _ in records], eos)

        def accuracy(gen):
            answers = [cut_at_eos(row, eos, 0) for row in gen.tolist()]
            return f"{100 * score(answers, [r for _, r, _ in records], records, smeta, stop)['exact']:.1f}%"
    else:  # text: the judge scores it
        prompts, _ = val_prompts(data_dir, prompt_len + max(Ls), num_samples, prompt_len, split)
        accuracy = None
    others = [m[:3] for m in load_models(other_dirs, meta, init_from or out_dir)] if other_dirs else []
    P = prompts.size(1)
    Ls = [L for L in Ls if P + L <= model.config.block_size]
    if not Ls:
        fail(f"no length in {lengths} fits the model's context of {model.config.block_size} with a {P}-token prompt")
    bench_fast(model, fam, judge_model, prompts.to(device), Ls, threshold=threshold, factor=factor,
               accuracy=accuracy, others=others, pad=pad, **opts)
    print(f"\n{len(prompts)} prompts of {'up to ' if pad is not None and pad.any() else ''}{P} tokens, one at a time; steps = L, blocks of {model.config.bd3_block or block_length}, "
          f"temperature {temperature}, low-confidence remasking; tok/s: generated tokens before the first EOS "
          f"per second; speed-up: over the baseline's tok/s in this run; agree: the fraction of generated "
          f"positions equal to the baseline's. {'Task: ' + task + ', ' + split + ' split' if task else 'Judge: ' + judge}. "
          f"Device: {device}, {torch.get_num_threads()} threads.")


if __name__ == "__main__":
    config_keys = [k for k, v in globals().items()  # its options: the lower-case names of plain values
                   if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys},
                               notes={k: what for k, (_, _, what) in SAMPLE_OPTIONS.items()}))
    check(globals(), dict(what=one_of("samplers", "fast", "fewstep", "cost"), num_samples=POSITIVE, prompt_len=POSITIVE,
                          split=one_of("train", "val", "test"),
                          gen_length=POSITIVE, lengths=rule(parse_lengths, "comma-separated positive integers"),
                          step_counts=rule(lambda v: parse_lengths(v) and max(parse_lengths(v)) <= MAX_STEPS,
                                           f"comma-separated positive integers up to {MAX_STEPS:,}"),
                          out_dir=PATH, judge=PATH, seed=SEED,
                          **dict(option_rules(*SAMPLING), block_length=POSITIVE)))  # the tables cut L in blocks
    if init_from and what not in ("fast", "cost"):
        fail("--init_from is for --what=fast (a pretrained model answering a task: --dataset=gsm8k) and --what=cost")
    if what == "cost":
        if not init_from:
            fail("--what=cost times a checkpoint's shape: --init_from=<a folder with its config.json>")
        try:
            model, fam = random_model(init_from)
        except ValueError as e:
            fail(e)
        print(f"{init_from}: {model.num_params() / 1e9:.2f}B parameters, random weights, bf16; a {prompt_len}-token "
              f"prompt, {gen_length} tokens, one a step; {device}, {torch.get_num_threads()} threads\n")
        bench_cost(model, fam, prompt_len, gen_length, seed)
        sys.exit(0)
    if what != "fewstep" and "," in out_dir:
        fail(f"--out_dir={out_dir!r}: one checkpoint for --what={what} (several only for --what=fewstep)")
    for key in ("out_dir", "other_dirs"):
        if globals()[key] and not all(globals()[key].split(",")):
            fail(f"--{key}={globals()[key]!r} has an empty name")
    check_device(device)
    check_memory(num_samples * max([gen_length, *parse_lengths(lengths)]) * 8 * 4, f"--num_samples={num_samples}")
    try:
        if what == "fewstep":
            fewstep_main()
            sys.exit(0)
        if init_from:
            model, ckpt, fam = pretrained(init_from, device)  # in eval mode
        else:
            (_, model, fam, ckpt), = load_models(out_dir)
        needs = {"samplers": ("sampler", "remasking", "eta"), "fast": ("fast", "threshold")}[what]
        if set(needs) - set(fam.sample_options):
            fail(f"--what={what} compares masked diffusion's samplers; {out_dir}'s family has other options "
                 f"({', '.join(fam.sample_options) or 'none'}): use --what=fewstep")
        for L in [gen_length] if what == "samplers" else parse_lengths(lengths):
            sampling(fam, dict(steps=L, block_length=block_length), L)  # the rules between options, before any work
        data_dir = dataset_dir(dataset or ckpt["config"]["dataset"])
        task = load_meta(data_dir).get("task")  # a task is scored by its answers: no judge needed
        if init_from and not task:  # its own tokenizer: no judge of this project reads its text
            fail(f"--init_from answers a task's prompts: --dataset=gsm8k (or another task), not {dataset or 'none'}")
        if task and what != "fast":
            fail(f"{out_dir} was trained on a task ({task}): --what=fast, or eval.py --mode=accuracy")
        judge_model = None if task else load_judge(judge, device, ckpt["meta"])[0]
        opts = dict(block_length=block_length, temperature=temperature, seed=seed, eos=ckpt["meta"].get("eos_id", -1))
        torch.manual_seed(seed)
        (samplers_main if what == "samplers" else fast_main)(model, fam, ckpt, judge_model, data_dir, opts)
    except ValueError as e:
        fail(e)
