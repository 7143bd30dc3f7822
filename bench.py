"""
Speed and quality of the samplers, side by side in one run on one machine.

    python bench.py --what=samplers                                     # sample.py's samplers
    python bench.py --what=fast --out_dir=out-shakespeare-long           # Fast-dLLM vs the baseline

Every row of a table is measured in the same run, on the same prompts (the starts of val windows),
one prompt at a time (batch size 1, as in Fast-dLLM's figures). Quality stands beside every speed:
gen PPL and entropy under the AR judge (eval.py), and for --what=fast the agreement of the
generated tokens with the baseline's. Speed-ups are ratios of tokens/s measured in this run
(generated non-EOS tokens over wall-clock; the prompt is never counted).
"""

import os
import sys
import time

import torch

import fast_sample
import sample
from configurator import configure
from eval import entropy, gen_ppl, val_windows
from model import load_checkpoint

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


def run(fn, prompts):
    """Generate for each prompt alone; returns (samples (N, P + L), NFE per sample, seconds)."""
    outs, nfe, secs = [], 0.0, 0.0
    for j in range(len(prompts)):
        g = torch.Generator(device=device).manual_seed(seed + j)
        t0 = time.perf_counter()
        out, n = fn(prompts[j:j + 1], g)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        outs.append(out)
        nfe += n
    return torch.cat(outs), nfe / len(prompts), secs


def quality(samples, P):
    return gen_ppl(judge_model, samples, P), entropy(samples, P)


def bench_samplers():
    P, L = prompt_len, gen_length
    prompts = prompts_for(P + L)
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
        rows.append(("mdlm ancestral", steps, lambda x, g, s=steps:
                     sample.generate_ancestral(model, x, s, L, temperature, generator=g)))
        rows.append((f"remdm (eta {eta})", steps, lambda x, g, s=steps:
                     sample.generate_ancestral(model, x, s, L, temperature, eta=eta, generator=g)))
    for name, steps, fn in rows:
        samples, nfe, secs = run(fn, prompts)
        ppl, h = quality(samples, P)
        print(f"| {name} | {steps} | {nfe:.1f} | {ppl:.2f} | {h:.3f} | {secs / len(prompts):.2f} |", flush=True)
    print(f"\n{len(prompts)} samples of {L} tokens after {P}-token val prompts, temperature {temperature}; "
          f"val text: gen PPL {real_ppl:.2f}, entropy {real_h:.3f}")


def bench_fast():
    P = prompt_len
    Ls = [L for L in map(int, lengths.split(",")) if P + L <= model.config.block_size]
    if not Ls:
        sys.exit(f"error: no length in {lengths} fits the model's context of {model.config.block_size} with a "
                 f"{P}-token prompt")
    eos = ckpt["meta"].get("eos_id", -1)
    configs = [("baseline (sample.py)", None),
               (f"+ parallel (threshold {threshold})", dict(cache="none", threshold=threshold)),
               ("+ prefix cache", dict(cache="prefix", threshold=0.0)),
               ("+ dual cache", dict(cache="dual", threshold=0.0)),
               (f"+ prefix cache + parallel ({threshold})", dict(cache="prefix", threshold=threshold)),
               (f"+ dual cache + parallel ({threshold})", dict(cache="dual", threshold=threshold)),
               (f"+ dual cache + factor ({factor})", dict(cache="dual", threshold=0.0, factor=factor))]
    print("| method | " + " | ".join(f"L={L}: tok/s | NFE | speed-up | gen PPL | entropy | agree" for L in Ls) + " |")
    print("| --- |" + " --- | --- | --- | --- | --- | --- |" * len(Ls))
    prompts = prompts_for(P + max(Ls))
    results = {}
    for L in Ls:  # one length at a time, every method on the same prompts
        for name, kw in configs:
            if kw is None:
                fn = lambda x, g, L=L: sample.generate(model, x, L, L, block_length, temperature, eos_id=eos, generator=g)
            else:
                fn = lambda x, g, L=L, kw=kw: fast_sample.generate(model, x, L, L, block_length, temperature,
                                                                   eos_id=eos, generator=g, **kw)
            samples, nfe, secs = run(fn, prompts)
            gen = samples[:, P:]
            tokens = int((gen != eos).sum()) if eos >= 0 else gen.numel()
            results[name, L] = (samples, nfe, tokens / secs)
    for name, _ in configs:
        cells = []
        for L in Ls:
            samples, nfe, tok_s = results[name, L]
            base = results[configs[0][0], L]
            ppl, h = quality(samples, P)
            agree = (samples[:, P:] == base[0][:, P:]).float().mean().item()
            cells.append(f"{tok_s:.1f} | {nfe:.1f} | {tok_s / base[2]:.1f}x | {ppl:.2f} | {h:.3f} | {agree:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{len(prompts)} prompts of {P} tokens, one at a time; steps = L, blocks of {block_length}, "
          f"temperature {temperature}, low-confidence remasking; tok/s counts generated tokens; agree: the "
          f"fraction of generated tokens equal to the baseline's. Judge: {judge}. Device: {device}, "
          f"{torch.get_num_threads()} threads.")


def prompts_for(T):
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
    if ckpt["meta"] != judge_ckpt["meta"]:
        sys.exit(f"error: {out_dir} and the judge {judge} were trained on different data")
    data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", ckpt["config"]["dataset"])
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
