"""
Speed and quality of the samplers, side by side in one run on one machine.

    python bench.py --what=samplers                                     # sample.py's samplers
    python bench.py --what=fast --out_dir=out-shakespeare-long           # Fast-dLLM vs the baseline

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

import fast_sample
import sample
from configurator import configure
from eval import entropy, gen_ppl, generated, val_windows
from model import load_checkpoint
from tokenizer import same_tokens

# -----------------------------------------------------------------------------
what = "samplers"               # 'samplers' (sample.py) or 'fast' (fast_sample.py vs sample.py)
out_dir = "out-shakespeare-char"
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
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------


def timed(f):
    """(f(), seconds it took), waiting for the GPU if there is one."""
    t0 = time.perf_counter()
    out = f()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(fns, prompts):
    """Generate for each prompt alone with every fn in turn, interleaved prompt by prompt so that a slow
    spell of a shared machine hits every method alike; per fn: (samples (N, P + L), NFE per sample, seconds)."""
    res = [([], 0.0, 0.0) for _ in fns]
    for j in range(len(prompts)):
        for i, fn in enumerate(fns):
            g = torch.Generator(device=device).manual_seed(seed + j)
            (out, n), dt = timed(lambda: fn(prompts[j:j + 1], g))
            outs, nfe, secs = res[i]
            res[i] = (outs + [out], nfe + n, secs + dt)
    return [(torch.cat(outs), nfe / len(prompts), secs) for outs, nfe, secs in res]


def quality(samples, P):
    """Gen PPL and entropy of the generated text, up to the first EOS."""
    return gen_ppl(judge_model, samples, P, eos), entropy(samples, P, eos)


def bench_samplers():
    prompts = prompts_for(prompt_len + gen_length)
    P, L = prompts.size(1), gen_length
    print(f"| sampler | steps | NFE | gen PPL | entropy | s/sample |")
    print(f"| --- | --- | --- | --- | --- | --- |")
    rows = []
    for steps in (L // 4, L // 2, L):
        for name, rm, bl in [("llada low_confidence, blocks of 32", "low_confidence", block_length),
                             ("llada low_confidence, one block", "low_confidence", L),
                             ("llada margin, blocks of 32", "margin", block_length),
                             ("llada entropy, blocks of 32", "entropy", block_length),
                             ("llada random, one block", "random", L)]:
            if steps % (L // bl) == 0:
                rows.append((name, steps, lambda x, g, s=steps, rm=rm, bl=bl:
                             sample.generate(model, x, s, L, bl, temperature, remasking=rm, generator=g)))
    for steps in (L // 4, L // 2, L, 2 * L):  # more steps than tokens: room for ReMDM to revise
        rows.append(("mdlm ancestral", steps, lambda x, g, s=steps:
                     sample.generate_ancestral(model, x, s, L, temperature, generator=g)))
        rows.append((f"remdm (eta {eta})", steps, lambda x, g, s=steps:
                     sample.generate_ancestral(model, x, s, L, temperature, eta=eta, generator=g)))
    for (name, steps, _), (samples, nfe, secs) in zip(rows, run([fn for _, _, fn in rows], prompts)):
        ppl, h = quality(samples, P)
        print(f"| {name} | {steps} | {nfe:.1f} | {ppl:.2f} | {h:.3f} | {secs / len(prompts):.2f} |", flush=True)
    print(f"\n{len(prompts)} samples of {L} tokens after {P}-token val prompts, temperature {temperature}; "
          f"val text: gen PPL {real_ppl:.2f}, entropy {real_h:.3f}")


def bench_fast():
    prompts = prompts_for(prompt_len + max(map(int, lengths.split(","))))
    P = prompts.size(1)
    Ls = [L for L in map(int, lengths.split(",")) if P + L <= model.config.block_size]
    if not Ls:
        sys.exit(f"error: no length in {lengths} fits the model's context of {model.config.block_size} with a "
                 f"{P}-token prompt")
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
    print("| L | method | tok/s | NFE | speed-up | tokens/sample | gen PPL | entropy | agree |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for L in Ls:  # one length at a time, every method on the same prompts, the baseline first
        fns = [(lambda x, g, L=L: sample.generate(model, x, L, L, block_length, temperature, eos_id=eos, generator=g))
               if kw is None else
               (lambda x, g, L=L, kw=kw: fast_sample.generate(model, x, L, L, block_length, temperature,
                                                               eos_id=eos, generator=g, **kw)) for _, kw in configs]
        for (name, kw), (samples, nfe, secs) in zip(configs, run(fns, prompts)):
            tokens = int(generated(samples, P, eos).sum())  # before the first EOS, as the output is cut
            if kw is None:
                base, base_tok_s = samples, tokens / secs
            ppl, h = quality(samples, P)
            agree = (samples[:, P:] == base[:, P:]).float().mean().item()
            print(f"| {L} | {name} | {tokens / secs:.1f} | {nfe:.1f} | {tokens / secs / base_tok_s:.1f}x | "
                  f"{tokens / len(prompts):.0f} | {ppl:.2f} | {h:.3f} | {agree:.2f} |", flush=True)
    print("\n| L | one forward: all P + L positions | one block with the dual cache | ratio |")
    print("| --- | --- | --- | --- |")
    for L in Ls:  # what a baseline step and a cached step cost (medians of 20, batch 1)
        full, step = forward_costs(prompts[:1], L)
        print(f"| {L} | {full:.1f} ms | {step:.1f} ms | {full / step:.1f} |")
    print(f"\n{len(prompts)} prompts of {P} tokens, one at a time; steps = L, blocks of {block_length}, "
          f"temperature {temperature}, low-confidence remasking; tok/s: generated tokens before the first EOS "
          f"per second; speed-up: over the baseline's tok/s in this run; agree: the fraction of generated "
          f"positions equal to the baseline's. Judge: {judge}. Device: {device}, {torch.get_num_threads()} threads.")


@torch.no_grad()
def forward_costs(prompt, L, n=20):
    """Milliseconds of a forward over the whole canvas (what the baseline pays per step) and of a
    dual-cache step over the first block (what fast_sample.py pays): medians of n runs."""
    x, P = sample.canvas(prompt, L, model.config.mask_id), prompt.size(1)
    _, kv = model(x, return_kv=True)

    def ms(f):
        return 1e3 * sorted(timed(f)[1] for _ in range(n))[n // 2]
    return ms(lambda: model(x)), ms(lambda: model(x[:, P:P + block_length], start=P, kv=kv))


def prompts_for(T):
    """num_samples prompts, evenly spaced over the val split: the starts of val windows of T tokens,
    or, for an SFT dataset, the prompts of its val pairs (all of one length, e.g. shakespeare_speech)."""
    if os.path.exists(os.path.join(data_dir, "val_sft.pkl")):
        with open(os.path.join(data_dir, "val_sft.pkl"), "rb") as f:
            ps = [p for p, _ in pickle.load(f)]
        ps = [ps[i] for i in torch.linspace(0, len(ps) - 1, num_samples).long().tolist()]
        if len(set(map(len, ps))) > 1:
            sys.exit(f"error: the val prompts of {data_dir} have different lengths")
        return torch.tensor(ps, device=device)
    w = val_windows(data_dir, T)
    return w[torch.linspace(0, len(w) - 1, num_samples).long(), :prompt_len].to(device)


if __name__ == "__main__":
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    globals().update(configure({k: globals()[k] for k in config_keys}))
    if what not in ("samplers", "fast"):
        sys.exit(f"error: what must be 'samplers' or 'fast', got {what!r}")
    model, ckpt = load_checkpoint(os.path.join(out_dir, "ckpt.pt"), device)
    judge_model, judge_ckpt = load_checkpoint(os.path.join(judge, "ckpt.pt"), device)
    model.eval(), judge_model.eval()
    if model.config.causal or not judge_model.config.causal:
        sys.exit("error: out_dir must hold a diffusion model and judge an autoregressive one")
    if not same_tokens(ckpt["meta"], judge_ckpt["meta"]):
        sys.exit(f"error: {out_dir} and the judge {judge} were trained on different data")
    data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", ckpt["config"]["dataset"])
    eos = ckpt["meta"].get("eos_id", -1)
    torch.manual_seed(seed)
    if what == "samplers":
        if prompt_len + gen_length > model.config.block_size:
            sys.exit(f"error: prompt_len + gen_length exceeds the model's context of {model.config.block_size}")
        real = val_windows(data_dir, prompt_len + gen_length)
        real = real[torch.linspace(0, len(real) - 1, num_samples).long()].to(device)
        real_ppl, real_h = quality(real, prompt_len)
        bench_samplers()
    else:
        bench_fast()
