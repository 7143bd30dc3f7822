"""Block diffusion (bd3.py): the block NELBO in one forward is the sum of the blocks' ELBOs one at a time,
its two ends are AR and MDLM, the block cache is exact, rows stop at EOS's block and mixed prompt
lengths give each row what it gives alone, an AR checkpoint converts, and the scripts run it."""
import os

import pytest
import torch
from torch.nn import functional as F

import bd3
import diffusion
from conftest import TINY_TRAIN, run, tiny_model
from checkpoint import load as load_checkpoint
from model import GPT, GPTConfig, kv_buffers
from sample import left_pad


def bd3_model(b, T=16, V=12):
    model = tiny_model(T=T, V=V)
    model.config.bd3_block = b
    return model


def batch(b, B=3, L=12, V=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(V - 1, (B, L), generator=g)
    return bd3.noise(x0, torch.ones_like(x0, dtype=torch.bool), b, V - 1, generator=g)


@pytest.mark.parametrize("b", [3, 4, 5])  # 5: the last block is short
def test_block_nelbo_is_the_sum_of_block_elbos_one_at_a_time(b):
    model, (x_t, x0, w, masked, maskable) = bd3_model(b), batch(b)
    L = x0.size(1)
    full = bd3.loss(model, (x_t, x0, w, masked, maskable), b, reduce=False)
    ref = torch.zeros(len(x0))
    for s in range(0, L, b):  # block k given the clean blocks before it, as the sampler sees it
        e = min(s + b, L)
        k = torch.arange(e) // b
        logits = model(torch.cat([x0[:, :s], x_t[:, s:e]], 1), attn_mask=k[:, None] >= k[None])[:, s:e]
        ref += diffusion.elbo_loss(logits, x0[:, s:e], masked[:, s:e], w[:, s]) * (e - s) / L
    assert masked.any() and torch.allclose(full, ref, atol=1e-5)


def test_time_per_block_and_weights():
    x_t, x0, w, masked, _ = batch(4, B=8, L=16)
    assert (w.view(8, 4, 4) == w.view(8, 4, 4)[..., :1]).all()  # one weight per block
    assert len(w.view(8, 4, 4)[..., 0].unique()) == 32  # ... a time of its own for every block
    assert torch.equal(x_t, torch.where(masked, 11, x0))


def test_block_size_one_is_autoregression_up_to_the_weights():
    model = bd3_model(1)
    x0 = torch.randint(11, (2, 10), generator=torch.Generator().manual_seed(1))
    ones, m = torch.ones_like(x0, dtype=torch.bool), torch.full_like(x0, 11)
    all_masked = bd3.loss(model, (m, x0, torch.ones(x0.shape), ones, ones), 1, reduce=False)
    causal = GPT(GPTConfig(**{**vars(model.config), "causal": True})).eval()
    causal.load_state_dict(model.state_dict())
    # p(x_i | x_<i): the same weights, causal, reading [MASK] at the position they predict
    ce = torch.stack([F.cross_entropy(causal(torch.cat([x0[:, :i], m[:, :1]], 1))[:, -1], x0[:, i], reduction="none")
                      for i in range(10)], 1)  # (B, L)
    assert torch.allclose(all_masked, ce.mean(1), atol=1e-5)
    x_t, _, w, masked, _ = bd3.noise(x0, ones, 1, 11, generator=torch.Generator().manual_seed(2))
    # any noise: each masked token's AR cross-entropy weighted 1/t (masked w.p. t: E = the AR loss)
    assert torch.allclose(bd3.loss(model, (x_t, x0, w, masked, ones), 1, reduce=False),
                          (w * masked * ce).mean(1), atol=1e-5)


def test_block_size_L_is_mdlm():
    model, (x_t, x0, w, masked, maskable) = bd3_model(12), batch(12)
    mdlm = diffusion.loss(model, (x_t, x0, w[:, 0], masked, maskable), reduce=False)
    assert torch.allclose(bd3.loss(model, (x_t, x0, w, masked, maskable), 12, reduce=False), mdlm, atol=1e-5)


def test_nll_bound_scores_only_the_scored_positions():
    model = bd3_model(4)
    windows = torch.randint(11, (5, 16), generator=torch.Generator().manual_seed(3))
    scored = torch.ones(16, dtype=torch.bool)
    scored[0] = False
    mean, se = bd3.BD3.nll(model, windows, scored, n_draws=4)
    assert 0 < mean < 20 and se > 0 and bd3.BD3.nll(model, windows, scored, n_draws=4) == (mean, se)


@pytest.mark.parametrize("opts", [dict(threshold=0.0, steps=8, temperature=1.0), dict(threshold=0.3, temperature=1.0, steps=14),
                                  dict(threshold=0.0, steps=2, temperature=0.0)])
def test_cached_equals_uncached(opts):
    model, prompt = bd3_model(4, T=32), torch.randint(11, (3, 5), generator=torch.Generator().manual_seed(4))
    outs = [bd3.generate(model, prompt, gen_length=14, bd3_cache=c, generator=torch.Generator().manual_seed(0), **opts)
            for c in (True, False)]
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    assert (outs[0][0][:, :5] == prompt).all() and (outs[0][0] != 11).all()


def test_the_cache_is_the_clean_prefix(monkeypatch):
    # after sampling, the cached keys/values of the committed blocks are those of one forward over the
    # clean canvas with the block-causal mask: written once, from clean tokens, never stale
    model, prompt = bd3_model(4, T=32), torch.randint(11, (2, 6), generator=torch.Generator().manual_seed(5))
    made = []  # the buffers generate() makes from its first forward's keys/values (model.kv_buffers)
    monkeypatch.setattr(bd3, "kv_buffers", lambda *a: made.append(kv_buffers(*a)) or made[-1])
    x, _ = bd3.generate(model, prompt, gen_length=12, temperature=0.0, threshold=0.0, steps=12)
    (kv,) = made
    assert all(k.shape == (2, 2, 18, 16) for layer in kv for k in layer)
    blk = (torch.arange(18) - 6).div(4, rounding_mode="floor")
    _, fresh = model(x, attn_mask=blk[:, None] >= blk[None], return_kv=True)
    for cached, clean in zip(kv, fresh):  # all but the last block (its keys/values are never read)
        assert all(torch.allclose(c[:, :, :14], f[:, :, :14], atol=1e-5) for c, f in zip(cached, clean))


def test_rows_stop_at_the_block_that_ends_with_eos():
    model, prompt = bd3_model(4, T=32), torch.randint(11, (3, 4), generator=torch.Generator().manual_seed(6))
    free, nfe_free = bd3.generate(model, prompt, gen_length=16, temperature=0.0, threshold=0.0, steps=16)
    eos = int(free[0, 7])  # the last token row 0 writes in its first block
    out, nfe = bd3.generate(model, prompt, gen_length=16, temperature=0.0, threshold=0.0, steps=16, eos_id=eos)
    for r in range(3):
        # a row stops after the first block at whose end its first EOS has only EOS after it (sample.eos_fill)
        gen, e = free[r, 4:].tolist(), 20
        j = gen.index(eos) if eos in gen else None
        for end in range(4, 17, 4):
            if j is not None and j < end and all(t == eos for t in gen[j:end]):
                e = 4 + end
                break
        assert torch.equal(out[r, :e], free[r, :e]) and (out[r, e:] == eos).all(), r
    assert out[0, 8:].eq(eos).all() and nfe < nfe_free  # row 0 stopped after its first block


@pytest.mark.parametrize("cache", [True, False])
def test_mixed_prompt_lengths_give_each_row_what_it_gives_alone(cache):
    model = bd3_model(4, T=32)
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [2, 2, 2, 2, 2], [7]]
    x, pad = left_pad(rows, 0)
    kw = dict(gen_length=10, temperature=0.0, threshold=0.0, steps=10, bd3_cache=cache)
    out, _ = bd3.generate(model, x, pad=pad, **kw)
    for i, r in enumerate(rows):
        alone, _ = bd3.generate(model, torch.tensor([r]), **kw)
        assert torch.equal(out[i, x.size(1) - len(r):], alone[0]), i


