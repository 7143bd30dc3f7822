"""Training beyond one CPU: weight EMA, bf16 autocast, torch.compile, FLOPs and MFU accounting."""
import os
import shutil

import pytest
import torch

from conftest import TINY_TRAIN, run, tiny_model
from families import FAMILIES
from checkpoint import load as load_checkpoint


def ckpt(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)


@pytest.mark.slow
def test_ema_is_the_average_of_the_weights_resumes_exactly_and_is_what_sampling_uses(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", *TINY_TRAIN, "--decay_lr=False", "--eval_interval=100", "--ema_decay=0.5"]
    for k in (0, 1, 2):  # every step's batch is a function of the step: run k ends with the weights w_k
        r = run("train.py", f"--out_dir={tmp_path / str(k)}", f"--max_iters={k}", *args)
        assert r.returncode == 0, r.stderr
    w = [ckpt(tmp_path / str(k))["model"] for k in (0, 1, 2)]
    ema = ckpt(tmp_path / "2")["ema"]
    for name in w[0]:  # e_k = 0.5 e_(k-1) + 0.5 w_k, e_0 = w_0: e_2 = w_0 / 4 + w_1 / 4 + w_2 / 2
        assert torch.allclose(ema[name], 0.25 * w[0][name] + 0.25 * w[1][name] + 0.5 * w[2][name], atol=1e-6), name
    assert not torch.equal(ema["wte.weight"], w[2]["wte.weight"])
    r = run("train.py", f"--out_dir={tmp_path / 'full'}", "--max_iters=4", *args)
    part = run("train.py", f"--out_dir={tmp_path / '2'}", "--max_iters=4", "--init_from=resume", *args)
    assert r.returncode == 0 and part.returncode == 0, r.stderr + part.stderr
    full, resumed = ckpt(tmp_path / "full"), ckpt(tmp_path / "2")
    assert all(torch.equal(full[k][n], resumed[k][n]) for k in ("model", "ema") for n in full[k])
    model, _ = load_checkpoint(str(tmp_path / "full"))  # sample.py and eval.py read the EMA weights
    assert all(torch.equal(v, full["ema"][n]) for n, v in model.state_dict().items() if n in full["ema"])
    raw, _ = load_checkpoint(str(tmp_path / "full"), ema=False)
    assert torch.equal(raw.wte.weight, full["model"]["wte.weight"])


@pytest.mark.parametrize("objective", ["mdlm", "ar", "duo", "bd3"])
def test_a_bf16_autocast_loss_is_close_to_float32(objective):
    V, g = 12, torch.Generator().manual_seed(0)
    fam = FAMILIES[objective]
    model = tiny_model(V=V, T=16, **fam.flags).train()
    x0 = torch.randint(V - 1, (8, 16 + fam.row_extra), generator=g)
    cfg = dict(schedule="linear", masking="rate", train_loss="elbo", t_eps=1e-3, antithetic=True, curriculum_iters=1,
               tau=1e-3, bd3_block=4)  # duo: the curriculum's soft input at step 0
    obj = fam(cfg, dict(mask_id=V - 1, vocab_size=V), model)
    batch, loss = obj.noise(x0, torch.ones_like(x0, dtype=torch.bool), g, 0, False), obj.loss
    fp32 = loss(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss(model, batch)
    bf16.backward()  # and the gradients flow
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.02 * fp32.item(), (fp32, bf16)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.slow
def test_compile_trains_where_a_compiler_exists(tiny_data, tmp_path):
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler, and this machine has none")
    args = [f"--dataset={tiny_data}", *TINY_TRAIN, "--max_iters=3", "--eval_interval=100", "--log_interval=1"]
    r = run("train.py", f"--out_dir={tmp_path / 'c'}", "--compile=True", *args, timeout=900)
    e = run("train.py", f"--out_dir={tmp_path / 'e'}", *args)
    assert r.returncode == 0, r.stderr
    lc = [float(l.split()[-1]) for l in r.stdout.splitlines() if l.startswith("iter ")]
    le = [float(l.split()[-1]) for l in e.stdout.splitlines() if l.startswith("iter ")]
    assert len(lc) == len(le) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(lc, le)), (lc, le)  # the same training


def test_flops_and_mfu_match_a_hand_count():
    model = tiny_model(T=16)  # 33,312 parameters (tests/test_model.py counts them), 2 layers, width 32
    assert model.num_params() == 33312
    assert model.flops_per_token(16) == 6 * 33312 + 12 * 2 * 32 * 16  # weights + attention, forward + backward
    mfu = model.estimate_mfu(1e6, 16, "NVIDIA A100-SXM4-80GB")
    assert abs(mfu - (6 * 33312 + 12 * 2 * 32 * 16) * 1e6 / 312e12) < 1e-12
    assert model.estimate_mfu(1e6, 16, "") is None  # a CPU: no peak to compare with
