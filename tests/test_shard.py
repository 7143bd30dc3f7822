"""
Training past one device's memory: LoRA (lora.py), activation checkpointing (model.py), the memory plan and
FSDP2 with its sharded checkpoints (shard.py), on CPU with gloo and 2 processes.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lora
import shard
from conftest import ROOT, TINY_TRAIN, run, tiny_model
from model import GPT, GPTConfig


def qwen_like():
    """A tiny model with grouped-query attention and q/k/v biases: the fused q/k/v rows of unequal parts."""
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=12, mask_id=11, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         qkv_bias=True, qk_norm=True)).eval()


# -----------------------------------------------------------------------------
# LoRA and activation checkpointing

@pytest.mark.parametrize("make", [tiny_model, qwen_like])
def test_lora_starts_as_the_base_then_merges_to_the_same_logits(make):
    """B = 0: the adapted model's logits are the base's exactly; with random adapters, folding them into the
    weights (merge) gives the unmerged logits; only the adapters are trainable, and a step changes only them."""
    base = make()
    x = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(1))
    want = base(x)
    model = lora.apply(make(), "q_proj,v,attn_out,ff_proj,up,down", r=4, alpha=8)
    assert torch.equal(model(x), want)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".A." in n or ".B." in n for n in names) and set(lora.adapters(model)) == names
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    opt.zero_grad()
    model(x).logsumexp(-1).mean().backward()  # A moves first (B = 0 gives A no gradient), then B
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= names and any(".B." in k for k in changed)
    out = model(x)
    assert not torch.allclose(out, want)
    merged = lora.merge(model)
    assert not lora.adapters(merged) and torch.allclose(merged(x), out, atol=1e-5)


def test_lora_targets_by_any_name():
    assert lora.targets("q_proj,k_proj,v_proj") == ["q", "k", "v"]
    assert lora.targets("attn_out,ff_proj,up_proj,ff_out") == ["proj", "gate", "up", "down"]  # LLaDA's
    assert lora.targets("o_proj, gate_proj,down_proj,q") == ["q", "proj", "gate", "down"]  # Qwen's
    with pytest.raises(ValueError, match="'wq' is not a layer's part"):
        lora.targets("q,wq")
    m = lora.apply(qwen_like(), "k", r=2, alpha=2)
    (lo, hi), = m.layers[0].attn.qkv.slices
    assert (lo, hi) == (32, 48)  # after 4 query heads of 8, the 2 key heads


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(2))
    grads = []
    for on in (False, True):
        model = tiny_model().train()
        model.act_ckpt = on
        model(x).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_memory_plan():
    """FSDP divides the weights, gradients and moments by the processes (plus one gathered layer); LoRA
    keeps gradients and moments of its adapters only; checkpointing keeps one layer's activations."""
    kw = dict(n_layer=32, n_embd=4096, n_hidden=12288, V=126464, tokens=4 * 1024)
    one = shard.plan(8e9, 8e9, world=1, fsdp=False, act_ckpt=False, **kw)
    fsdp = shard.plan(8e9, 8e9, world=8, fsdp=True, act_ckpt=False, **kw)
    assert one["AdamW moments"] == 8 * fsdp["AdamW moments"] == 64e9
    assert fsdp["weights"] < one["weights"] / 4
    ck = shard.plan(8e9, 1e8, world=1, fsdp=False, act_ckpt=True, base_bytes=2, compute_bytes=2, **kw)
    assert ck["gradients"] == 4e8 and ck["weights"] == 16e9 and ck["activations"] < one["activations"] / 10
    assert "GiB per process" in shard.show_plan(ck)


# -----------------------------------------------------------------------------
# FSDP under torchrun

def torchrun(*args, n=2):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                os.path.join(ROOT, "train.py"), *args])


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_resume_exactly(tiny_data, tmp_path):
    """2 FSDP processes with a micro-step each give the weights of one process with two (float tolerance);
    a run saved at step 4 and resumed to 8 gives the uninterrupted run's weights bit for bit, and resumed on
    one process instead of two, to float tolerance (the shards laid out again)."""
    args = [f"--dataset={tiny_data}", "--max_iters=8", "--lr_decay_iters=8", "--gradient_accumulation_steps=2",
            *TINY_TRAIN]
    one = run("train.py", f"--out_dir={tmp_path / 'one'}", "--eval_interval=100", *args)
    two = torchrun(f"--out_dir={tmp_path / 'two'}", "--fsdp=True", "--eval_interval=100", *args)
    for r in (one, two):
        assert r.returncode == 0, r.stderr[-3000:]
    assert "memory plan (FSDP;" in two.stdout
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4) for k in w1)
    part = torchrun(f"--out_dir={tmp_path / 'part'}", "--fsdp=True", "--eval_interval=4", *args, "--max_iters=4")
    assert part.returncode == 0, part.stderr[-3000:]
    assert open(tmp_path / "part" / shard.DIR / "latest").read() == "step-000000004"
    rest = torchrun(f"--out_dir={tmp_path / 'part'}", "--init_from=resume", "--fsdp=True", "--eval_interval=4", *args)
    assert rest.returncode == 0, rest.stderr[-3000:]
    wr = weights(tmp_path / "part")
    assert all(torch.equal(w2[k], wr[k]) for k in w2)
    # step 4 resumed on one process instead of two
    p4 = torchrun(f"--out_dir={tmp_path / 'p4'}", "--fsdp=True", "--eval_interval=4", *args, "--max_iters=4")
    assert p4.returncode == 0, p4.stderr[-3000:]
    solo = torchrun(f"--out_dir={tmp_path / 'p4'}", "--init_from=resume", "--fsdp=True", "--eval_interval=4", *args, n=1)
    assert solo.returncode == 0, solo.stderr[-3000:]
    ws = weights(tmp_path / "p4")
    assert all(torch.allclose(w2[k], ws[k], atol=1e-5, rtol=1e-4) for k in w2)
    # the export in one process (python shard.py) is the run's ckpt.pt, and it samples
    ex = run("shard.py", str(tmp_path / "p4"))
    assert ex.returncode == 0, ex.stderr
    assert all(torch.equal(ws[k], v) for k, v in weights(tmp_path / "p4").items())
    s = run("sample.py", f"--out_dir={tmp_path / 'p4'}", "--prompt=the cat", "--gen_length=8", "--block_length=8",
            "--num_samples=1")
    assert s.returncode == 0 and s.stdout.startswith("the cat"), s.stderr
    # ... and into LLaDA's Hugging Face layout, which from_pretrained reads back to the same logits
    hf = run("shard.py", str(tmp_path / "p4"), f"--hf={tmp_path / 'hf'}")
    assert hf.returncode == 0, hf.stderr
    from checkpoint import load
    from pretrained import from_pretrained
    a, b = load(str(tmp_path / "p4"))[0], from_pretrained(str(tmp_path / "hf"))[0]
    x = torch.randint(0, 10, (1, 16))
    assert torch.allclose(a(x), b(x), atol=1e-5)


