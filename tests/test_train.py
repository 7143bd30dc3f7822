import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_TRAIN, WORDS, run
from configurator import command_line_keys, configure
from tokenizer import sft_rows


def losses(stdout):
    return {int(m[0]): float(m[1]) for m in re.findall(r"iter (\d+): loss ([0-9.]+)", stdout)}


def val(stdout):
    return [float(v) for v in re.findall(r"step \d+: val NLL(?: bound)? ([0-9.]+)", stdout)]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


@pytest.mark.slow
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


@pytest.mark.slow
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


def torchrun(*args, n=2):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                os.path.join(ROOT, "train.py"), *args])


@pytest.mark.slow
def test_kill_and_resume_is_exact(tiny_data, tmp_path):
    # kill -9 a run once it has saved a checkpoint mid-way, resume it, and get the weights of a run never stopped
    import signal
    import subprocess
    import time
    args = [f"--dataset={tiny_data}", "--max_iters=30", "--lr_decay_iters=30", "--eval_interval=3", *TINY_TRAIN]
    full = run("train.py", f"--out_dir={tmp_path / 'full'}", *args)
    assert full.returncode == 0, full.stderr
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--out_dir={tmp_path / 'killed'}", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    ckpt = tmp_path / "killed" / "ckpt.pt"
    while p.poll() is None and not (ckpt.exists() and torch.load(ckpt, weights_only=True)["iter_num"] >= 6):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(ckpt, weights_only=True)["iter_num"]
    assert 6 <= killed_at < 30, killed_at  # killed mid-run, after a save
    rest = run("train.py", f"--out_dir={tmp_path / 'killed'}", "--init_from=resume", *args)
    assert rest.returncode == 0, rest.stderr
    wf, wk = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert all(torch.equal(wf[k], wk[k]) for k in wf)


@pytest.mark.slow
@pytest.mark.parametrize("objective,accum", [("mdlm", 1), ("ar", 2)])
def test_ddp_two_processes_equal_one(tiny_data, tmp_path, objective, accum):
    # one process with 2 micro-steps and two processes with one each see the same global batch,
    # whether the 2 is asked for (accum=2) or follows from the rule "fewer than processes: one each"
    args = [f"--dataset={tiny_data}", f"--objective={objective}", "--max_iters=4", "--lr_decay_iters=4",
            "--eval_interval=100", *TINY_TRAIN]
    one = run("train.py", f"--out_dir={tmp_path / 'one'}", "--gradient_accumulation_steps=2", *args)
    two = torchrun(f"--out_dir={tmp_path / 'two'}", f"--gradient_accumulation_steps={accum}", *args)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "16 x 32 tokens per step (2 process(es) x 1 micro-steps x 8)" in two.stdout
    assert ("one micro-step each" in two.stdout) == (accum == 1)
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


@pytest.mark.slow
def test_quick_start_config_under_torchrun_as_written(tmp_path):
    # the README's DDP line with the quick-start config and no DDP option: 2 processes, one micro-step each
    if not os.path.exists(os.path.join(ROOT, "data", "shakespeare_char", "val.bin")):
        pytest.skip("data/shakespeare_char is not prepared")
    r = torchrun("config/shakespeare.py", f"--out_dir={tmp_path}", "--max_iters=2", "--eval_iters=1")
    assert r.returncode == 0, r.stderr
    assert "32 x 128 tokens per step (2 process(es) x 1 micro-steps x 16)" in r.stdout, r.stdout
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(f for f in os.listdir(os.path.join(ROOT, "config"))  # owt_*: below, torchrun
                                           if f.endswith(".py") and not f.startswith("owt_")))
def test_every_config_runs_a_step_at_a_shrunk_size(tmp_path, config):
    with open(os.path.join(ROOT, "config", config)) as f:
        text = f.read()
    dataset = re.search(r'^dataset = "(\w+)"', text, re.M)
    dataset = dataset.group(1) if dataset else "shakespeare_char"
    if not os.path.exists(os.path.join(ROOT, "data", dataset, "meta.pkl")):
        pytest.skip(f"data/{dataset} is not prepared")
    shrunk = ["--max_iters=1", "--eval_iters=1", "--n_layer=1", "--n_head=2", "--n_embd=32",
              "--batch_size=2"]
    init = "--init_from=scratch"
    if 'objective = "dcd"' in text:  # distillation starts from a Duo model: a shrunk one
        r = run("train.py", f"--dataset={dataset}", "--objective=duo", f"--out_dir={tmp_path / 'teacher'}", *shrunk)
        assert r.returncode == 0, r.stderr
        init = f"--init_from={tmp_path / 'teacher'}"
    r = run("train.py", f"config/{config}", f"--out_dir={tmp_path / 'out'}", init, *shrunk)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["config"]["dataset"] == dataset
    # the variants the file's comment gives (config/sudoku.py --objective=ar ...) run as written too
    for i, extra in enumerate(re.findall(rf"^#\s+python train.py config/{config} (--.*?)(?:#|$)", text, re.M)):
        extra = [a for a in extra.split() if not a.startswith("--out_dir=")]
        r = run("train.py", f"config/{config}", *extra, f"--out_dir={tmp_path / str(i)}", init, *shrunk)
        assert r.returncode == 0, (extra, r.stderr)


@pytest.fixture(scope="module")
def default_run(tiny_data, tmp_path_factory):
    return option_run(tiny_data, tmp_path_factory.mktemp("default"))


