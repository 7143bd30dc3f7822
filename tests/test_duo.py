import itertools
import os
import math

import pytest
import torch
from torch.nn import functional as F

import diffusion
import duo
from conftest import tiny_model


def logits_of(p):
    """Model-shaped logits (..., K + 1) for probabilities p (..., K): the last id is [MASK], never predicted."""
    return torch.cat([p.log(), torch.full((*p.shape[:-1], 1), float("-inf"), dtype=p.dtype)], -1)


def udlm_integrand(p, x, z, a, da):
    """The UDLM NELBO integrand with the one-hot xb built explicitly (GUIDE section 3): one token."""
    K = p.numel()
    xb_p = K * a * p + (1 - a)
    xb = torch.full((K,), 1 - a, dtype=torch.float64)
    xb[x] += K * a
    s = sum(xb[j] / xb[z] * math.log(xb_p[z] * xb[j] / (xb_p[j] * xb[z])) for j in range(K))
    return -da / (K * a) * (K / xb_p[z] - K / xb[z] + s)


@pytest.mark.parametrize("K", [2, 7, 65])
def test_the_bound_of_a_uniform_model_is_exactly_log_k(K):
    # A model predicting p = uniform makes the plug-in reverse step the true one for uniform data, so the
    # bound is tight: the NELBO integrated over t in [0, 1] (z = x w.p. alpha + (1 - alpha)/K) plus the
    # prior term is log K. Checks nelbo(), the schedule and prior_kl together, by quadrature.
    t = torch.cat([torch.logspace(-14, -1, 20001, dtype=torch.float64)[:-1],
                   torch.linspace(0.1, 1, 20001, dtype=torch.float64)])
    a, da = duo.log_linear(t)
    x0, z = torch.zeros(len(t), 2, dtype=torch.long), torch.tensor([0, 1]).expand(len(t), 2)  # z = x, z != x
    f = duo.nelbo(logits_of(torch.full((len(t), 2, K), 1 / K, dtype=torch.float64)), x0, z, a, da).double()
    p_eq = a + (1 - a) / K
    bound = torch.trapezoid(p_eq * f[:, 0] + (1 - p_eq) * f[:, 1], t).item() + duo.prior_kl(K)
    assert abs(bound - math.log(K)) < 1e-5, (bound, math.log(K))


def test_forward_marginal_is_alpha_onehot_plus_uniform():
    K, n = 5, 200000
    x0 = torch.full((4, n), 2)
    a = torch.tensor([0.9, 0.6, 0.3, 0.05])
    z = duo.q_uniform(x0, a, K, torch.Generator().manual_seed(0))
    freq = F.one_hot(z, K).float().mean(1)  # (4, K)
    want = a[:, None] * F.one_hot(torch.tensor(2), K).float() + (1 - a[:, None]) / K
    se = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() < 5 * se).all(), (freq, want)


@pytest.mark.parametrize("same", [True, False])
def test_nelbo_is_zero_at_the_truth_positive_otherwise_and_equals_the_udlm_integrand(same):
    K, g = 7, torch.Generator().manual_seed(1)
    for a in (0.05, 0.5, 0.97):
        x, z = 3, 3 if same else 5
        at, da = torch.tensor([a]), torch.tensor([-0.999])
        truth = F.one_hot(torch.tensor(x), K).double() * (1 - 1e-12) + 1e-12 / K
        zero = duo.nelbo(logits_of(truth)[None, None], torch.tensor([[x]]), torch.tensor([[z]]), at, da)
        assert abs(zero.item()) < 1e-6
        for _ in range(5):
            p = torch.rand(K, generator=g, dtype=torch.float64) ** 3
            p /= p.sum()
            got = duo.nelbo(logits_of(p)[None, None], torch.tensor([[x]]), torch.tensor([[z]]), at, da).item()
            assert got > 1e-6 and math.isclose(got, udlm_integrand(p, x, z, a, -0.999).item(), rel_tol=1e-5)


