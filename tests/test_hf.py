"""
Real LLaDA checkpoints (GSAI-ML/LLaDA-8B-Base / -Instruct, LLaDA-1.5) in the Hugging Face layout, loaded
into model.GPT by pretrained.py: proven on a tiny LLaDA folder the test writes itself (tests/hf_tiny.py), whose logits and
samples are compared with LLaDA's forward, LLaDA's sampler and Fast-dLLM's samplers transcribed in plain
torch (hf_tiny.llada_forward, test_sample.reference_llada, hf_tiny.FAST_DLLM). Then the tokenizer and
chat template, the command lines, and the bad folders a user may point them at.
"""

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fast_sample
import sample
from conftest import ROOT, run
from hf_tiny import BOS, END_HEADER, EOS, EOT, FAST_DLLM, MASK, START_HEADER, VOCAB, llada_forward, write_tiny_llada
from pretrained import from_pretrained, save_pretrained
from test_sample import reference_llada

P = 8  # prompt tokens of the sampler tests


def load_folder(path, device="cpu"):
    """The model of a LLaDA folder (pretrained.from_pretrained's first value)."""
    return from_pretrained(path, device)[0]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: its tensors are tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, config dict, weights dict) of a float32 tiny LLaDA in one model.safetensors."""
    folder = str(tmp_path_factory.mktemp("llada") / "tiny")
    cfg, W = write_tiny_llada(folder)
    return folder, cfg, W


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_folder(tiny[0], device="cpu")


def reference(cfg, W):
    """LLaDA's forward as Fast-dLLM calls it, f(ids, start, cache) -> (logits, K/V), with the [MASK]
    column at -inf. A trained LLaDA never puts its mass on [MASK]; a random tiny one would, so the
    reference drops that column, as the project's model does."""
    def f(ids, start=0, cache=None):
        logits, kv = llada_forward(W, cfg, ids, start, cache)
        logits[..., MASK] = float("-inf")
        return logits, kv
    return f


