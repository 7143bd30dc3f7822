import os
import pickle
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_TRAIN, WORDS, run
from configurator import configure


def losses(stdout):
    return {int(m[0]): float(m[1]) for m in re.findall(r"iter (\d+): loss ([0-9.]+)", stdout)}


def val(stdout):
    return [float(v) for v in re.findall(r"step \d+: val NLL(?: bound)? ([0-9.]+)", stdout)]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_training_lowers_the_loss(tiny_data, tmp_path, objective):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", f"--objective={objective}",
            *TINY_TRAIN, "--n_embd=64", "--batch_size=16", "--max_iters=300", "--lr_decay_iters=300",
            "--eval_interval=300", "--eval_iters=10", "--warmup_iters=10")
    assert r.returncode == 0, r.stderr
    v = val(r.stdout)
    # the unigram entropy is the best a model that ignores context can do (~2.5 nats here)
    ids = np.fromfile(os.path.join(tiny_data, "val.bin"), dtype=np.uint16)
    p = np.bincount(ids) / len(ids)
    h1 = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert len(v) == 2 and v[0] > h1 and v[1] < h1 - 0.3, (v, h1)
    assert "done:" in r.stdout and os.path.exists(tmp_path / "ckpt.pt")


def test_resume_is_exact(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", "--lr_decay_iters=8", "--eval_interval=100", "--log_interval=1", *TINY_TRAIN]
    full = run("train.py", f"--out_dir={tmp_path / 'full'}", "--max_iters=8", *args)
    part = run("train.py", f"--out_dir={tmp_path / 'part'}", "--max_iters=4", *args)
    rest = run("train.py", f"--out_dir={tmp_path / 'part'}", "--max_iters=8", "--init_from=resume", *args)
    for r in (full, part, rest):
        assert r.returncode == 0, r.stderr
    lf, lr = losses(full.stdout), losses(rest.stdout)
    assert sorted(lr) == [5, 6, 7, 8]
    assert all(lf[i] == lr[i] for i in lr), (lf, lr)
    wf, wr = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_ddp_two_processes_equal_one(tiny_data, tmp_path, objective):
    args = [f"--dataset={tiny_data}", f"--objective={objective}", "--max_iters=4", "--lr_decay_iters=4",
            "--eval_interval=100", "--gradient_accumulation_steps=2", *TINY_TRAIN]
    one = run("train.py", f"--out_dir={tmp_path / 'one'}", *args)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, "train.py"), f"--out_dir={tmp_path / 'two'}", *args])
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "2 process(es) x 1 micro-steps" in two.stdout
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    w0 = torch.load(os.path.join(tmp_path / "one", "ckpt.pt"), weights_only=True)
    assert w0["iter_num"] == 4
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k
    # and the training did move the weights (the comparison is not between two initialisations)
    moved = run("train.py", f"--out_dir={tmp_path / 'zero'}", *args, "--max_iters=0")
    assert moved.returncode == 0, moved.stderr
    w_init = weights(tmp_path / "zero")
    assert any(not torch.allclose(w_init[k], w1[k], atol=1e-4) for k in w1)


def one_line_error(r, *words):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_configurator():
    d = dict(batch_size=4, lr=1e-3, name="x", flag=False)
    assert configure(d, ["--batch_size=8", "--lr=2", "--name=abc", "--flag=true"]) == \
        dict(batch_size=8, lr=2.0, name="abc", flag=True)
    with pytest.raises(SystemExit, match="unknown config key 'nope'"):
        configure(d, ["--nope=1"])
    with pytest.raises(SystemExit, match="batch_size must be int"):
        configure(d, ["--batch_size=1.5"])
    with pytest.raises(SystemExit, match="flag must be bool"):
        configure(d, ["--flag=1"])
    assert configure(d, ["--flag"])["flag"] is True
    with pytest.raises(SystemExit, match="expected --key=value"):
        configure(d, ["--batch_size"])


def test_config_file(tmp_path):
    d = dict(batch_size=4, lr=1e-3)
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("import math\nbatch_size = 2 ** 3\nlr = math.sqrt(4e-6)\n")
    bad.write_text("batch_sz = 8\n")
    assert configure(d, [str(good), "--batch_size=5"]) == dict(batch_size=5, lr=2e-3)
    with pytest.raises(SystemExit, match="unknown config key 'batch_sz'"):
        configure(d, [str(bad)])