@pytest.mark.parametrize("x,z", [(2, 2), (2, 0)])
def test_nelbo_is_the_limit_of_the_posterior_kl(x, z):
    # For a fixed noisy token z at time t, the NELBO integrand is lim_{h -> 0} KL(q(z_s | z_t, x) ||
    # q(z_s | z_t, p)) / h with s = t - h: the discrete-time ELBO's step term. An independent check of
    # nelbo() and posterior() together (with the log-linear schedule, d alpha / dt = -(1 - eps)).
    K, t = 4, 0.6
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    a_t = duo.log_linear(torch.tensor(t, dtype=torch.float64))[0].item()
    want = duo.nelbo(logits_of(p)[None, None], torch.tensor([[x]]), torch.tensor([[z]]), torch.tensor([a_t]),
                     torch.tensor([-(1 - duo.ALPHA_MIN)])).item()
    errs = []
    for h in (1e-3, 1e-4):
        a_s = duo.log_linear(torch.tensor(t - h, dtype=torch.float64))[0].item()
        zt = torch.tensor([[z]])
        q = duo.posterior(F.one_hot(torch.tensor([[x]]), K).double(), zt, a_t, a_s)[0, 0]
        qp = duo.posterior(p[None, None], zt, a_t, a_s)[0, 0]
        kl = (q * (q.clamp(min=1e-300).log() - qp.log())).sum().item()
        errs.append(abs(kl / h - want))
    assert errs[1] < 0.01 * want and errs[1] < errs[0], (errs, want)  # converges as h -> 0


def test_posterior_is_bayes_rule_and_rows_sum_to_one():
    K, a_t, a_s = 4, 0.3, 0.7
    for x, zt in itertools.product(range(K), range(K)):
        got = duo.posterior(F.one_hot(torch.tensor([[x]]), K).double(), torch.tensor([[zt]]), a_t, a_s)[0, 0]
        a_ts = a_t / a_s
        joint = [(a_ts * (j == zt) + (1 - a_ts) / K) * (a_s * (j == x) + (1 - a_s) / K) for j in range(K)]
        assert torch.allclose(got, torch.tensor(joint, dtype=torch.float64) / sum(joint), atol=1e-12)
    p = F.softmax(torch.randn(3, 5, K, dtype=torch.float64), -1)
    assert torch.allclose(duo.posterior(p, torch.randint(K, (3, 5)), a_t, a_s).sum(-1), torch.ones(3, 5, dtype=torch.float64))


def test_T_is_monotone_spans_the_window_and_matches_monte_carlo():
    K = 65
    gamma, T, dT = duo.table(K)
    assert abs(T[0] - 0.95) < 1e-6 and abs(T[-1] - 0.05) < 1e-6 and (T.diff() < 0).all()  # falls as gamma grows
    g_min, g_max = duo.window(K)
    g_big = duo.window(50257)  # a bigger vocabulary needs a less noisy window: it is not reused across K
    assert g_big[0] < g_min - 0.5 and g_big[1] < g_max - 2
    # T against Monte Carlo, P(argmax(at x + st eps) = x) in alpha units from 10^6 draws, at two points and at
    # both ends of the window (where alpha_t must be 0.95 and 0.05)
    at = duo.gauss_alpha(torch.tensor([-2.0, 0.0, g_min, g_max], dtype=torch.float64))
    T2, dT2 = duo.T_of(at, K)
    assert abs(T2[2] - 0.95) < 1e-6 and abs(T2[3] - 0.05) < 1e-6
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        hits = 0
        for _ in range(10):
            w = torch.randn(100000, K, generator=g)
            w[:, 0] += (at[i] / (1 - at[i] ** 2).sqrt()).item()
            hits += (w.argmax(-1) == 0).sum().item()
        p = hits / 1e6
        mc, se = (p - 1 / K) * K / (K - 1), math.sqrt(p * (1 - p) / 1e6) * K / (K - 1)
        assert abs(mc - T2[i].item()) < 5 * se, (mc, T2[i], se)
    h = 1e-5  # dT/da against finite differences
    num = (duo.T_of(at + h, K)[0] - duo.T_of(at - h, K)[0]) / (2 * h)
    assert torch.allclose(dT2, num, rtol=1e-4)
    t = torch.tensor([0.3, 0.7])  # d alpha / dt of the interpolated schedule, also by finite differences
    d = (duo.gauss_schedule(t + 1e-3, K)[1] - duo.gauss_schedule(t - 1e-3, K)[1]) / 2e-3
    assert torch.allclose(duo.gauss_schedule(t, K)[2], d, rtol=1e-3)