def random_ids(shape, seed, with_masks=False):
    """Token ids below the special tokens (0..279), optionally with a few [MASK]s."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(BOS, MASK), shape, generator=g)
    if with_masks:
        ids[torch.rand(shape, generator=g) < 0.3] = MASK
    return ids


# -----------------------------------------------------------------------------
# The forward

def test_logits_equal_llada_forward(tiny, loaded):
    """from_pretrained reads every LLaDA tensor into the right place: the float32 logits of a masked
    canvas equal LLaDA's forward's on every column but [MASK], which is -inf. Fails for a wrong SwiGLU
    width (48 here, not 8/3 d), a swapped gate and up projection, tied weights, a missed norm gain, a
    RoPE with the wrong theta or pairing, causal attention, or the wrong eps."""
    folder, cfg, W = tiny
    c = loaded.config
    assert not loaded.training and (c.n_embd, c.n_head, c.n_layer, c.n_hidden) == (32, 4, 2, 48)
    assert (c.vocab_size, c.mask_id, c.block_size, c.tie) == (VOCAB, MASK, 64, False)
    assert (c.rope_theta, c.norm_eps) == (500000.0, 1e-5)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ids = random_ids((2, 40), seed=0, with_masks=True)  # (B, T)
    with torch.no_grad():
        got = loaded(ids)  # (B, T, V)
    want, _ = llada_forward(W, cfg, ids)
    assert got.dtype == torch.float32 and got.shape == (2, 40, VOCAB)
    keep = torch.arange(VOCAB) != MASK
    torch.testing.assert_close(got[..., keep], want[..., keep], atol=1e-4, rtol=0)
    assert (got[..., MASK] == float("-inf")).all() and torch.isfinite(got[..., keep]).all()


def test_sharded_checkpoint_equals_the_single_file(tiny, loaded, tmp_path):
    """The same weights in three shards with model.safetensors.index.json (interleaved, so each shard
    holds parts of every layer) load to the same model: identical logits."""
    _, cfg, W = tiny
    write_tiny_llada(str(tmp_path), shards=3)
    assert not os.path.exists(tmp_path / "model.safetensors")
    assert len(set(json.load(open(tmp_path / "model.safetensors.index.json"))["weight_map"].values())) == 3
    sharded = load_folder(str(tmp_path), device="cpu")
    ids = random_ids((1, 32), seed=1, with_masks=True)
    with torch.no_grad():
        assert torch.equal(sharded(ids), loaded(ids))


def test_bf16_checkpoint_stays_bf16(tmp_path):
    """A bf16 checkpoint (as LLaDA's are stored) loads in bf16, with no float32 copy of any weight, and
    its logits are LLaDA's forward run in bf16 up to bf16 rounding, while a model loaded in the wrong
    way (a RoPE, norm or projection error) is off by the size of the logits themselves."""
    cfg, W = write_tiny_llada(str(tmp_path), dtype=torch.bfloat16)
    model = load_folder(str(tmp_path), device="cpu")
    assert all(t.dtype == torch.bfloat16 for t in model.state_dict().values())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids = random_ids((2, 40), seed=2, with_masks=True)
    with torch.no_grad():
        got = model(ids)
    want, _ = llada_forward(W, cfg, ids)  # the reference in bf16
    exact, _ = llada_forward({k: v.float() for k, v in W.items()}, cfg, ids)  # the same weights in float32
    keep = torch.arange(VOCAB) != MASK
    got, want, exact = got[..., keep], want[..., keep], exact[..., keep]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    scale = exact.abs().max()  # logits of order 10
    assert (got - want).abs().max() < 0.05 * scale
    assert (got - exact).abs().max() < 0.05 * scale
    assert (got.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_pretrained_round_trip(tmp_path, dtype):
    """save_pretrained writes config.json + model.safetensors in LLaDA's own layout: the same tensor names,
    shapes, dtype and values as the checkpoint it was loaded from (so LLaDA's own code can read it), and
    from_pretrained of it gives the same model."""
    from safetensors.torch import load_file
    cfg, W = write_tiny_llada(str(tmp_path / "a"), dtype=dtype, shards=2)
    model = load_folder(str(tmp_path / "a"), device="cpu")
    save_pretrained(model, str(tmp_path / "b"))
    saved = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(saved) == sorted(W)
    assert all(saved[k].dtype == dtype and torch.equal(saved[k], W[k]) for k in W)
    config = json.load(open(tmp_path / "b" / "config.json"))
    for key in ("architectures", "model_type", "d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                "vocab_size", "embedding_size", "mask_token_id", "rope_theta", "rms_norm_eps",
                "max_sequence_length", "weight_tying", "block_type"):
        assert config[key] == cfg[key], key
    again = load_folder(str(tmp_path / "b"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    ids = random_ids((1, 24), seed=3, with_masks=True)
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


# -----------------------------------------------------------------------------
# The samplers

SETTINGS = [(32, 32, 8), (16, 32, 16), (8, 24, 24)]  # (steps, gen_length, block_length)


@pytest.mark.parametrize("steps,gen_length,block_length", SETTINGS)
def test_llada_sampler_equals_the_reference(tiny, loaded, steps, gen_length, block_length):
    """At temperature 0, sample.generate on the loaded model writes the tokens of LLaDA's reference
    generate() (test_sample.reference_llada) run on LLaDA's forward, with one forward per step."""
    _, cfg, W = tiny
    f = reference(cfg, W)
    prompt = random_ids((2, P), seed=steps + gen_length)
    with torch.no_grad():
        want = reference_llada(lambda x: f(x)[0], prompt.clone(), steps, gen_length, block_length, mask_id=MASK)
    got, nfe = sample.generate(loaded, prompt, steps=steps, gen_length=gen_length, block_length=block_length)
    assert torch.equal(got, want) and nfe == steps
    assert (got != MASK).all() and len(set(got[0, P:].tolist())) > 1


def fast_prompt(steps, block_length):
    return random_ids((1, P), seed=steps + block_length)


def test_the_references_tell_the_caches_apart(tiny):
    """The tiny model is a discriminating fixture for the next test: at each of its settings Fast-dLLM's
    no-cache, prefix-cache and dual-cache samplers give three different results (canvas, NFE), so each
    comparison pins its own cache (a sampler that used the wrong one, or none, fails); the answer
    depends on the prompt; and the 0.9 threshold commits several tokens in some steps and one in
    others (nfe strictly between one per block and one per token), so the rule is exercised both ways."""
    _, cfg, W = tiny
    f = reference(cfg, W)
    with torch.no_grad():
        for steps, gen_length, block_length in SETTINGS[:2]:
            prompt = fast_prompt(steps, block_length)
            for threshold in (0.9, None):
                out = [FAST_DLLM[c](f, prompt.clone(), steps, gen_length, block_length, MASK, threshold)
                       for c in FAST_DLLM]
                assert len({(tuple(x[0].tolist()), nfe) for x, nfe in out}) == 3
                if threshold:
                    assert all(gen_length // block_length < nfe < gen_length for _, nfe in out)
            other, _ = FAST_DLLM["none"](f, random_ids((1, P), seed=99), steps, gen_length, block_length, MASK)
            assert other[0, P:].tolist() != out[0][0][0, P:].tolist()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [0.9, 0.0])
@pytest.mark.parametrize("steps,gen_length,block_length", SETTINGS[:2])
def test_fast_sampler_equals_fast_dllm(tiny, loaded, cache, threshold, steps, gen_length, block_length):
    """At temperature 0, fast_sample.generate on the loaded model writes the tokens of Fast-dLLM's
    generate / generate_with_prefix_cache / generate_with_dual_cache on LLaDA's forward, with the same
    number of forwards, for the threshold rule (0.9) and the fixed schedule (0). EOS stopping is off
    (eos_id=-1): the reference decodes every position."""
    _, cfg, W = tiny
    prompt = fast_prompt(steps, block_length)
    with torch.no_grad():
        want, want_nfe = FAST_DLLM[cache](reference(cfg, W), prompt.clone(), steps, gen_length, block_length, MASK,
                                          threshold=threshold or None)
    got, nfe = fast_sample.generate(loaded, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                                    cache=cache, threshold=threshold, eos_id=-1)
    assert torch.equal(got, want)
    assert nfe == want_nfe


# -----------------------------------------------------------------------------
# The tokenizer and the chat template

def test_tokenizer_and_chat_template(tiny):
    """families.pretrained reads the folder's tokenizer.json: encode gives the BPE's ids (merges applied, the
    special tokens as single ids), decode inverts it on any text; the chat template of
    tokenizer_config.json renders LLaDA-Instruct's Llama-3 prompt, whose ids start with BOS."""
    from tokenizers import Tokenizer

    import families
    import tokenizer
    folder = tiny[0]
    _, ckpt, fam = families.pretrained(folder)
    meta = ckpt["meta"]
    assert meta["tokenizer"] == "hf" and meta["mask_id"] == MASK and meta["eos_id"] == EOS
    assert fam is families.FAMILIES["mdlm"]  # LLaDA is masked diffusion
    encode, decode = tokenizer.get_codec(meta)
    text = "the cat sat on the mat, and then ran. Ünïcode ✓ 42"
    ids = encode(text)
    assert ids == Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).encode(text).ids
    assert len(ids) < len(text.encode()) and decode(ids) == text  # merged, and back
    chat = tokenizer.chat_prompt(meta, "  What is 2 + 2?\n")  # one user turn, then the assistant's opens
    assert chat == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # the special tokens are single ids, never spelled out in bytes
    assert encode(chat) == ([BOS, START_HEADER] + encode("user") + [END_HEADER] + encode("\n\nWhat is 2 + 2?") +
                            [EOT, START_HEADER] + encode("assistant") + [END_HEADER] + encode("\n\n"))


# -----------------------------------------------------------------------------
# The command lines

@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory):
    """A tiny LLaDA with a context long enough for GSM8K questions in bytes."""
    folder = str(tmp_path_factory.mktemp("llada_cli") / "tiny")
    write_tiny_llada(folder, max_sequence_length=1024)
    return folder