@pytest.mark.slow
def test_lora_under_ddp_and_fsdp(tiny_data, tmp_path):
    """LoRA over a trained out_dir under DDP and under FSDP (then resumed): the checkpoints hold adapters
    alone, and both sample."""
    base = str(tmp_path / "base")
    args = [f"--dataset={tiny_data}", "--eval_interval=4", *TINY_TRAIN]
    assert run("train.py", f"--out_dir={base}", "--max_iters=4", *args).returncode == 0
    lo = ["--lora_r=4", "--lora_targets=q,v,down", f"--init_from={base}"]
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp=True"])):
        r = torchrun(f"--out_dir={tmp_path / name}", "--max_iters=4", *lo, *extra, *args)
        assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(f"--out_dir={tmp_path / 'fsdp'}", "--init_from=resume", "--fsdp=True", "--max_iters=8", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, steps in (("ddp", 4), ("fsdp", 8)):
        ck = torch.load(tmp_path / name / "ckpt.pt", weights_only=True)
        assert ck["iter_num"] == steps and ck["lora_base"] == base, name
        assert len(ck["model"]) == 2 * 2 * 3 and all(".A." in k or ".B." in k for k in ck["model"]), sorted(ck["model"])
        s = run("sample.py", f"--out_dir={tmp_path / name}", "--prompt=the cat", "--gen_length=8", "--block_length=8",
                "--num_samples=1")
        assert s.returncode == 0 and s.stdout.startswith("the cat"), s.stderr


KILL = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, {root!r})
    import shard
    from model import GPT, GPTConfig
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = shard.wrap(GPT(GPTConfig(block_size=16, vocab_size=12, mask_id=11, n_layer=2, n_head=2, n_embd=32)))
    opt = torch.optim.AdamW(model.parameters())
    state = dict(iter_num=1, model_args={{}}, config={{}}, meta={{}})
    shard.save({out!r}, model, opt, state)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real = shard.dcp.save
    def dying(*a, **k):  # writes the shards, then the process is killed before the step is complete
        real(*a, **k)
        os._exit(9)
    shard.dcp.save = dying
    shard.save({out!r}, model, opt, dict(state, iter_num=2))
""")


@pytest.mark.slow
def test_a_kill_during_a_sharded_save_leaves_the_step_before(tmp_path):
    out = str(tmp_path / "run")
    script = tmp_path / "kill.py"
    script.write_text(KILL.format(root=ROOT, out=out))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode != 0  # killed
    assert os.path.isdir(os.path.join(out, shard.DIR, "step-000000002.tmp"))  # half written
    step = shard.latest(out)
    assert step.endswith("step-000000001")
    assert torch.load(os.path.join(step, "state.pt"), weights_only=True)["iter_num"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "data", "gsm8k", "train_sft.pkl")),
                    reason="data/gsm8k/train_sft.pkl is absent (python data/gsm8k/prepare.py)")
def test_lora_sft_from_a_pretrained_folder_then_sample(tmp_path):
    """train.py --lora_r on a tiny LLaDA folder: its checkpoint holds the adapters alone (and the base's path);
    a resume continues it; sample.py reads it over its base, merged."""
    from hf_tiny import write_tiny_llada
    folder, out = str(tmp_path / "llada"), str(tmp_path / "lora")
    write_tiny_llada(folder, max_sequence_length=1024)
    args = ["config/gsm8k.py", f"--out_dir={out}", "--eval_interval=2", "--eval_iters=1", "--batch_size=2",
            "--block_size=1024", "--warmup_iters=1"]
    r = run("train.py", *args, f"--init_from={folder}", "--max_iters=2", "--lora_r=4", "--lora_alpha=8",
            "--lora_targets=q_proj,v_proj,ff_out")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "memory plan (one process, LoRA;" in r.stdout
    ck = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ck["model"] and all(".A." in k or ".B." in k for k in ck["model"]) and ck["lora_base"] == folder
    r = run("train.py", *args, "--init_from=resume", "--max_iters=4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["iter_num"] == 4
    s = run("sample.py", f"--out_dir={out}", "--prompt=the cat", "--gen_length=16", "--block_length=8",
            "--num_samples=1")
    assert s.returncode == 0 and s.stdout.startswith("the cat"), s.stderr[-2000:]
