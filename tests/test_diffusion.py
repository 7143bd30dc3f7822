import math

import torch

from diffusion import (MDLM, alpha, elbo_loss, flat_weight, loss, loss_weight, nll_bound, noise, q_sample, q_sample_count,
                       sample_count, sample_t)


def elbo(model, x0, mask_id, count=False, generator=None):
    """The per-sequence negative ELBO of x0 under one draw of the noise (B,)."""
    return loss(model, noise(x0, None, mask_id, masking="count" if count else "rate", generator=generator),
                reduce=False)
from conftest import tiny_model


def test_masking_rate_is_one_minus_alpha():
    torch.manual_seed(0)
    x0 = torch.zeros(4, 50000, dtype=torch.long)
    for schedule in ("linear", "cosine"):
        t = torch.tensor([0.1, 0.35, 0.6, 0.9])
        x_t, masked = q_sample(x0, t, mask_id=7, schedule=schedule)
        rate = (x_t == 7).float().mean(1)
        expect = 1 - alpha(t, schedule)[0]
        # binomial standard error <= 0.5/sqrt(50000) ~ 0.0022; 5 sigma
        assert torch.allclose(rate, expect, atol=0.011), (schedule, rate, expect)
        assert torch.equal(masked, x_t == 7)


def test_maskable_positions_stay_clean():
    x0 = torch.randint(0, 5, (8, 40))
    maskable = torch.zeros(8, 40, dtype=torch.bool)
    maskable[:, 10:] = True
    x_t, masked = q_sample(x0, torch.full((8,), 0.999), mask_id=9, maskable=maskable)
    assert torch.equal(x_t[:, :10], x0[:, :10])
    assert masked[:, 10:].float().mean() > 0.9


def test_loss_weight_is_minus_alpha_prime_over_one_minus_alpha():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert torch.allclose(loss_weight(t, "linear"), 1 / t)  # linear schedule: 1/t
    for schedule in ("linear", "cosine"):
        h = 1e-6
        da_num = (alpha(t + h, schedule)[0] - alpha(t - h, schedule)[0]) / (2 * h)
        assert torch.allclose(alpha(t, schedule)[1], da_num, atol=1e-6)
        assert torch.allclose(loss_weight(t, schedule), -da_num / (1 - alpha(t, schedule)[0]), atol=1e-5)
    a0, _ = alpha(torch.tensor([0.0, 1.0]), "cosine")
    assert torch.allclose(a0, torch.tensor([1.0, 0.0]), atol=1e-7)


def test_antithetic_times_cover_the_interval():
    t = sample_t(8, eps=1e-3, antithetic=True, generator=torch.Generator().manual_seed(3))
    assert t.min() >= 1e-3 and t.max() <= 1
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), atol=1e-6)  # one draw per 1/B stratum


def test_unmasked_positions_contribute_nothing():
    torch.manual_seed(0)
    B, L, V = 3, 10, 6
    x0 = torch.randint(0, V - 1, (B, L))
    masked = torch.rand(B, L) < 0.5
    t = torch.tensor([0.2, 0.5, 0.9])
    logits = torch.randn(B, L, V, requires_grad=True)
    loss = elbo_loss(logits, x0, masked, loss_weight(t)).sum()
    loss.backward()
    assert torch.all(logits.grad[~masked] == 0)  # no gradient flows from unmasked positions
    assert torch.any(logits.grad[masked] != 0)
    other = torch.where(masked[..., None], logits.detach(), torch.randn(B, L, V))  # change unmasked logits
    assert torch.allclose(elbo_loss(other, x0, masked, loss_weight(t)).sum(), loss.detach())


def test_bound_averages_over_all_positions():
    # logits that give every masked token cross-entropy exactly log(V) (uniform prediction)
    B, L, V = 2, 8, 5
    x0 = torch.zeros(B, L, dtype=torch.long)
    logits = torch.zeros(B, L, V)
    masked = torch.zeros(B, L, dtype=torch.bool)
    masked[0, :3] = True   # 3 masked of 8
    masked[1, :6] = True   # 6 masked of 8
    t = torch.tensor([0.25, 0.5])
    got = elbo_loss(logits, x0, masked, loss_weight(t))
    expect = torch.tensor([4 * 3 * math.log(V) / 8, 2 * 6 * math.log(V) / 8])  # weight 1/t, divide by L
    assert torch.allclose(got, expect)
    # SFT: divide by the number of maskable (response) positions instead
    maskable = torch.zeros(B, L, dtype=torch.bool)
    maskable[:, :6] = True
    got = elbo_loss(logits, x0, masked, loss_weight(t), maskable=maskable)
    assert torch.allclose(got, expect * 8 / 6)


