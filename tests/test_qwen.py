"""
The Qwen-family diffusion checkpoints (Dream, Fast-dLLM v2, SDAR, the A2D conversions), loaded into model.GPT
by pretrained.py: proven on tiny folders each test writes itself in the real layouts (tests/qwen_tiny.py),
whose logits are compared with an independent Qwen2/Qwen3 forward (GQA, q/k/v biases, q/k norm, head width)
and whose tokens at temperature 0 with each project's own sampler transcribed from its description (Dream's
_sample, Fast-dLLM's Dream block sampler, SDAR's block_diffusion_generate, Fast-dLLM v2's generate). Then
the command lines and the bad configs.
"""

import json
import os
import shutil

import pytest
import torch

import bd3
import fast_sample
import families
import sample
from conftest import ROOT, run
from pretrained import from_pretrained
from qwen_tiny import (ENDOFTEXT, IM_END, IM_START, MASK, block_causal, dream_generate, fast_dllm_dream_generate,
                       fast_dllm_v2_generate, qwen_forward, sdar_generate, write_tiny)

LAYOUTS = ("dream", "fast_dllm_v2", "sdar", "a2d")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the tensors are tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{layout: (folder, config dict, weights dict, loaded model)} of float32 tiny folders."""
    out = {}
    for layout in LAYOUTS:
        folder = str(tmp_path_factory.mktemp(layout) / "tiny")
        cfg, W = write_tiny(folder, layout)
        out[layout] = folder, cfg, W, from_pretrained(folder)[0]
    return out


def reference(cfg, W, mask_id):
    """The layout's forward as its samplers call it, f(ids, start, cache, attn_mask) -> (raw logits, K/V), with
    the [MASK] column at -inf (as the project's model: a trained model never puts mass there)."""
    def f(ids, start=0, cache=None, attn_mask=None):
        logits, kv = qwen_forward(W, cfg, ids, start=start, cache=cache, attn_mask=attn_mask)
        logits[..., mask_id] = float("-inf")
        return logits, kv
    return f


def prompt_of(n, seed):
    return torch.randint(0, ENDOFTEXT, (1, n), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# The forward

@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_equal_the_reference_forward(tiny, layout):
    """from_pretrained reads each layout's tensors into model.py's settings: the float32 outputs on a
    canvas with masks equal the Qwen2/Qwen3 forward's on every column but [MASK] (-inf), unshifted (the
    model returns its outputs as they are), under no mask and under a block-causal one. Fails for a wrong
    head width, a dropped bias or q/k norm, GQA's grouping, or the head's tying."""
    folder, cfg, W, model = tiny[layout]
    c, m = model.config, MASK[layout]
    assert (c.n_kv_head, c.qkv_bias, c.qk_norm, c.tie) == (
        2, layout in ("dream", "fast_dllm_v2"), layout in ("sdar", "a2d"), layout in ("fast_dllm_v2", "a2d"))
    assert c.shift == (layout in ("dream", "fast_dllm_v2")) and c.mask_id == m
    x = prompt_of(24, 1)
    x[0, 5:20:3] = m
    for attn in (None, block_causal(range(24), range(24), 4)):
        ours = model(x, attn_mask=attn)
        theirs, _ = qwen_forward(W, cfg, x, attn_mask=attn)
        keep = torch.arange(ours.size(-1)) != m
        assert torch.allclose(ours[..., keep], theirs[..., keep], atol=1e-4), (ours - theirs)[..., keep].abs().max()
        assert torch.isinf(ours[..., m]).all()


def test_families_and_settings_of_each_layout(tiny):
    """Each layout maps to its family, block size, grid, [MASK] (config.json's or the tokenizer's) and EOS
    (generation_config.json's first, SDAR's <|im_end|>)."""
    expect = {"dream": ("mdlm", 0, False, ENDOFTEXT), "fast_dllm_v2": ("bd3", 8, True, IM_END),
              "sdar": ("bd3", 4, True, IM_END), "a2d": ("mdlm", 0, False, ENDOFTEXT)}
    for layout, (fam, block, start, eos) in expect.items():
        model, ckpt, family = families.pretrained(tiny[layout][0])
        assert family is families.FAMILIES[fam] and ckpt["config"]["objective"] == fam
        assert (model.config.bd3_block, model.config.bd3_from_start) == (block, start), layout
        assert ckpt["meta"]["mask_id"] == MASK[layout] and ckpt["meta"]["eos_id"] == eos, layout


def test_chat_template_is_chatml(tiny):
    import tokenizer
    _, ckpt, _ = families.pretrained(tiny["sdar"][0])
    chat = tokenizer.chat_prompt(ckpt["meta"], "2 + 2?")
    assert chat == "<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    encode, _ = tokenizer.get_codec(ckpt["meta"])
    assert encode(chat)[0] == IM_START and IM_END in encode(chat)


# -----------------------------------------------------------------------------
# The samplers at temperature 0 against each model's own generate function

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alg,remasking", [("maskgit_plus", "low_confidence"), ("topk_margin", "margin"),
                                           ("entropy", "entropy")])
