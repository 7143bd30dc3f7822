import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import TINY_TRAIN, run, tiny_model
from sample import (confidence, cut_at_eos, generate, generate_ancestral, left_pad, num_transfer_tokens,
                    parse_prompt, sampling)

M = 11  # tiny_model's mask id (vocab 12)


def reference_llada(model, prompt, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                    remasking="low_confidence", mask_id=M):
    """An independent transcription of LLaDA's reference generate() (GSAI-ML/LLaDA, generate.py)."""
    def add_gumbel_noise(logits, temperature):
        if temperature == 0:
            return logits
        logits = logits.to(torch.float64)
        noise = torch.rand_like(logits, dtype=torch.float64)
        return logits.exp() / (-torch.log(noise)) ** temperature

    def get_num_transfer_tokens(mask_index, steps):
        mask_num = mask_index.sum(dim=1, keepdim=True)
        base, remainder = mask_num // steps, mask_num % steps
        out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
        for i in range(mask_num.size(0)):
            out[i, :remainder[i]] += 1
        return out

    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        s, e = prompt.shape[1] + num_block * block_length, prompt.shape[1] + (num_block + 1) * block_length
        block_mask_index = x[:, s:e] == mask_id
        ntt = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                logits, un_logits = torch.chunk(model(torch.cat([x, un_x], dim=0)), 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x)
            x0 = torch.argmax(add_gumbel_noise(logits, temperature), dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits.to(torch.float64), dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]))
            x0_p[:, e:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=ntt[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


@pytest.mark.parametrize("gen_length,steps,block_length,cfg", [(32, 32, 8, 0.0), (32, 8, 32, 0.0), (30, 15, 10, 0.0),
                                                                (32, 16, 16, 1.5), (24, 6, 8, 0.0)])
def test_llada_matches_the_reference_step_for_step(gen_length, steps, block_length, cfg):
    model = tiny_model(T=48)
    prompt = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(gen_length + steps))

    def llada_like(x):  # LLaDA's [MASK] logit is finite (just never the largest); ours is -inf
        return model(x).clamp(min=-1e4)
    with torch.no_grad():
        ref = reference_llada(llada_like, prompt, steps, gen_length, block_length, cfg_scale=cfg)
    out, nfe = generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=cfg)
    assert torch.equal(out, ref) and (out != M).all()
    assert nfe == steps * (2 if cfg else 1)


def test_linear_schedule_of_commits():
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[0, :7] = True
    masked[1, :] = True
    assert num_transfer_tokens(masked, 3).tolist() == [[3, 2, 2], [3, 3, 2]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "margin", "entropy"])
def test_every_mask_filled_prompt_kept_and_commits_follow_the_schedule(remasking):
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (3, 8))
    history = []
    out, nfe = generate(model, prompt, gen_length=16, steps=6, block_length=8, temperature=1.0, remasking=remasking,
                        generator=torch.Generator().manual_seed(0), on_step=lambda x, c: history.append((x.clone(), c)))
    assert out.shape == (3, 24) and nfe == 6
    assert torch.equal(out[:, :8], prompt) and (out != M).all()
    # 8 masks per block over 3 steps: 3, 3, 2 commits, block 1 before block 2
    assert [int(c[0].sum()) for _, c in history] == [3, 3, 2, 3, 3, 2]
    for x, _ in history[:3]:
        assert (x[:, 16:] == M).all()


def test_one_token_per_step_and_blocks_left_to_right():
    model = tiny_model(T=24)
    seen = []

    def spy(x, **kw):
        seen.append(x.clone())
        return model(x, **kw)
    spy.config = model.config
    out, _ = generate(spy, torch.randint(0, 11, (1, 8)), gen_length=16, steps=16, block_length=8)
    seen.append(out)
    assert [int((x == M).sum()) for x in seen] == list(range(16, -1, -1))
    for x in seen:
        if (x[0, 8:16] == M).any():
            assert (x[0, 16:] == M).all()


