import itertools
import math
import os

import numpy as np
import pickle
import pytest

import torch
from torch.nn import functional as F

from conftest import TINY_TRAIN, run, tiny_model
from ar import AR, decode, token_nll
from eval import entropy, extract_answer, gen_ppl, heldout_nll
from test_diffusion import elbo


def exact_mdlm(model, L, V):
    """For a tiny masked model, by enumeration: the exact likelihood p(x) of its generative process
    (a uniformly random order, one token at a time: E_sigma prod_k p(x_sigma(k) | x_sigma(<k))) and
    its exact negative ELBO, sum_l (1/l) avg_{|S|=l} sum_{i in S} -log p(x_i | x without S)."""
    m = V  # mask id; V real tokens
    canvases = list(itertools.product(range(V + 1), repeat=L))
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor(canvases)), -1)  # every canvas in one batch
    table = {c: logp[j] for j, c in enumerate(canvases)}

    def cond(x, visible, i):  # log p(x_i | the tokens of x at `visible`, the rest masked)
        return table[tuple(x[j] if j in visible else m for j in range(L))][i, x[i]].item()

    nll, nelbo = {}, {}
    for x in itertools.product(range(V), repeat=L):
        ps = []
        for order in itertools.permutations(range(L)):
            ps.append(math.exp(sum(cond(x, set(order[:k]), order[k]) for k in range(L))))
        nll[x] = -math.log(sum(ps) / len(ps))
        total = 0.0
        for l in range(1, L + 1):
            subsets = list(itertools.combinations(range(L), l))
            total += sum(-cond(x, set(range(L)) - set(S), i) for S in subsets for i in S) / len(subsets) / l
        nelbo[x] = total
    return nll, nelbo


def test_nll_bound_is_an_upper_bound_by_brute_force():
    L, V = 4, 3
    model = tiny_model(V=V + 1, T=L)
    nll, nelbo = exact_mdlm(model, L, V)
    assert abs(sum(math.exp(-v) for v in nll.values()) - 1) < 1e-5  # a normalised distribution
    assert all(nelbo[x] >= nll[x] - 1e-6 for x in nll)  # the ELBO bounds every sequence
    assert any(nelbo[x] > nll[x] + 1e-3 for x in nll)   # and the bound is not trivially tight
    # the Monte-Carlo estimators used for training and evaluation converge to the exact NELBO
    g = torch.Generator().manual_seed(0)
    for x in [(0, 1, 2, 0), (2, 2, 1, 1)]:
        x0 = torch.tensor([x] * 20000)
        for count in (False, True):
            with torch.no_grad():
                v = elbo(model, x0, mask_id=V, count=count, generator=g) * L  # nats per sequence
            se = v.std().item() / math.sqrt(len(v))
            assert abs(v.mean().item() - nelbo[x]) < 4 * se + 2e-3, (x, count, v.mean().item(), nelbo[x], se)
            assert v.mean().item() >= nll[x] - 4 * se
            few = v[:200].mean().item()  # and more draws bring the estimate closer
            assert abs(v.mean().item() - nelbo[x]) <= abs(few - nelbo[x]) + 4 * se


def test_token_nll_and_sliding_window():
    judge = tiny_model(causal=True, T=16)
    ids = torch.randint(0, 11, (3, 40))
    got = token_nll(judge, ids, batch_size=2)
    assert got.shape == (3, 39)
    with torch.no_grad():  # the first window has its whole prefix as context
        ref = F.cross_entropy(judge(ids[:, :16])[:, :-1].transpose(1, 2), ids[:, 1:16], reduction="none")
        assert torch.allclose(got[:, :15], ref, atol=1e-5)
        # position 20 is scored in the window [8, 24) (stride 8): its context is ids[8:20]
        lp = F.log_softmax(judge(ids[:, 8:24]), -1)
        assert torch.allclose(got[:, 19], -lp[torch.arange(3), 11, ids[:, 20]], atol=1e-5)


def test_gen_ppl_scores_generated_tokens_only():
    judge = tiny_model(causal=True, T=32)
    x = torch.randint(0, 11, (4, 24))
    with torch.no_grad():
        lp = F.log_softmax(judge(x), -1)
    nll = -lp[:, 7:-1].gather(-1, x[:, 8:, None]).squeeze(-1)  # targets 8..23 given their prefix
    assert math.isclose(gen_ppl(judge, x, prompt_len=8), math.exp(nll.mean().item()), rel_tol=1e-5)