def test_nll_bound_is_deterministic_given_seed():
    model, scored = tiny_model(), torch.ones(16, dtype=torch.bool)
    windows = torch.randint(0, 11, (8, 16), generator=torch.Generator().manual_seed(0))
    a = MDLM.nll(model, windows, scored, n_draws=3, seed=5, batch_size=4)
    b = MDLM.nll(model, windows, scored, n_draws=3, seed=5, batch_size=4)
    c = MDLM.nll(model, windows, scored, n_draws=3, seed=6, batch_size=4)
    assert a == b and a != c
    assert a[1] > 0


def test_nll_bound_is_the_mean_of_its_draws_in_order():
    # the one Monte-Carlo loop every diffusion family's nll() runs: n_draws per batch of windows, one generator
    # seeded once, only the scored positions offered; (mean, standard error) of all the per-row values
    windows, scored = torch.arange(30).view(5, 6), torch.tensor([False, True, True, False, True, True])
    seen = []

    def score(x0, keep, g):
        seen.append((x0.clone(), keep.clone()))
        return torch.rand(len(x0), generator=g) + x0[:, 0]
    mean, se = nll_bound(score, windows, scored, n_draws=2, seed=3, batch_size=2)
    g = torch.Generator().manual_seed(3)
    ref = torch.cat([torch.rand(len(x0), generator=g) + x0[:, 0] for x0 in windows.split(2) for _ in range(2)])
    assert [len(x) for x, _ in seen] == [2, 2, 2, 2, 1, 1] and all((k == scored).all() for _, k in seen)
    assert mean == ref.mean().item() and se == (ref.std() / math.sqrt(10)).item()
    model, inputs = tiny_model(), []  # and MDLM's bound masks only what is scored, the rest given clean

    def spy(x, **kw):
        inputs.append(x)
        return model(x, **kw)
    spy.config = model.config
    windows, scored = torch.randint(0, 11, (5, 16)), torch.arange(16) % 3 > 0
    MDLM.nll(spy, windows, scored, n_draws=4)
    x_t = torch.cat(inputs)
    assert (x_t[:, ~scored] == windows.repeat(4, 1)[:, ~scored]).all() and (x_t[:, scored] == 11).any()


def test_bound_of_uniform_model_is_log_v():
    # a model that predicts uniformly over V real tokens has -log p = log V per token; its ELBO
    # estimates E_t[(1/t) * (#masked) * log V / L] = log V, whatever the mask draws
    class Uniform(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(*x.shape, 6)
            out[..., 5] = float("-inf")
            return out
    x0 = torch.randint(0, 5, (4000, 32))
    v = elbo(Uniform(), x0, mask_id=5, generator=torch.Generator().manual_seed(0))
    assert abs(v.mean().item() - math.log(5)) < 0.05


def test_count_masking_masks_exactly_l_uniformly():
    g = torch.Generator().manual_seed(0)
    B, L = 4000, 10
    x0 = torch.zeros(B, L, dtype=torch.long)
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, :3] = False  # a 3-token prompt
    l, w = sample_count(maskable.sum(1), generator=g)
    assert l.min() >= 1 and l.max() <= 7 and torch.allclose(w, 7 / l)
    assert sorted(set(l.tolist())) == list(range(1, 8))  # stratified: every count appears
    x_t, masked = q_sample_count(x0, l, mask_id=5, maskable=maskable, generator=g)
    assert torch.equal(masked.sum(1), l) and not masked[:, :3].any()
    freq = masked[:, 3:].float().mean(0)  # every response position equally likely
    assert (freq - freq.mean()).abs().max() < 0.03


def test_count_and_rate_estimators_agree():
    # both are unbiased estimators of the same bound; the count form has a lower variance
    model = tiny_model()
    x0 = torch.randint(0, 11, (2048, 16), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        rate = elbo(model, x0, mask_id=11, generator=g)
        count = elbo(model, x0, mask_id=11, count=True, generator=g)
    se = (rate.var() / len(rate) + count.var() / len(count)).sqrt()
    assert abs(rate.mean() - count.mean()) < 4 * se, (rate.mean(), count.mean(), se)
    assert count.var() < rate.var()


def test_flat_weight_gives_the_masked_token_mean():
    torch.manual_seed(0)
    B, L, V = 4, 12, 7
    x0 = torch.randint(0, V - 1, (B, L))
    logits = torch.randn(B, L, V)
    masked = torch.rand(B, L) < torch.tensor([0.1, 0.3, 0.6, 0.9])[:, None]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    assert torch.allclose(elbo_loss(logits, x0, masked, flat_weight(masked)).mean(), ce[masked].mean())
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, :4] = False  # SFT: a 4-token prompt, never masked
    masked &= maskable
    got = elbo_loss(logits, x0, masked, flat_weight(masked, maskable), maskable).mean()
    assert torch.allclose(got, ce[masked].mean())