def test_seeded_runs_repeat():
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (2, 8))
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=1.0)
    a, b = (generate(model, prompt, generator=torch.Generator().manual_seed(1), **kw)[0] for _ in range(2))
    c = generate(model, prompt, generator=torch.Generator().manual_seed(2), **kw)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batched_prompts_of_different_lengths_equal_each_row_alone():
    model = tiny_model(T=32)
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 11, (n,), generator=g).tolist() for n in (3, 8, 5)]
    prompt, pad = left_pad(rows, pad_id=0)
    assert prompt.shape == (3, 8) and pad.tolist() == [5, 0, 3]
    batched, _ = generate(model, prompt, steps=16, gen_length=16, block_length=8, pad=pad)
    for b, r in enumerate(rows):
        alone, _ = generate(model, torch.tensor([r]), steps=16, gen_length=16, block_length=8)
        assert torch.equal(batched[b, int(pad[b]):], alone[0])
    # the ancestral sampler on a padded batch: every row's prompt kept, nothing left masked
    out, _ = generate_ancestral(model, prompt, steps=16, gen_length=16, pad=pad, generator=g)
    assert torch.equal(out[:, :8], prompt) and (out != M).all()


def test_cfg_with_left_padding_equals_each_row_alone():
    model = tiny_model(T=32)
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    prompt, pad = left_pad(rows, pad_id=0)
    batched, nfe = generate(model, prompt, steps=8, gen_length=16, block_length=8, cfg_scale=1.0, pad=pad)
    for b, r in enumerate(rows):
        alone, _ = generate(model, torch.tensor([r]), steps=8, gen_length=16, block_length=8, cfg_scale=1.0)
        assert torch.equal(batched[b, int(pad[b]):], alone[0])


class Guided(torch.nn.Module):
    """Tokens a (0) and b (1): conditional logits c = (1.0, 0.9) when the prompt (position 0) is
    visible, unconditional u = (2.0, 0.0) when it is masked (id 3)."""
    config = type("C", (), {"mask_id": 3, "block_size": 2, "causal": False, "shift": False})()

    def forward(self, x, **kw):
        out = torch.full((*x.shape, 4), float("-inf"))
        out[..., :2] = torch.where(x[:, :1, None] == 3, torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.9]))
        return out


def test_cfg_follows_the_guidance_formula():
    # u + (s + 1)(c - u) = (1 - s, 0.9 (s + 1)): b wins iff s > 1/19. c alone (s = 0) picks a; a sampler
    # using u + s(c - u) would need s > 1.05, and one whose unconditional pass saw the prompt never flips
    prompt = torch.tensor([[2]])
    for s, want in [(0.0, 0), (0.04, 0), (0.5, 1), (2.0, 1)]:
        out, nfe = generate(Guided(), prompt, steps=1, gen_length=1, block_length=1, cfg_scale=s)
        assert (out[0, 1].item(), nfe) == (want, 2 if s > 0 else 1), s
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (2, 8))
    calls = []

    def spy(x, **kw):
        calls.append(x.clone())
        return model(x, **kw)
    spy.config = model.config
    out, nfe = generate(spy, prompt, steps=8, gen_length=16, block_length=8, cfg_scale=2.0)
    assert nfe == 16 and all(c.shape[0] == 4 for c in calls)
    assert (calls[0][2:, :8] == M).all() and torch.equal(calls[0][:2, :8], prompt)  # unconditional = prompt masked
    assert (calls[-1][2:, 8:] == calls[-1][:2, 8:]).all()  # the same answer canvas in both halves
    unguided, _ = generate(model, prompt, steps=8, gen_length=16, block_length=8)
    assert not torch.equal(out, unguided)  # guidance changes what is written


def test_confidences():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]]))
    x0 = torch.tensor([[1, 0]])
    assert torch.allclose(confidence(logits, x0, "low_confidence"), torch.tensor([[0.3, 0.9]], dtype=torch.float64))
    assert torch.allclose(confidence(logits, x0, "margin"), torch.tensor([[0.2, 0.85]], dtype=torch.float64))
    ent = confidence(logits, x0, "entropy")
    assert ent[0, 1] > ent[0, 0] and torch.allclose(ent[0, 0], torch.tensor(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2), dtype=torch.float64))