@pytest.mark.slow
def test_sample_cli(cli_folder):
    """sample.py samples from a Hugging Face folder with the Fast-dLLM decoder: plain, the prompt and what
    follows; as a chat, the reply alone (no role names from the template's markup)."""
    common = [f"--init_from={cli_folder}", "--prompt=the cat sat on", "--fast", "--gen_length=16",
              "--block_length=8", "--num_samples=1"]
    with ThreadPoolExecutor(2) as pool:
        plain, chat = pool.map(lambda args: run("sample.py", *args), [common, common + ["--chat=True"]])
    for r in (plain, chat):
        assert r.returncode == 0, r.stderr[-2000:]
        assert "NFE" in r.stderr, r.stderr
    assert plain.stdout.startswith("the cat sat on"), plain.stdout
    assert "the cat sat on" not in chat.stdout and "assistant" not in chat.stdout, chat.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "data", "gsm8k", "test_sft.pkl")),
                    reason="data/gsm8k/test_sft.pkl is absent (python data/gsm8k/prepare.py)")
def test_eval_cli(cli_folder):
    """eval.py --mode=accuracy answers GSM8K questions with a Hugging Face folder and prints its table row."""
    r = run("eval.py", "--mode=accuracy", f"--init_from={cli_folder}", "--dataset=gsm8k", "--max_records=4",
            "--gen_length=16", "--block_length=16", "--steps=16")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and cli_folder in line]
    assert len(rows) == 1, r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "data", "gsm8k", "train_sft.pkl")),
                    reason="data/gsm8k/train_sft.pkl is absent (python data/gsm8k/prepare.py)")