def test_bad_input_is_one_clear_line(tiny_data, tmp_path):
    one_line_error(run("train.py", "--no_such_key=3"), "unknown config key", "no_such_key")
    one_line_error(run("train.py", "--batch_size=big"), "batch_size must be int")
    one_line_error(run("train.py", "--objective=gan"), "objective must be one of")
    one_line_error(run("train.py", "config/missing.py"), "not found")
    one_line_error(run("train.py", "--dataset=nowhere"), "unknown dataset", "nowhere")
    one_line_error(run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", "--init_from=resume"),
                   "checkpoint", "not found")
    (tmp_path / "ckpt.pt").write_bytes(b"this is not a checkpoint")
    one_line_error(run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", "--init_from=resume"),
                   "not a valid checkpoint")
    one_line_error(run("sample.py", f"--out_dir={tmp_path}"), "not a valid checkpoint")
    one_line_error(run("sample.py", f"--out_dir={tmp_path / 'none'}"), "not found")


def sft_dataset(folder, meta, n, seed=0):
    """A tiny SFT task on the tiny corpus's characters + [EOS]: prompt 'see <word>\\n', response '<word>'."""
    os.makedirs(folder, exist_ok=True)
    eos = meta["vocab_size"]
    sft_meta = dict(meta, vocab_size=eos + 1, eos_id=eos, itos={**meta["itos"], eos: ""})
    rng = np.random.default_rng(seed)
    enc = lambda s: [meta["stoi"][c] for c in s]  # noqa: E731
    for split, k in (("train", n), ("val", n // 10)):
        words = rng.choice(WORDS, size=k)
        with open(os.path.join(folder, f"{split}_sft.pkl"), "wb") as f:
            pickle.dump([(enc(f"see {w}\n"), enc(w)) for w in words], f)
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump(sft_meta, f)


def test_sft_fine_tune_learns_to_stop(tiny_data, tmp_path):
    with open(os.path.join(tiny_data, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    sft_dataset(tmp_path / "sft", meta, 2000)
    pre = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'pre'}", *TINY_TRAIN, "--max_iters=100",
              "--eval_interval=100")
    assert pre.returncode == 0, pre.stderr
    r = run("train.py", f"--dataset={tmp_path / 'sft'}", f"--init_from={tmp_path / 'pre'}", f"--out_dir={tmp_path / 'sft_out'}",
            *TINY_TRAIN, "--block_size=24", "--max_iters=300", "--eval_interval=300")
    assert r.returncode == 0, r.stderr
    v = val(r.stdout)
    assert len(v) == 2 and v[1] < v[0] / 3, v
    ck = torch.load(tmp_path / "sft_out" / "ckpt.pt", weights_only=True)
    assert ck["model_args"]["vocab_size"] == meta["vocab_size"] + 1  # an embedding row for EOS was added
    # the response is padded with EOS in training, so the sampler stops: the output is cut at the first EOS
    s = run("sample.py", f"--out_dir={tmp_path / 'sft_out'}", "--prompt=see cat\n", "--gen_length=16",
            "--block_length=16", "--num_samples=3", "--temperature=0")
    assert s.returncode == 0, s.stderr
    outs = s.stdout.split("---------------\n")[:3]
    assert all(o.startswith("see cat\n") and 0 < len(o) - len("see cat\n") - 1 < 16 for o in outs), outs
    # rows are padded to random lengths up to the context, so it also stops on a shorter canvas
    s = run("sample.py", f"--out_dir={tmp_path / 'sft_out'}", "--prompt=see dog\n", "--gen_length=8",
            "--block_length=8", "--num_samples=2", "--temperature=0")
    assert s.returncode == 0, s.stderr
    outs = s.stdout.split("---------------\n")[:2]
    assert all(o.startswith("see dog\n") and 0 < len(o) - len("see dog\n") - 1 < 8 for o in outs), outs
    # a checkpoint trained on other characters cannot be fine-tuned on this vocabulary
    other = dict(meta, stoi={c: (i + 1) % len(meta["stoi"]) for c, i in meta["stoi"].items()})
    sft_dataset(tmp_path / "other", other, 200)
    one_line_error(run("train.py", f"--dataset={tmp_path / 'other'}", f"--init_from={tmp_path / 'pre'}",
                       f"--out_dir={tmp_path / 'x'}", *TINY_TRAIN), "another vocabulary")
    one_line_error(run("train.py", "--init_from=/no/such/ckpt.pt"), "init_from", "not found")