class Joint(torch.nn.Module):
    """A toy 'model' with known marginals: two positions, a joint p(a, b) over 3 tokens; it answers
    with the exact conditional of each masked position given the visible one."""
    config = type("C", (), {"mask_id": 3, "block_size": 2, "causal": False, "shift": False})()

    def __init__(self):
        super().__init__()
        self.p = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.02, 0.26], [0.05, 0.20, 0.05]])
        self.lm_head = torch.nn.Linear(1, 1)

    def forward(self, x, **kw):
        out = torch.full((*x.shape, 4), float("-inf"))
        for b, (a, c) in enumerate(x.tolist()):
            pa = self.p.sum(1) if c == 3 else self.p[:, c] / self.p[:, c].sum()
            pb = self.p.sum(0) if a == 3 else self.p[a] / self.p[a].sum()
            out[b, 0, :3], out[b, 1, :3] = pa.log(), pb.log()
        return out


def test_ancestral_sampler_matches_the_joint_with_many_steps_and_the_product_with_one():
    model, n = Joint(), 4000
    prompt = torch.empty(n, 0, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for steps, target in [(256, model.p), (1, torch.outer(model.p.sum(1), model.p.sum(0)))]:
        out, nfe = generate_ancestral(model, prompt, steps=steps, gen_length=2, temperature=1.0, generator=g)
        counts = torch.zeros(3, 3)
        for a, b in out.tolist():
            counts[a, b] += 1
        expected = target * n
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 26.1, (steps, counts, expected)  # chi-square, 8 dof, p = 0.001
        assert nfe <= min(steps, 3)  # the no-change shortcut: a call per row only when its canvas changed


def test_remdm_never_touches_the_prompt_and_ends_with_no_masks():
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (4, 8))
    remasked = []

    def watch(x, reveal):
        remasked.append(int((x[:, 8:] == M).sum()))
        assert torch.equal(x[:, :8], prompt)
    out, nfe = generate_ancestral(model, prompt, steps=64, gen_length=16, temperature=1.0, eta=0.2,
                                  generator=torch.Generator().manual_seed(0), on_step=watch)
    assert torch.equal(out[:, :8], prompt) and (out != M).all() and nfe <= 64
    assert any(b > a for a, b in zip(remasked, remasked[1:]))  # some decoded tokens were re-masked


def test_infilling_keeps_the_given_text():
    model = tiny_model(T=24)
    ids = parse_prompt("ab[MASK*3]c[MASK]d", lambda s: [ord(ch) - 97 for ch in s], M)
    assert ids == [0, 1, M, M, M, 2, M, 3]
    x = torch.tensor([ids] * 2)
    for out, _ in [generate(model, x, steps=4, gen_length=0, block_length=0),
                   generate(model, x, steps=8, gen_length=8, block_length=8),
                   generate_ancestral(model, x, steps=8, gen_length=8)]:
        given = x != M
        assert torch.equal(out[:, :8][given], x[given]) and (out != M).all()


def test_eos():
    assert cut_at_eos([5, 6, 9, 7, 9], 9, 1) == [5, 6]
    assert cut_at_eos([9, 6, 7], 9, 1) == [9, 6, 7]
    model = tiny_model(T=24)
    out, _ = generate(model, torch.randint(0, 11, (4, 8)), steps=16, gen_length=16, block_length=8, temperature=5.0,
                      eos_id=3, forbid_eos=True,
                      generator=torch.Generator().manual_seed(0))
    assert (out[:, 8:] != 3).all()


