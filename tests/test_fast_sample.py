import pytest
import torch

import fast_sample
import sample
from conftest import tiny_model
from sample import left_pad

M = 11
L32 = dict(steps=32, gen_length=32, block_length=8)
L16 = dict(steps=16, gen_length=16, block_length=8)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("gen_length,steps,block_length", [(32, 32, 8), (32, 8, 16), (24, 12, 8)])
def test_no_cache_fixed_schedule_equals_sample_py(temperature, gen_length, steps, block_length):
    model = tiny_model(T=48)
    prompt = torch.randint(0, 11, (3, 10), generator=torch.Generator().manual_seed(steps))
    kw = dict(steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature)
    a, nfe_a = sample.generate(model, prompt, generator=torch.Generator().manual_seed(0), **kw)
    b, nfe_b = fast_sample.generate(model, prompt, cache="none", threshold=0, factor=0,
                                    generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and nfe_a == nfe_b == steps


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [0.0, 0.9])
def test_cache_is_exact_where_attention_cannot_see_the_change(cache, threshold):
    # For a causal model a position never attends to later ones, so the keys/values cached at a
    # block's refresh stay exact while the block is decoded: fast_sample.generate with a cache must
    # write exactly what it writes without one. A refresh that cached the wrong rows or positions, a
    # cached step run at the wrong offset, or a stale cache used across blocks breaks the equality.
    model = tiny_model(causal=True, T=48)
    g = torch.Generator().manual_seed(3)
    prompt, pad = left_pad([torch.randint(0, 11, (n,), generator=g).tolist() for n in (5, 9, 7)], pad_id=0)
    kw = dict(steps=24, gen_length=24, block_length=8, temperature=1.0, threshold=threshold, pad=pad)
    ref, nfe_ref = fast_sample.generate(model, prompt, cache="none", generator=torch.Generator().manual_seed(1), **kw)
    out, nfe = fast_sample.generate(model, prompt, cache=cache, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(out, ref) and nfe == nfe_ref


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_caches_finish_keep_the_prompt_and_count_one_forward_per_step(cache):
    model = tiny_model(T=48)
    prompt = torch.randint(0, 11, (2, 8))
    steps = []  # each step's committed positions (B, T)
    out, nfe = fast_sample.generate(model, prompt, steps=32, gen_length=32, block_length=8, cache=cache, threshold=0.9,
                                    on_step=lambda x, chosen: steps.append(chosen.clone()))
    assert (out != M).all() and torch.equal(out[:, :8], prompt)
    chosen = torch.stack(steps)  # (n_steps, B, T)
    assert torch.equal(chosen.sum(0), torch.cat([torch.zeros(2, 8), torch.ones(2, 32)], 1).long())  # each once
    # a row calls the model at a step exactly when it commits there (at least one token, never a stall)
    assert nfe == chosen.any(2).sum(0).float().mean().item()


class Peaked(torch.nn.Module):
    """A context-free toy model: position p predicts token p % 10 with probability `conf`."""

    def __init__(self, conf, T=64, V=12):
        super().__init__()
        self.config = type("C", (), {"mask_id": V - 1, "block_size": T, "causal": False, "shift": False})()
        self.conf, self.V = conf, V
        self.calls = []

    def forward(self, x, start=0, kv=None, pos=None, key_mask=None, return_kv=False):
        B, n = x.shape
        self.calls.append(n)
        p = torch.full((B, n, self.V), (1 - self.conf) / (self.V - 2))
        idx = (torch.arange(start, start + n) % 10)[None, :, None].expand(B, n, 1)
        p.scatter_(2, idx, self.conf)
        logits = p.log()
        logits[..., self.V - 1] = float("-inf")
        return (logits, [(torch.zeros(B, 1, n, 1), torch.zeros(B, 1, n, 1))]) if return_kv else logits


def test_threshold_rule_always_commits_one_so_an_unsure_model_still_finishes():
    model = Peaked(conf=0.3)  # every confidence below tau = 0.9
    out, nfe = fast_sample.generate(model, torch.zeros(2, 4, dtype=torch.long), **L32, cache="dual", threshold=0.9)
    assert (out != 11).all() and nfe == 32  # one token per step: exactly gen_length forwards


def test_threshold_rule_commits_the_whole_block_when_sure():
    model = Peaked(conf=0.95)
    out, nfe = fast_sample.generate(model, torch.zeros(2, 4, dtype=torch.long), **L32, cache="dual", threshold=0.9)
    assert nfe == 4 and model.calls == [36] * 4  # one refresh per block, nothing else
    assert out[0, 4:].tolist() == [p % 10 for p in range(4, 36)]


def test_factor_rule_on_hand_made_confidences():
    conf = torch.tensor([[0.99, 0.95, 0.9, 0.5, float("-inf")],   # n=1: 2*.01=.02; n=2: 3*.05=.15; n=3: 4*.1=.4; n=4: 5*.5
                         [0.4, 0.3, 0.2, 0.1, 0.0],               # nothing passes: at least 1
                         [1.0, 1.0, 1.0, 1.0, 1.0]])              # (n+1)*0 < f for all n
    assert fast_sample.factor_rule(conf, 0.5).tolist() == [3, 1, 5]
    assert fast_sample.factor_rule(conf, 0.1).tolist() == [1, 1, 5]
    model = Peaked(conf=0.3)
    out, nfe = fast_sample.generate(model, torch.zeros(1, 4, dtype=torch.long), **L16, threshold=0, factor=1.0)
    assert (out != 11).all() and nfe == 16  # (n+1)(1-0.3) >= 1 for all n >= 1: one per step


@pytest.mark.parametrize("cache,threshold", [("none", 0.9), ("prefix", 0.9), ("dual", 0.9), ("dual", 0.0)])
def test_batched_equals_per_row(cache, threshold):
    model = tiny_model(T=48)
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(0, 11, (n,), generator=g).tolist() for n in (4, 9, 6)]
    prompt, pad = left_pad(rows, pad_id=0)
    kw = dict(cache=cache, threshold=threshold)
    batched, _ = fast_sample.generate(model, prompt, **L32, pad=pad, **kw)
    for b, r in enumerate(rows):
        alone, _ = fast_sample.generate(model, torch.tensor([r]), **L32, **kw)
        assert torch.equal(batched[b, int(pad[b]):], alone[0])