def test_dream_orders_equal_dreams_sampler(tiny, alg, remasking, seed):
    """Dream's maskgit_plus / topk_margin / entropy are LLaDA's sampler with low_confidence / margin / entropy,
    one block, Dream's time grid (transfer="timegrid"), on shifted logits."""
    _, cfg, W, model = tiny["dream"]
    prompt, steps = prompt_of(5 + seed, seed), (6, 9, 16)[seed]
    ref, _ = dream_generate(reference(cfg, W, MASK["dream"]), prompt.clone(), 16, steps, MASK["dream"], alg=alg)
    ours, nfe = sample.generate(model, prompt, steps=steps, gen_length=16, block_length=16, temperature=0.0,
                                remasking=remasking, transfer="timegrid")
    assert torch.equal(ours, ref) and nfe == steps


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_fast_dream_equals_fast_dllms_dream_sampler(tiny, cache, threshold, seed):
    """fast_sample.py on a shifted model: the refresh commits the block's first position alone, then the
    cached steps read shifted outputs inside the window; tokens and model calls as Fast-dLLM's Dream code."""
    _, cfg, W, model = tiny["dream"]
    prompt = prompt_of(4 + seed, seed)
    ref, ref_nfe = fast_dllm_dream_generate(reference(cfg, W, MASK["dream"]), prompt.clone(), 24, 8, MASK["dream"],
                                            threshold=threshold, dual_cache=cache == "dual")
    ours, nfe = fast_sample.generate(model, prompt, steps=24, gen_length=24, block_length=8, temperature=0.0,
                                     cache=cache, threshold=threshold, eos_stop=False)
    assert torch.equal(ours, ref) and nfe == ref_nfe


def test_the_lead_step_is_what_makes_the_cache_right(tiny):
    """Without the lead commit (a model read as unshifted), the cached samplers would read the first
    position's own output: the tokens differ from the reference for some prompt."""
    _, cfg, W, model = tiny["dream"]
    model.config.shift = False
    try:
        differs = False
        for seed in range(4):
            prompt = prompt_of(4 + seed, seed)
            ref, _ = fast_dllm_dream_generate(reference(cfg, W, MASK["dream"]), prompt.clone(), 24, 8, MASK["dream"],
                                              threshold=0.9, dual_cache=True)
            ours, _ = fast_sample.generate(model, prompt, steps=24, gen_length=24, block_length=8, temperature=0.0,
                                           cache="dual", threshold=0.9, eos_stop=False)
            differs |= not torch.equal(ours, ref)
        assert differs
    finally:
        model.config.shift = True


@pytest.mark.parametrize("P,seed", [(8, 0), (6, 1), (9, 2)])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic", "entropy_bounded"])
def test_sdar_remasking_equals_sdars_sampler(tiny, strategy, P, seed):
    """bd3.py on SDAR's grid (blocks from position 0, the prompt's tail inside the first block): static is the
    fixed schedule, dynamic the threshold with the schedule's count as its floor, entropy-bounded the
    entropy bound; 4 steps a block of 4 (its default) and 2 steps a block (two a step)."""
    _, cfg, W, model = tiny["sdar"]
    prompt = prompt_of(P, seed)
    G = 24 - P  # the canvas ends at a block's end, as SDAR's
    for S in (4, 2):
        if S == 2 and P % 4:
            continue  # SDAR's schedule counts a whole block's positions, also in a first block holding the prompt's tail
        ref, ref_nfe = sdar_generate(reference(cfg, W, MASK["sdar"]), prompt.clone(), G, 4, S, MASK["sdar"],
                                     strategy=strategy, threshold=0.5, eb_threshold=0.35)
        opts = {"low_confidence_static": dict(threshold=0.0), "low_confidence_dynamic": dict(threshold=0.5),
                "entropy_bounded": dict(threshold=0.0, eb_threshold=0.35, remasking="entropy")}[strategy]
        ours, nfe = bd3.generate(model, prompt, steps=S * (24 // 4 - P // 4), gen_length=G, temperature=0.0, **opts)
        assert torch.equal(ours, ref[:, :24]), (S, ours, ref)
        assert nfe <= ref_nfe  # SDAR also pays a forward per block to store its keys/values


V2_CASES = [(8, 0), (5, 3), (11, 7), (16, 8), (3, 10)]  # (prompt length, seed): in some, the block cache changes tokens


def test_the_references_tell_the_variants_apart(tiny):
    """The tests below can fail: on their prompts Fast-dLLM's Dream sampler gives other tokens with the prefix
    and the dual cache, SDAR's strategies differ, and Fast-dLLM v2's block cache changes some tokens."""
    _, cfg, W, _ = tiny["dream"]
    f, m = reference(cfg, W, MASK["dream"]), MASK["dream"]
    assert not torch.equal(*[fast_dllm_dream_generate(f, prompt_of(4, 0), 24, 8, m, threshold=0.9, dual_cache=d)[0]
                             for d in (False, True)])
    _, cfg, W, _ = tiny["sdar"]
    f, m = reference(cfg, W, MASK["sdar"]), MASK["sdar"]
    outs = [sdar_generate(f, prompt_of(8, 0), 16, 4, 4, m, strategy=s, threshold=0.5, eb_threshold=0.35)[0]
            for s in ("low_confidence_static", "low_confidence_dynamic", "entropy_bounded")]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2]) and not torch.equal(outs[1], outs[2])
    _, cfg, W, _ = tiny["fast_dllm_v2"]
    f, m = reference(cfg, W, MASK["fast_dllm_v2"]), MASK["fast_dllm_v2"]
    changed = [not torch.equal(*[fast_dllm_v2_generate(f, prompt_of(P, seed), 24, 8, 4, m, threshold=t,
                                                       use_block_cache=u)[0] for u in (False, True)])
               for P, seed in V2_CASES for t in (0.5, 0.9)]
    assert any(changed) and not all(changed)