def test_dcd_trajectories_are_deterministic_and_flip_at_most_once():
    K, g = 11, torch.Generator().manual_seed(0)
    x0 = torch.randint(K, (2, 30), generator=g)
    eps = torch.randn(2, 30, K, generator=g)
    ts = torch.linspace(1, 0, 101)
    path = torch.stack([duo.dcd_trajectory(x0, t.repeat(2), t.repeat(2), K, eps)[0] for t in ts])  # (101, 2, 30)
    again = torch.stack([duo.dcd_trajectory(x0, t.repeat(2), t.repeat(2), K, eps)[1] for t in ts])
    assert torch.equal(path, again)
    flips = (path[1:] != path[:-1]).sum(0)
    assert flips.max() <= 1 and flips.sum() > 0
    assert torch.equal(path[-1], x0) or (path[-1] == x0).float().mean() > 0.9  # t = 0: alpha 0.95
    noise_top = eps.masked_fill(F.one_hot(x0, K).bool(), float("-inf")).argmax(-1)
    assert ((path == x0) | (path == noise_top)).all()  # either the noise's own argmax or x
    b1 = duo.dcd_noise(x0, None, K, 0.1, torch.Generator().manual_seed(5))
    b2 = duo.dcd_noise(x0, None, K, 0.1, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(b1, b2)) and (b1[2] <= b1[3]).all()  # alpha_t <= alpha_s


def test_noise_is_seeded_keeps_the_prompt_and_the_soft_input_agrees():
    K = 11
    x0 = torch.randint(K, (4, 20))
    maskable = torch.ones(4, 20, dtype=torch.bool)
    maskable[:, :5] = False
    for curriculum in (False, True):
        a = duo.noise(x0, maskable, K, curriculum=curriculum, generator=torch.Generator().manual_seed(3))
        b = duo.noise(x0, maskable, K, curriculum=curriculum, generator=torch.Generator().manual_seed(3))
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        inp, _, z, alpha_t, da, _ = a
        assert torch.equal(z[:, :5], x0[:, :5]) and (z[:, 5:] != x0[:, 5:]).any()
        t = diffusion.sample_t(4, 1e-3, True, generator=torch.Generator().manual_seed(3))  # the first draw of noise()
        want = duo.gauss_schedule(t, K)[1:] if curriculum else duo.log_linear(t)  # (alpha_t, d alpha_t / dt)
        assert torch.allclose(alpha_t, want[0]) and torch.allclose(da, want[1])
        if curriculum:
            assert inp.shape == (4, 20, K) and torch.equal(inp.argmax(-1), z)
            assert torch.allclose(inp.sum(-1), torch.ones(4, 20))