def test_eos_stop_finishes_rows_early_with_the_same_text():
    class EosAfter(Peaked):  # predicts EOS (token 10) at positions >= 12, confidently
        def forward(self, x, start=0, **kw):
            out = super().forward(x, start=start, **kw)
            logits = out[0] if isinstance(out, tuple) else out
            pos = torch.arange(start, start + x.size(1))
            logits[:, pos >= 12] = torch.tensor([-5.0] * 10 + [5.0, float("-inf")])
            return out
    prompt = torch.zeros(1, 4, dtype=torch.long)
    stop, nfe_stop = fast_sample.generate(EosAfter(0.5), prompt, **L32, threshold=0.9, eos_id=10)
    full, nfe_full = fast_sample.generate(EosAfter(0.5), prompt, **L32, threshold=0.9, eos_id=10, eos_stop=False)
    assert torch.equal(stop, full)  # the same canvas: EOS is what the model would have written
    assert nfe_full == 8 + 3 and nfe_stop == 8 + 1  # blocks after the first EOS block cost nothing


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_what_each_cache_runs(cache):
    model = Peaked(conf=0.3)  # one token per step: a refresh and 7 cached steps per block of 8
    fast_sample.generate(model, torch.zeros(1, 4, dtype=torch.long), **L16, cache=cache, threshold=0.9)
    cached = {"none": [20] * 7, "prefix": [16] * 7, "dual": [8] * 7}[cache]  # block 1 starts at 4
    cached2 = {"none": [20] * 7, "prefix": [8] * 7, "dual": [8] * 7}[cache]  # block 2 starts at 12
    assert model.calls == [20] + cached + [20] + cached2


def test_infilling_with_eos_and_no_generated_part():
    model = tiny_model(T=24)
    x = torch.tensor([[1, M, M, 4, M, 6, 7, M]] * 2)
    for cache in ("none", "prefix", "dual"):
        out, nfe = fast_sample.generate(model, x, steps=4, gen_length=0, block_length=0, cache=cache, eos_id=3)
        assert out.shape == x.shape and (out != M).all() and torch.equal(out[x != M], x[x != M]) and nfe <= 4