@pytest.mark.parametrize("P,seed", V2_CASES)
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_fast_dllm_v2_equals_its_sampler(tiny, fast, threshold, P, seed):
    """bd3.py with sub-blocks on a shifted block model (Fast-dLLM v2's layout, blocks of 8, sub-blocks of 4):
    the block's first token from the step that caches the block before it, sub-blocks left to right under
    the threshold, and with fast (its block cache) a decoded sub-block's start runs the sub-block alone."""
    _, cfg, W, model = tiny["fast_dllm_v2"]
    prompt, B = prompt_of(P, seed), 8
    G = 3 * B - P % B  # three blocks on the grid from position 0
    ref, _ = fast_dllm_v2_generate(reference(cfg, W, MASK["fast_dllm_v2"]), prompt.clone(), 3 * B, B, 4,
                                   MASK["fast_dllm_v2"], threshold=threshold, use_block_cache=fast)
    ours, _ = bd3.generate(model, prompt, steps=G, gen_length=G, temperature=0.0, threshold=threshold, sub_block=4,
                           fast=fast)
    assert torch.equal(ours, ref[:, :P + G]), (ours, ref)


def test_mixed_prompt_lengths_on_a_grid_from_zero(tiny):
    """Left-padded prompts of different lengths on a grid from position 0 (Fast-dLLM v2): each row gets what
    it gets alone (rows whose padding differs modulo the block are decoded apart)."""
    model = tiny["fast_dllm_v2"][3]
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [2, 2, 2, 2, 2], [7] * 11]
    x, pad = sample.left_pad(rows, ENDOFTEXT)
    out, _ = bd3.generate(model, x, pad=pad, steps=12, gen_length=12, temperature=0.0, threshold=0.9, sub_block=4,
                          fast=True)
    for i, r in enumerate(rows):
        alone, _ = bd3.generate(model, torch.tensor([r]), steps=12, gen_length=12, temperature=0.0, threshold=0.9,
                                sub_block=4, fast=True)
        assert torch.equal(out[i, x.size(1) - len(r):], alone[0]), i


def test_every_sampler_takes_a_shifted_model(tiny):
    """LLaDA (blocks, guidance), ancestral, ReMDM and --fast all run on Dream's shifted outputs and leave
    the prompt and no mask."""
    model = tiny["dream"][3]
    prompt = prompt_of(6, 3)
    g = torch.Generator().manual_seed(0)
    outs = [sample.generate(model, prompt, steps=16, gen_length=16, block_length=8, cfg_scale=1.0, generator=g)[0],
            sample.generate_ancestral(model, prompt, steps=8, gen_length=16, generator=g)[0],
            sample.generate_ancestral(model, prompt, steps=8, gen_length=16, eta=0.1, generator=g)[0],
            fast_sample.generate(model, prompt, steps=16, gen_length=16, block_length=8, cache="prefix",
                                 threshold=0.0, generator=g)[0]]
    for x in outs:
        assert torch.equal(x[:, :6], prompt) and not (x == MASK["dream"]).any()


# -----------------------------------------------------------------------------
# The command lines, and bad configs