def option_run(tiny_data, out, *option):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", *TINY_TRAIN, "--max_iters=60",
            "--lr_decay_iters=60", "--eval_interval=60", "--log_interval=1", *option)
    assert r.returncode == 0, r.stderr
    return losses(r.stdout), val(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--train_loss=flat", "--masking=count", "--schedule=cosine"])
def test_quick_start_options_reach_the_loss_and_still_train(tiny_data, tmp_path, default_run, option):
    (l0, v0), (l1, v1) = default_run, option_run(tiny_data, tmp_path, option)
    assert v1[0] == v0[0]  # the same initial weights and val bound: only the training loss differs
    assert l1[1] != l0[1]  # the option changes the first step's loss: it reaches the loss
    assert v1[1] < v1[0] - 0.15, v1  # and it trains


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
    assert command_line_keys(["config/shakespeare.py", "--name=a=b", "--flag"]) == {"name", "flag"}  # typed, not from a file
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


def test_sft_rows_never_mask_the_prompt_and_pad_to_the_drawn_length():
    records = [([1, 2, 3], [4, 5], []), ([6], [7, 8, 9, 10], []), ([1, 1, 1, 1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2], [])]
    for seed in range(20):
        x0, maskable = sft_rows(records, 12, eos_id=0, generator=torch.Generator().manual_seed(seed))
        assert x0.shape == maskable.shape == (3, 12)  # the longest row (cut to 12) + 1 > 12: only 12 fits
        for b, (p, r, _) in enumerate(records):
            row = (p + r)[:12]
            assert x0[b, :len(row)].tolist() == row and (x0[b, len(row):] == 0).all()  # EOS padding to T
            assert not maskable[b, :len(p)].any() and maskable[b, len(p):].all()  # the prompt is never masked


def test_sft_rows_draw_every_length_between_the_longest_row_and_the_context():
    records = [([1, 2], [3], []), ([4], [5, 6, 7], [])]  # longest row 4, + one EOS: T in 5..10
    lengths = {sft_rows(records, 10, 0, torch.Generator().manual_seed(s))[0].size(1) for s in range(100)}
    assert lengths == set(range(5, 11))


def test_sft_rows_of_infilling_records_and_for_an_autoregressive_model():
    records = [([1, 2, 3, 4], [], [1, 3]), ([5, 6], [7], [])]  # an infilling record and a pair; mask 9, EOS 0
    x0, maskable = sft_rows(records, 6, eos_id=0, generator=torch.Generator().manual_seed(0), mask_id=9)
    assert x0[0, :4].tolist() == [1, 2, 3, 4] and maskable[0, :4].tolist() == [False, True, False, True]
    assert maskable[0, 4:].all() and not maskable[1, :2].any() and maskable[1, 2:].all()
    # AR: the prompt with its holes masked, then the whole clean prompt as the answer, then one EOS
    x0, scored = sft_rows(records, 12, eos_id=0, mask_id=9, causal=True)
    assert x0[0].tolist() == [1, 9, 3, 9, 1, 2, 3, 4, 0] and scored[0].tolist() == [False] * 4 + [True] * 5
    assert x0[1].tolist() == [5, 6, 7, 0, 0, 0, 0, 0, 0] and scored[1].tolist() == [False] * 2 + [True] * 2 + [False] * 5


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tiny_data, tmp_path):
    one_line_error(run("train.py", "--no_such_key=3"), "unknown config key", "no_such_key")
    one_line_error(run("train.py", "--batch_size=big"), "batch_size must be int")
    one_line_error(run("train.py", "--objective=gan"), "--objective='gan'", "must be one of")
    one_line_error(run("train.py", "config/missing.py"), "not found")
    one_line_error(run("train.py", "--dataset=nowhere", f"--out_dir={tmp_path / 'new'}"), "unknown dataset", "nowhere")
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


@pytest.mark.slow
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
    # grow_vocab keeps the pretrained rows (checked before any training step: --max_iters=0)
    r = run("train.py", f"--dataset={tmp_path / 'sft'}", f"--init_from={tmp_path / 'pre'}", f"--out_dir={tmp_path / 'g0'}",
            *TINY_TRAIN, "--block_size=24", "--max_iters=0")
    assert r.returncode == 0, r.stderr
    grown, pre_w = weights(tmp_path / "g0"), weights(tmp_path / "pre")
    assert torch.equal(grown["wte.weight"][:meta["vocab_size"]], pre_w["wte.weight"])
    assert not torch.equal(grown["wte.weight"][-1], torch.zeros(32))  # the new row is initialised, not zero
    assert all(torch.equal(grown[k], pre_w[k]) for k in pre_w if k not in ("wte.weight", "lm_head.weight"))
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


@pytest.mark.slow
@pytest.mark.parametrize("config", ["owt_mdlm", "owt_ar", "owt_duo"])
def test_gpt2_size_configs_run_under_torchrun_at_a_shrunk_size(tmp_path, config):
    # the 8-GPU recipes, shrunk (1 layer, width 32, context 32, 2 micro-steps per process) and on the BPE
    # Shakespeare instead of OpenWebText, with their bf16 autocast and EMA, on 2 CPU processes
    if not os.path.exists(os.path.join(ROOT, "data", "shakespeare", "val.bin")):
        pytest.skip("data/shakespeare is not prepared")
    r = torchrun(f"config/{config}.py", "--dataset=shakespeare", f"--out_dir={tmp_path}", "--max_iters=2",
                 "--eval_iters=1", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2",
                 "--compile=False", "--gradient_accumulation_steps=4")
    assert r.returncode == 0, r.stderr
    assert "8 x 32 tokens per step (2 process(es) x 2 micro-steps x 2)" in r.stdout, r.stdout
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ck["iter_num"] == 2 and "ema" in ck and ck["config"]["dtype"] == "bfloat16"