def test_sft_from_a_pretrained_folder_and_the_fast_table(cli_folder, tmp_path):
    """train.py fine-tunes a Hugging Face folder on GSM8K (the records re-encoded in its tokens, its shape
    kept over the config file's); its checkpoint samples with its tokenizer; bench.py's Fast-dLLM table
    takes the folder on a task."""
    out = str(tmp_path / "sft")
    r = run("train.py", "config/gsm8k.py", f"--init_from={cli_folder}", f"--out_dir={out}", "--max_iters=2",
            "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--block_size=1024", "--warmup_iters=1")
    assert r.returncode == 0, r.stderr[-2000:]
    ck = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    assert ck["meta"]["tokenizer"] == "hf" and ck["meta"]["mask_id"] == MASK and ck["meta"]["task"] == "gsm8k"
    assert (ck["model_args"]["n_layer"], ck["model_args"]["n_hidden"], ck["model_args"]["tie"]) == (2, 48, False)
    r = run("sample.py", f"--out_dir={out}", "--prompt=Question: how many", "--gen_length=8", "--block_length=8",
            "--num_samples=1")
    assert r.returncode == 0 and r.stdout.startswith("Question: how many"), r.stderr[-2000:]
    r = run("bench.py", "--what=fast", f"--init_from={cli_folder}", "--dataset=gsm8k", "--split=test",
            "--num_samples=1", "--lengths=16", "--block_length=8")
    assert r.returncode == 0, r.stderr[-2000:]
    # 8 rows (the baseline, Fast-dLLM's 6 settings, no EOS stop) and the forward-cost row
    assert "Task: gsm8k, test split" in r.stdout and sum(line.startswith("| 16 | ") for line in r.stdout.splitlines()) == 9