@pytest.fixture(scope="module")
def cli_folders(tmp_path_factory):
    """Each layout with a context long enough for GSM8K questions in bytes."""
    out = {}
    for layout in LAYOUTS:
        out[layout] = str(tmp_path_factory.mktemp(layout + "_cli") / "tiny")
        write_tiny(out[layout], layout, max_position_embeddings=1024)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_command_lines(cli_folders, layout):
    """sample.py --fast, eval.py --mode=accuracy on GSM8K and bench.py --what=fast run on every layout."""
    folder = cli_folders[layout]
    r = run("sample.py", f"--init_from={folder}", "--prompt=the cat sat on", "--fast", "--gen_length=16",
            "--num_samples=1", *(["--block_length=8"] if layout in ("dream", "a2d") else []))
    assert r.returncode == 0 and "NFE" in r.stderr, r.stderr[-2000:]
    assert r.stdout.startswith("the cat sat on"), r.stdout
    if not os.path.exists(os.path.join(ROOT, "data", "gsm8k", "test_sft.pkl")):
        pytest.skip("data/gsm8k/test_sft.pkl is absent (python data/gsm8k/prepare.py)")
    r = run("eval.py", "--mode=accuracy", f"--init_from={folder}", "--dataset=gsm8k", "--max_records=4",
            "--gen_length=16", "--steps=16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len([line for line in r.stdout.splitlines() if line.startswith("| ") and folder in line]) == 1, r.stdout
    r = run("bench.py", "--what=fast", f"--init_from={folder}", "--dataset=gsm8k", "--num_samples=2", "--lengths=16",
            "--block_length=8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 16 | baseline" in r.stdout and ("sub-block cache" in r.stdout) == (layout == "fast_dllm_v2")


def bad_config(tmp_path, name, source, **change):
    """A copy of a tiny folder with config.json changed (None: the key removed)."""
    folder = str(tmp_path / name)
    shutil.copytree(source, folder)
    path = os.path.join(folder, "config.json")
    cj = json.load(open(path))
    for k, v in change.items():
        if v is None:
            cj.pop(k, None)
        else:
            cj[k] = v
    json.dump(cj, open(path, "w"))
    return folder


def test_bad_configs_are_one_line_errors(tiny, tmp_path):
    """An unknown model_type, head counts that do not divide, a sliding window, a missing [MASK], a tied head
    the weights do not tie, values of the wrong type or range (NaN, strings, 1e10), a shard index naming a file
    outside the folder: ValueError naming it, before anything is built (sample.py prints it as 'error: ...')."""
    dream, sdar, v2 = tiny["dream"][0], tiny["sdar"][0], tiny["fast_dllm_v2"][0]
    cases = [(bad_config(tmp_path, "unknown", dream, model_type="llada2_moe"), "llada2_moe"),
             (bad_config(tmp_path, "heads", sdar, num_key_value_heads=3), "num_key_value_heads=3"),
             (bad_config(tmp_path, "window", dream, use_sliding_window=True), "use_sliding_window"),
             (bad_config(tmp_path, "hidden", dream, hidden_size=30), "head counts"),
             (bad_config(tmp_path, "untied", v2, tie_word_embeddings=False), "lm_head.weight"),
             (bad_config(tmp_path, "nan", dream, rope_theta=float("nan")), "rope_theta=nan"),
             (bad_config(tmp_path, "str", sdar, num_hidden_layers="2"), "n_layer='2'"),
             (bad_config(tmp_path, "float", sdar, num_hidden_layers=2.5), "n_layer=2.5"),
             (bad_config(tmp_path, "huge", dream, max_position_embeddings=1e10), "block_size=10000000000.0"),
             (bad_config(tmp_path, "negative", dream, max_position_embeddings=-5), "block_size=-5"),
             (bad_config(tmp_path, "mask", dream, mask_token_id=10**6), "no [MASK] token below vocab_size"),
             (bad_config(tmp_path, "eps", sdar, rms_norm_eps="x"), "norm_eps='x'"),
             (bad_config(tmp_path, "zero", dream, num_attention_heads=0), "head counts")]
    index = bad_config(tmp_path, "index", dream)  # a shard index that names a file outside the folder
    json.dump({"weight_map": {"model.embed_tokens.weight": "../model.safetensors"}},
              open(os.path.join(index, "model.safetensors.index.json"), "w"))
    cases.append((index, "a file name in"))
    nomask = bad_config(tmp_path, "nomask", v2)
    os.remove(os.path.join(nomask, "tokenizer.json"))
    cases.append((nomask, "[MASK]"))
    for folder, words in cases:
        with pytest.raises(ValueError) as e:
            from_pretrained(folder)
        assert words in str(e.value) and "\n" not in str(e.value), (folder, str(e.value))


@pytest.mark.slow
def test_a_shifted_model_is_not_fine_tuned(tiny):
    """train.py from a shifted folder (Dream) stops in one line: its losses read output i as token i's."""
    r = run("train.py", "config/gsm8k.py", f"--init_from={tiny['dream'][0]}", "--max_iters=1", "--out_dir=/tmp/x-q")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("error:") and "shifted" in last and "Traceback" not in r.stderr, \
        r.stderr[-1000:]