def test_sft_rows_write_infilling_records_after_the_prompt():
    recs = [([1, 2, 3], [4, 5], [1]), ([1, 2], [3], [])]
    x0, maskable = bd3.BD3.sft_rows(recs, 12, 9, torch.Generator().manual_seed(0), 11)
    assert x0[0, :8].tolist() == [1, 11, 3, 1, 2, 3, 4, 5] and not maskable[0, :3].any() and maskable[0, 3:].all()


@pytest.mark.slow
def test_train_sample_cached_and_uncached_and_convert_an_ar_checkpoint(tiny_data, tmp_path):
    out, ar = str(tmp_path / "bd3"), str(tmp_path / "ar")
    r = run("train.py", "config/shakespeare_bd3.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--max_iters=4",
            "--eval_interval=4", *TINY_TRAIN)
    assert r.returncode == 0 and "val NLL bound" in r.stdout, r.stderr
    model, ckpt = load_checkpoint(out)
    assert model.config.bd3_block == 4 and not model.config.causal and ckpt["config"]["objective"] == "bd3"
    r = run("train.py", f"--out_dir={out}", "--init_from=resume", "--bd3_block=8", "--max_iters=8")  # shapes the model
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--bd3_block=8, but" in r.stderr, r.stderr
    args = [f"--out_dir={out}", "--prompt=the ", "--gen_length=14", "--num_samples=3", "--temperature=1"]
    cached, uncached = run("sample.py", *args), run("sample.py", *args, "--bd3_cache=False")
    assert cached.returncode == 0 and "block K/V cache" in cached.stderr, cached.stderr
    assert uncached.returncode == 0 and "no cache" in uncached.stderr and cached.stdout == uncached.stdout
    assert [len(s) for s in cached.stdout.split("---------------\n")[:3]] == [4 + 14 + 1] * 3
    # from an AR checkpoint: the same weights, block-causal; --max_iters=0 writes the converted model
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={ar}", "--objective=ar", "--max_iters=2", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    conv = str(tmp_path / "conv")
    r = run("train.py", "config/shakespeare_bd3.py", f"--dataset={tiny_data}", f"--out_dir={conv}", f"--init_from={ar}",
            "--max_iters=0", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    (a, _), (c, _) = load_checkpoint(ar), load_checkpoint(conv)
    assert a.config.causal and not c.config.causal and c.config.bd3_block == 4
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'no'}", f"--init_from={ar}",
            "--objective=duo", "--max_iters=0", *TINY_TRAIN)  # Duo converts nothing
    assert r.returncode != 0 and "objective=ar, not --objective=duo" in r.stderr
    r = run("eval.py", f"--ckpts={out}", f"--judge={ar}", "--num_samples=2", "--prompt_len=4", "--gen_length=12",
            "--n_draws=1")
    assert r.returncode == 0 and "(bound)" in r.stdout and f"| {out} (bd3" in r.stdout, r.stderr
    assert os.path.exists(os.path.join(out, "ckpt.pt"))