class Fixed(torch.nn.Module):
    """A toy time-conditioned denoiser: fixed per-position logits, whatever it reads."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.calls = logits, 0
        self.config = type("C", (), {"vocab_size": logits.size(-1), "mask_id": logits.size(-1) - 1})()

    def forward(self, x, sigma=None, **kw):
        assert sigma is not None and sigma.shape == (x.size(0),)
        self.calls += 1
        return self.logits[None, :x.size(1)].expand(x.size(0), -1, -1)


def test_sampler_keeps_the_prompt_counts_steps_and_ends_greedy():
    K, L = 6, 12
    p = F.softmax(torch.randn(4 + L, K, generator=torch.Generator().manual_seed(0)) * 2, -1)
    model = Fixed(logits_of(p).float())
    prompt = torch.randint(K, (3, 4))
    out, nfe = duo.generate(model, prompt, steps=8, gen_length=L, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :4], prompt) and nfe == 9 == model.calls and (out < K).all()  # 8 steps + the tail
    assert torch.equal(out[:, 4:], p[4:].argmax(-1).expand(3, -1))  # greedy tail: argmax of the prediction
    out, _ = duo.generate(model, prompt, steps=8, gen_length=L, greedy_tail=False, top_k=1,
                          generator=torch.Generator().manual_seed(1))
    # top-k = 1 acts on p: the posterior keeps only the argmax (or the current token) as the clean token,
    # and at the last step (alpha_s = 1) it can only be the argmax
    assert torch.equal(out[:, 4:], p[4:].argmax(-1).expand(3, -1))
    many = torch.stack([duo.generate(model, prompt[:1].expand(400, -1), steps=16, gen_length=L, greedy_tail=False,
                                     generator=torch.Generator().manual_seed(s))[0][:, 4:] for s in range(2)]).flatten(0, 1)
    freq = F.one_hot(many, K).float().mean(0)  # with many steps the samples follow p (800 draws per position)
    assert (freq - p[4:]).abs().max() < 0.08



class Reader(torch.nn.Module):
    """A toy denoiser whose prediction depends on what it reads: each position favours the token to its
    left plus one (mod K); it records every canvas and sigma it is called with."""

    def __init__(self, K):
        super().__init__()
        self.K, self.seen = K, []
        self.config = type("C", (), {"vocab_size": K + 1, "mask_id": K})()

    def forward(self, x, sigma=None, **kw):
        self.seen.append((x.clone(), sigma.clone()))
        return torch.cat([3.0 * F.one_hot((x.roll(1, 1) + 1) % self.K, self.K), torch.zeros(*x.shape, 1)], -1)


def test_greedy_tail_is_one_more_forward_at_t0_on_the_finished_canvas():
    # Duo's reference sampler: `steps` ancestral steps, then the model reads the result as clean
    # (sigma = 0) and every generated position takes its argmax
    K, prompt = 7, torch.randint(7, (2, 3), generator=torch.Generator().manual_seed(0))
    plain, n_plain = duo.generate(Reader(K), prompt, steps=5, gen_length=10, greedy_tail=False,
                                  generator=torch.Generator().manual_seed(4))
    model = Reader(K)
    out, nfe = duo.generate(model, prompt, steps=5, gen_length=10, generator=torch.Generator().manual_seed(4))
    assert (n_plain, nfe, len(model.seen)) == (5, 6, 6)
    x_last, sigma_last = model.seen[-1]
    assert torch.equal(x_last, plain) and (sigma_last == 0).all()  # the tail reads the plain sampler's output
    assert (model.seen[-2][1] > 0).all()
    want = torch.cat([prompt, ((plain.roll(1, 1) + 1) % K)[:, 3:]], 1)
    assert torch.equal(out, want) and not torch.equal(out, plain)

def test_filter_top():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    assert torch.allclose(duo.filter_top(p, top_k=2), torch.tensor([[0.625, 0.375, 0, 0]], dtype=torch.float64))
    assert torch.allclose(duo.filter_top(p, top_p=0.7), torch.tensor([[0.625, 0.375, 0, 0]], dtype=torch.float64))
    assert torch.allclose(duo.filter_top(p, top_p=0.85), torch.tensor([[0.5, 0.3, 0.15, 0]], dtype=torch.float64) / 0.95)


@pytest.mark.slow  # seconds: 200 training steps
def test_training_a_time_conditioned_model_lowers_the_bound():
    K, g = 8, torch.Generator().manual_seed(0)
    model = tiny_model(V=K + 1, T=16, time_cond=True).train()
    x0 = torch.arange(16)[None].repeat(64, 1) % 4 + (torch.arange(64)[:, None] % 2) * 4  # two patterns
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = duo.loss(model, duo.noise(x0, None, K, generator=torch.Generator().manual_seed(9))).item()
    for step in range(150):
        batch = duo.noise(x0, None, K, curriculum=step < 50, generator=g)
        opt.zero_grad()
        duo.loss(model, batch).backward()
        opt.step()
    after = duo.loss(model, duo.noise(x0, None, K, generator=torch.Generator().manual_seed(9))).item()
    assert after < before - 0.5, (before, after)  # 2.3 -> 1.5 nats in 150 steps
    assert model.layers[0].ada.weight.abs().sum() > 0  # the time conditioning was trained


def test_time_conditioning_starts_as_the_plain_model_and_soft_one_hot_equals_ids():
    plain, cond = tiny_model(), tiny_model(time_cond=True)
    x = torch.randint(0, 11, (2, 16))
    sigma = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.allclose(plain(x), cond(x, sigma=sigma), atol=1e-6)  # zero-initialised adaLN
        soft = F.one_hot(x, 11).float()  # probabilities over the 11 real ids (not [MASK])
        assert torch.allclose(cond(soft, sigma=sigma), cond(x, sigma=sigma), atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        cond(x)


# -----------------------------------------------------------------------------
# Through the command lines

OLD_SAMPLES = [  # sample.py's output for tests/data/mdlm_6fbf9f8.pt, recorded with the code of commit 6fbf9f8
    (["--prompt=the cat", "--gen_length=16", "--block_length=8", "--num_samples=2", "--seed=3"],
     "the catt  et t    a al \n---------------\nthe cat  nh       e  ah\n---------------\n"),
    (["--sampler=ancestral", "--steps=8", "--gen_length=16", "--temperature=1", "--num_samples=2"],
     "\n  ett l w ss  he\n---------------\n\nwnaaw hhlmn awor\n---------------\n"),
    (["--prompt=the [MASK*5] sat", "--gen_length=0", "--sampler=remdm", "--steps=10"],
     "the eo at sat\n---------------\nthe ooaoa sat\n---------------\nthe s  ae sat\n---------------\n"),
    (["--fast", "--gen_length=24", "--block_length=8", "--num_samples=2", "--temperature=0.5"],
     "\n e    t      al         \n---------------\n\n        r             e \n---------------\n"),
]


@pytest.mark.slow
def test_mdlm_checkpoints_made_before_duo_load_and_sample_identically(tmp_path):
    import shutil
    from conftest import ROOT, run
    shutil.copy(os.path.join(ROOT, "tests", "data", "mdlm_6fbf9f8.pt"), tmp_path / "ckpt.pt")
    for args, want in OLD_SAMPLES:
        r = run("sample.py", f"--out_dir={tmp_path}", *args)
        assert r.returncode == 0 and r.stdout == want, (args, r.stdout, r.stderr)


@pytest.mark.slow
def test_duo_and_dcd_train_resume_exactly_and_sample_from_the_command_line(tiny_data, tmp_path):
    from conftest import TINY_TRAIN, run
    from test_train import losses, weights
    args = [f"--dataset={tiny_data}", "--objective=duo", "--curriculum_iters=4", "--lr_decay_iters=8",
            "--eval_interval=100", "--log_interval=1", *TINY_TRAIN]
    full = run("train.py", f"--out_dir={tmp_path / 'full'}", "--max_iters=8", *args)
    part = run("train.py", f"--out_dir={tmp_path / 'part'}", "--max_iters=3", *args)  # stops inside the curriculum
    rest = run("train.py", f"--out_dir={tmp_path / 'part'}", "--max_iters=8", "--init_from=resume", *args)
    for r in (full, part, rest):
        assert r.returncode == 0, r.stderr
    assert "duo: " in full.stdout and "val NLL bound" in full.stdout
    lf, lr = losses(full.stdout), losses(rest.stdout)
    assert sorted(lr) == [4, 5, 6, 7, 8] and all(lf[i] == lr[i] for i in lr), (lf, lr)
    wf, wp = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wp[k]) for k in wf) and any("ada" in k for k in wf)
    # distillation from it, through train.py, with the teacher resumed exactly across rounds
    dargs = [f"--dataset={tiny_data}", "--objective=dcd", f"--init_from={tmp_path / 'full'}", "--dcd_round_iters=3",
             "--dcd_delta=0.1", "--lr_decay_iters=7", "--eval_interval=100", "--log_interval=1", *TINY_TRAIN]
    dfull = run("train.py", f"--out_dir={tmp_path / 'dfull'}", "--max_iters=7", *dargs)
    dpart = run("train.py", f"--out_dir={tmp_path / 'dpart'}", "--max_iters=4", *dargs)  # inside the second round
    drest = run("train.py", f"--out_dir={tmp_path / 'dpart'}", "--max_iters=7", *dargs[:2], "--init_from=resume",
                *dargs[3:])
    for r in (dfull, dpart, drest):
        assert r.returncode == 0, r.stderr
    lf, lr = losses(dfull.stdout), losses(drest.stdout)
    assert sorted(lr) == [5, 6, 7] and all(lf[i] == lr[i] for i in lr) and lf[1] > 0, (lf, lr)
    assert all(torch.equal(u, v) for u, v in zip(weights(tmp_path / "dfull").values(), weights(tmp_path / "dpart").values()))
    for out in ("full", "dfull"):  # the checkpoint says it is uniform-state: sample.py picks Duo's sampler
        r = run("sample.py", f"--out_dir={tmp_path / out}", "--prompt=the ", "--gen_length=16", "--steps=4",
                "--num_samples=2")
        assert r.returncode == 0 and "duo ancestral, greedy tail, 5 model forwards" in r.stderr, r.stderr
        assert all(s.startswith("the ") and len(s) == 4 + 16 + 1 for s in r.stdout.split("---------------\n")[:2])
    r = run("sample.py", f"--out_dir={tmp_path / 'full'}", "--cfg_scale=1.0")
    assert r.returncode != 0 and "does not apply" in r.stderr and len(r.stderr.strip().splitlines()) == 1