def test_the_rules_between_options():
    from diffusion import MDLM
    opts = sampling(MDLM, dict(block_length=0, steps=0), 20)  # 0: one block of the whole answer, a token a step
    assert opts["block_length"] == 20 and opts["steps"] == 20 and opts["temperature"] == 0.8
    assert sampling(MDLM, dict(block_length=8, steps=0), 16, holes=3)["steps"] == 20  # rounded up to the 2 blocks
    for values, words in [(dict(block_length=8), "multiple of --block_length=8"),
                          (dict(block_length=6, steps=5), "--steps=5"),
                          (dict(fast=True, sampler="remdm"), "--fast accelerates")]:
        with pytest.raises(ValueError, match=words):
            sampling(MDLM, values, 18 if "steps" not in values else 12)
    with pytest.raises(ValueError, match="--top_k does not apply"):
        sampling(MDLM, dict(top_k=3), 16, given=("top_k",))
    from bd3 import BD3
    assert sampling(BD3, dict(fast=True, sub_block=8), 16)["fast"]  # bd3's --fast: Fast-dLLM v2's sub-block cache
    with pytest.raises(ValueError, match="needs --remasking=entropy"):
        sampling(BD3, dict(eb_threshold=0.3), 16)
    assert sampling(BD3, dict(eb_threshold=0.3, remasking="entropy"), 16)["eb_threshold"] == 0.3


def test_timegrid_counts_are_dreams():
    """Dream's count at step i: floor(masks left x (1 - t_{i+1} / t_i)) on t = linspace(1, 1e-3, steps + 1),
    every mask left at the last step: 16 masks over 4 steps (t = 1, .75025, .5005, .25075, .001) commit
    floor(3.996) = 3, floor(13 x .3329) = 4, floor(9 x .4990) = 4, then the 5 left."""
    from sample import step_count
    n_commit, left, got = torch.zeros(1, 4, dtype=torch.long), 16, []
    for i in range(4):
        got.append(int(step_count(n_commit, torch.ones(1, left, dtype=torch.bool), i, "timegrid")[0]))
        left -= got[-1]
    assert got == [3, 4, 4, 5]


@pytest.mark.slow
def test_cli(tiny_data, tmp_path):
    out = str(tmp_path)
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--max_iters=0", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    r = run("sample.py", f"--out_dir={out}", "--prompt=the cat", "--gen_length=16", "--block_length=8",
            "--num_samples=2", f"--trace={tmp_path / 'trace.json'}")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("---------------\n")[:2]
    assert len(samples) == 2 and all(s.startswith("the cat") and len(s) == 7 + 16 + 1 for s in samples)
    steps = json.load(open(tmp_path / "trace.json"))["steps"]
    assert len(steps) == 16 and steps[0]["canvas"].count("_") == 15 and "_" not in steps[-1]["canvas"]
    r = run("sample.py", f"--out_dir={out}", "--prompt=the [MASK*5] sat", "--gen_length=0", "--sampler=remdm",
            "--show", "--steps=10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("---------------\n")[-2].startswith("the ") and "\x1b[" in r.stdout
    r = run("sample.py", f"--out_dir={out}", "--prompt=the cat", "--gen_length=16", "--block_length=8", "--fast",
            "--cache=prefix", "--num_samples=2")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("---------------\n")[:2]
    assert all(s.startswith("the cat") and len(s) == 7 + 16 + 1 for s in samples) and "fast prefix cache" in r.stderr
    for args, words in [(["--prompt=the cat!"], "not in the vocabulary"),
                        (["--gen_length=32"], "exceeds the model's context"),
                        (["--gen_length=12", "--block_length=8"], "must be a multiple of --block_length=8"),
                        (["--remasking=best"], "--remasking='best' is not allowed"),
                        (["--gen_length=0"], "nothing to generate"),
                        (["--prompt=FILE:/no/such/file"], "not found")]:
        r = run("sample.py", f"--out_dir={out}", *args)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words in r.stderr, r.stderr
    run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}/ar", "--max_iters=0", "--objective=ar", *TINY_TRAIN)
    r = run("sample.py", f"--out_dir={out}/ar", "--sampler=ancestral")  # an AR checkpoint has no masked sampler
    assert r.returncode != 0 and "--sampler does not apply" in r.stderr and len(r.stderr.strip().splitlines()) == 1