def bad_inputs(root, good):
    """{name: (--init_from, extra environment)}: the broken checkpoints a user may point --init_from at, made
    from the good one, and a Python without safetensors."""
    def copy(name, drop=()):
        out = os.path.join(root, name)
        shutil.copytree(good, out, ignore=shutil.ignore_patterns(*drop))
        return out
    out = {"missing": os.path.join(root, "no_such_folder"),
           "no_config": copy("no_config", ["config.json"]),
           "no_weights": copy("no_weights", ["*.safetensors", "*.index.json"]),
           "corrupt": copy("corrupt"), "qwen": copy("qwen"), "no_shard": os.path.join(root, "no_shard")}
    path = os.path.join(out["corrupt"], "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])  # cut short, as an interrupted download
    with open(os.path.join(out["qwen"], "config.json"), "w") as f:
        json.dump({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32,
                   "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": VOCAB}, f)
    write_tiny_llada(out["no_shard"], shards=2)
    os.remove(os.path.join(out["no_shard"], "model-00002-of-00002.safetensors"))
    fake = os.path.join(root, "fake_site", "safetensors")  # `import safetensors` fails: this package comes first
    os.makedirs(fake)
    with open(os.path.join(fake, "__init__.py"), "w") as f:
        f.write("raise ImportError('No module named safetensors (simulated)')\n")
    inputs = {name: (folder, {}) for name, folder in out.items()}
    inputs["no_package"] = (good, {"PYTHONPATH": os.path.dirname(fake)})
    inputs["hub_offline"] = ("models/no_such_llada", {"HF_HUB_OFFLINE": "1"})  # a name that is no folder: a hub id
    return inputs


# (input, words the error line must hold): every row exits non-zero with one line, no traceback
BAD = [("missing", "no_such_folder"),
       ("no_config", "config.json"),
       ("no_weights", "safetensors"),
       ("corrupt", "model.safetensors"),  # which file to fetch again (LLaDA-8B has 6 shards)
       ("qwen", "Qwen2ForCausalLM"),
       ("no_shard", "model-00002-of-00002.safetensors"),
       ("no_package", "pip install safetensors"),
       ("hub_offline", "models/no_such_llada")]


@pytest.mark.slow
def test_bad_folders_are_one_line_errors(cli_folder, tmp_path):
    """--init_from a missing folder, a folder without config.json, config.json without weights, a cut
    .safetensors, another architecture (Qwen2), an index naming a missing shard, a Python without
    safetensors, and a name that is no folder and cannot be fetched (offline): each stops with
    'error: ...' naming what is wrong, never a traceback."""
    inputs = bad_inputs(str(tmp_path), cli_folder)

    def attempt(row):
        folder, env = inputs[row[0]]
        return run("sample.py", f"--init_from={folder}", "--prompt=the cat", "--fast", "--gen_length=8",
                   "--block_length=8", "--num_samples=1", env=env)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, BAD))
    wrong = []
    for (name, words), r in zip(BAD, results):
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        if r.returncode == 0 or not last.startswith("error:") or "Traceback" in r.stderr or words not in last:
            wrong.append(f"{name}: exit {r.returncode}, stderr {r.stderr[-600:]!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("change,words", [(dict(n_heads=3, n_kv_heads=3), "head counts"),
                                          (dict(n_heads=0, n_kv_heads=0), "n_head=0"),
                                          (dict(n_layers="2"), "n_layer='2'"),
                                          (dict(max_sequence_length=-5), "block_size=-5"),
                                          (dict(mask_token_id=10**6), "[MASK] id 1000000"),
                                          (dict(rope_theta=float("inf")), "rope_theta=inf")])
def test_config_values_are_checked_before_the_model_is_built(tmp_path, change, words):
    """Every value of a LLaDA config.json is checked (type, range, consistency) before anything is built: one
    line naming it, not an AssertionError, a ZeroDivisionError or a huge allocation from inside model.py."""
    folder = str(tmp_path / "bad")
    write_tiny_llada(folder)
    cj = json.load(open(os.path.join(folder, "config.json")))
    json.dump(dict(cj, **change), open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError) as e:
        from_pretrained(folder)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_checkpoint_whose_config_is_out_of_range_is_one_line(tmp_path):
    """A ckpt.pt whose model_args hold a [MASK] id past the vocabulary is refused when loaded (check_config),
    not an IndexError at the first forward."""
    import checkpoint
    from conftest import tiny_model
    model = tiny_model()
    meta = dict(tokenizer="char", vocab_size=12, mask_id=11, stoi={}, itos={})
    checkpoint.save(str(tmp_path), model, None, dict(objective="mdlm"), meta, iter_num=0, best_val=1.0)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ck["model_args"]["mask_id"] = ck["meta"]["mask_id"] = 10**6
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"\[MASK\] id 1000000") as e:
        checkpoint.load(str(tmp_path))
    assert "1000000" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("template,words", [("{{ 'x' * 10**10 }}", "SecurityError"),
                                            pytest.param("{% for i in range(100000) %}{% for j in range(100000) %}"
                                                         "x{% endfor %}{% endfor %}", "TimeoutError",
                                                         marks=pytest.mark.slow),  # it runs for CHAT_SECONDS
                                            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
                                            ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output passes")])
def test_a_chat_template_is_bounded(tiny, tmp_path, template, words):
    """A template that would write gigabytes, loop for hours or recurse without end stops in one line within
    a few seconds (tokenizer.chat_prompt's bounds)."""
    import time
    import tokenizer
    folder = str(tmp_path / "t")
    shutil.copytree(tiny[0], folder)
    tc = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    json.dump(dict(tc, chat_template=template), open(os.path.join(folder, "tokenizer_config.json"), "w"))
    t0 = time.time()
    with pytest.raises(ValueError, match=words) as e:
        tokenizer.chat_prompt(dict(tokenizer="hf", path=folder), "hi")
    assert "\n" not in str(e.value) and time.time() - t0 < tokenizer.CHAT_SECONDS + 2
