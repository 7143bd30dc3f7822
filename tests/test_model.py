import pytest
import torch

from conftest import tiny_model


@pytest.mark.parametrize("causal", [False, True])
def test_later_token_changes_earlier_logit_only_when_bidirectional(causal):
    model = tiny_model(causal=causal)
    x = torch.randint(0, 11, (1, 16))
    y = x.clone()
    y[0, 12] = (x[0, 12] + 1) % 11  # change a later token
    with torch.no_grad():
        lx, ly = model(x), model(y)
    earlier_changed = not torch.allclose(lx[0, :12], ly[0, :12], atol=1e-6)
    assert earlier_changed == (not causal)
    assert not torch.allclose(lx[0, 12:], ly[0, 12:])  # the position itself and later ones always change


def test_mask_is_never_predicted():
    model = tiny_model()
    logits = model(torch.randint(0, 12, (2, 16)))
    assert torch.all(logits[..., 11] == float("-inf"))
    assert torch.isfinite(logits[..., :11]).all()


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("causal", [False, True])
def test_kv_cache_forward_matches_full_forward(causal):
    # right after a full forward, rerunning a slice against the cached K/V gives the same logits:
    # prefix cache (run the block and everything after it) and dual cache (run the block alone)
    model = tiny_model(causal=causal)
    x = torch.randint(0, 12, (2, 16))
    s, e = 6, 10
    with torch.no_grad():
        full, kv = model(x, return_kv=True)
        buf = [(k.clone(), v.clone()) for k, v in kv]
        got_prefix = model(x[:, s:], start=s, kv=buf)
        got_dual = model(x[:, s:e], start=s, kv=buf)
        assert all(torch.allclose(b[0], k, atol=1e-6) for b, k in zip(buf, (k for k, _ in kv)))  # rewritten
        y = x.clone()
        y[:, s:e] = (x[:, s:e] + 1) % 11  # the block changes: its fresh K/V are used, the rest cached
        got_changed = model(y[:, s:e], start=s, kv=buf)
        ref_changed = model(y)
    assert torch.allclose(got_prefix, full[:, s:], atol=1e-5)
    assert torch.allclose(got_dual, full[:, s:e], atol=1e-5)
    if causal:  # causal: the positions after the block do not influence it, so the cache is exact
        assert torch.allclose(got_changed, ref_changed[:, s:e], atol=1e-5)
    else:  # bidirectional: the cached suffix still reflects the old block, so the cache is approximate
        assert not torch.allclose(got_changed, ref_changed[:, s:e], atol=1e-5)


def test_key_mask_hides_padding():
    # a left-padded row with its own positions and a key mask gives the logits of the row alone
    model = tiny_model()
    row = torch.randint(0, 11, (1, 10))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), row], 1)
    key_mask = torch.arange(16)[None] >= 6
    pos = (torch.arange(16) - 6).clamp(min=0)[None]
    with torch.no_grad():
        alone = model(row)
        got = model(padded, pos=pos, key_mask=key_mask)
    assert torch.allclose(got[:, 6:], alone, atol=1e-5)


def test_param_count_and_weight_tying():
    model = tiny_model()  # V = 12, C = 32, 2 layers, SwiGLU hidden 64 * ceil(8 * 32 / 3 / 64) = 128
    assert model.wte.weight is model.lm_head.weight
    C, H, V = 32, 128, 12
    per_layer = C + 3 * C * C + C * C + C + C * 2 * H + H * C  # norm1, qkv, proj, norm2, gate_up, down
    assert model.num_params() == V * C + 2 * per_layer + C  # the tied embedding counted once, norm_f