@pytest.mark.slow
def test_judge_prefers_real_text_and_its_own_greedy_text_to_shuffled_text(tiny_data, tiny_judge):
    judge = tiny_judge[1]
    ids = torch.from_numpy(np.fromfile(os.path.join(tiny_data, "val.bin"), dtype=np.uint16).astype(np.int64))
    real = ids[:8 * 32].view(8, 32)
    greedy, _ = decode(judge, real[:, :8], 24, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    shuffled = real.clone()
    for b in range(8):
        shuffled[b, 8:] = real[b, 8:][torch.randperm(24, generator=g)]
    p_greedy, p_real, p_shuffled = (gen_ppl(judge, x, 8) for x in (greedy, real, shuffled))
    assert p_greedy < p_real < p_shuffled, (p_greedy, p_real, p_shuffled)
    assert math.isclose(entropy(real, 8), entropy(shuffled, 8))  # same tokens, same unigram entropy


def test_ar_sampling_with_cache_equals_without():
    model = tiny_model(causal=True, T=32)
    prompt = torch.randint(0, 11, (3, 5))
    x = prompt
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    from sample import add_gumbel_noise
    with torch.no_grad():
        for _ in range(20):  # no cache: a full forward per token
            x = torch.cat([x, add_gumbel_noise(model(x)[:, -1], 1.0, g1).argmax(-1, keepdim=True)], 1)
    out, nfe = decode(model, prompt, 20, 1.0, g2)
    assert torch.equal(out, x) and nfe == 20


def test_entropy():
    s = torch.tensor([[9, 9, 0, 1, 0, 1], [9, 9, 2, 2, 2, 2]])
    assert math.isclose(entropy(s, 2), (math.log(2) + 0.0) / 2)


def test_heldout_nll_ar_is_exact_cross_entropy():
    model = tiny_model(causal=True, T=16)
    w = torch.randint(0, 11, (10, 16))
    mean, se = heldout_nll(model, AR, w)
    with torch.no_grad():
        ref = F.cross_entropy(model(w)[:, :-1].reshape(-1, 12), w[:, 1:].reshape(-1)).item()
    assert math.isclose(mean, ref, rel_tol=1e-5) and se > 0


def test_extract_answer():
    assert extract_answer("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert extract_answer("so the total is $1,250.") == "1250"
    assert extract_answer("no number") == ""


@pytest.mark.slow
def test_cli_table(tiny_data, tiny_judge, tmp_path):
    for obj in ("mdlm", "ar"):
        r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / obj}", f"--objective={obj}",
                "--max_iters=2", *TINY_TRAIN)
        assert r.returncode == 0, r.stderr
    r = run("eval.py", f"--ckpts={tmp_path / 'mdlm'},{tmp_path / 'ar'}", f"--judge={tiny_judge[0]}",
            "--num_samples=4", "--prompt_len=8", "--gen_length=16", "--n_draws=2")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("| ")]
    assert len(lines) == 5 and "(bound)" in lines[3] and "(exact)" in lines[4], r.stdout
    r = run("eval.py", f"--ckpts={tmp_path / 'mdlm'}", f"--judge={tmp_path / 'mdlm'}")
    assert r.returncode != 0 and "must be an autoregressive" in r.stderr
    r = run("eval.py", f"--ckpts={tmp_path / 'mdlm'}", f"--judge={tiny_judge[0]}", "--gen_length=64")
    assert r.returncode != 0 and "exceeds" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_gen_ppl_and_entropy_stop_at_the_first_eos():
    judge = tiny_model(causal=True, T=32)
    x = torch.randint(0, 10, (2, 20), generator=torch.Generator().manual_seed(0))
    eos = 10
    y = x.clone()
    y[0, 14:] = eos          # row 0 generates 8..13, then EOS padding
    y[1, 17], y[1, 18] = eos, 3  # row 1 generates 8..16; what follows the first EOS does not count
    with torch.no_grad():
        nll = token_nll(judge, x)
    expect = torch.cat([nll[0, 7:13], nll[1, 7:16]]).mean().exp().item()
    assert math.isclose(gen_ppl(judge, y, 8, eos), expect, rel_tol=1e-5)
    assert math.isclose(entropy(y, 8, eos), (entropy(x[:1, :14], 8) + entropy(x[1:, :17], 8)) / 2)


@pytest.mark.slow
def test_cli_on_a_checkpoint_with_eos(tiny_data, tiny_judge, tmp_path):
    # an SFT vocabulary adds EOS after the judge's ids: its samples are cut at EOS, never scored by it
    from test_train import sft_dataset
    with open(os.path.join(tiny_data, "meta.pkl"), "rb") as f:
        sft_dataset(tmp_path / "sft", pickle.load(f), 200)
    r = run("train.py", f"--dataset={tmp_path / 'sft'}", f"--out_dir={tmp_path / 'm'}", "--max_iters=2", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    r = run("eval.py", f"--ckpts={tmp_path / 'm'}", f"--judge={tiny_judge[0]}", "--num_samples=8", "--prompt_len=8",
            "--gen_length=16", "--n_draws=1", "--temperature=3.0")
    assert r.returncode == 0, r.stderr
    row = [c.strip() for c in r.stdout.splitlines()[3].strip("|").split("|")]
    assert "(bound)" in row[4] and float(row[6]) > 1.0  # gen PPL of the text before the first EOS
