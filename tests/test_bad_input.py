"""
Bad input, tried through the real command lines as a user who makes mistakes would: every row must
exit with an error code and one clear line naming what is wrong, without a traceback, and leave every
file that existed before unchanged. The table grows whenever an option is added.
Then the two ways work used to be lost, and the edge inputs that must keep working.
"""
import os
import pickle
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_TRAIN, copy_imports, digest, run

pytestmark = pytest.mark.slow

# (script, arguments, words the error line must hold). {ckpt} is a tiny trained diffusion model's
# out_dir, {judge} a tiny AR judge's, {data} its dataset, {tmp} a scratch folder, {file} a text file,
# {bin} a binary file, {sft} an SFT dataset, {other} a dataset with another vocabulary, {bad_meta} one
# whose meta.pkl is corrupt, {short} one too short for the context, {edited} a checkpoint whose
# iter_num was edited by hand. The last block: {odd} a dataset whose val.bin has an odd size, {big_id} one
# whose val.bin holds an id past its vocabulary, {wide} one whose meta's vocabulary overflows uint16,
# {sft_str} / {sft_id} / {sft_hole} SFT datasets with a record of characters, of an id past the vocabulary,
# of a hole past its prompt, {judge_big_id} a judge whose dataset is {big_id}, {gsm} a GSM8K folder with a
# numeric answer, {many} a text of 128,992 distinct characters; {dev} (outside the digested folder, which
# could not read them) holds zero.txt -> /dev/zero, gsm8k/ whose train.jsonl is a FIFO, and a 1 TiB sparse
# huge.txt.
T = ["--dataset={data}", *TINY_TRAIN]
TABLE = [
    ("train.py", [*T, "--out_dir={tmp}/a", "--batch_size=0"], "--batch_size=0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--fsdp=True"], "torchrun"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--lora_r=4"], "--lora_r adapts a trained model"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--lora_r=4", "--init_from={ckpt}", "--lora_targets=wq"], "--lora_targets"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--lora_r=-1"], "--lora_r=-1"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--block_size=0"], "--block_size=0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--max_iters=-5"], "--max_iters=-5"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--eval_interval=0"], "--eval_interval=0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--eval_iters=-1"], "--eval_iters=-1"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--n_head=3"], "divisible by --n_head=3"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--n_head=32"], "even size"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--dropout=1.0"], "--dropout=1.0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--dropout=-0.1"], "--dropout=-0.1"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--learning_rate=-1"], "--learning_rate=-1.0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--learning_rate=1e999"], "--learning_rate=inf"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--min_lr=1.0"], "--min_lr=1.0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--beta2=1.5"], "--beta2=1.5"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--t_eps=0"], "--t_eps=0.0"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--seed=-1"], "--seed=-1"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--objective=gan"], "--objective='gan'"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--dtype=float16"], "--dtype='float16'"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--device=banana"], "not a device"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--device=cuda"], "no CUDA GPU"),
    ("train.py", [*T, "--out_dir={file}"], "is a file"),
    ("train.py", [*T, "--out_dir={file}/sub"], "cannot be created"),
    ("train.py", [*T, "--out_dir={ckpt}"], "holds a trained model"),
    ("train.py", [*T, "--out_dir={ckpt}", "--max_iters=0"], "--overwrite=True"),
    ("train.py", [*T, "--out_dir={ckpt}", "--init_from=resume", "--n_layer=8"], "--n_layer=8"),
    ("train.py", [*T, "--out_dir={ckpt}", "--init_from=resume", "--dropout=0.1"], "--dropout=0.1"),
    ("train.py", [*T, "--out_dir={ckpt}", "--init_from=resume", "--objective=ar"], "objective=mdlm"),
    ("train.py", [*TINY_TRAIN, "--dataset={other}", "--out_dir={ckpt}", "--init_from=resume"], "another vocabulary"),
    ("train.py", [*TINY_TRAIN, "--dataset={other}", "--out_dir={tmp}/b", "--init_from={ckpt}"], "another vocabulary"),
    ("train.py", [*T, "--out_dir={edited}", "--init_from=resume"], "train.py can resume"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--init_from=/no/such/ckpt.pt"], "--init_from"),
    ("train.py", [*TINY_TRAIN, "--dataset={bad_meta}", "--out_dir={tmp}/a"], "not a valid meta.pkl"),
    ("train.py", [*TINY_TRAIN, "--dataset={short}", "--out_dir={tmp}/a"], "too few"),
    ("train.py", [*TINY_TRAIN, "--dataset={sft}", "--out_dir={tmp}/a", "--objective=duo"], "[MASK] as the last id"),
    ("train.py", ["--dataset=nowhere", "--out_dir={tmp}/a"], "unknown dataset"),
    ("sample.py", ["--out_dir={ckpt}", "--steps=-1"], "--steps=-1"),
    ("sample.py", ["--out_dir={ckpt}", "--block_length=-8"], "--block_length=-8"),
    ("sample.py", ["--out_dir={ckpt}", "--gen_length=-1"], "--gen_length=-1"),
    ("sample.py", ["--out_dir={ckpt}", "--num_samples=0"], "--num_samples=0"),
    ("sample.py", ["--out_dir={ckpt}", "--temperature=-1"], "--temperature=-1.0"),
    ("sample.py", ["--out_dir={ckpt}", "--temperature=1e999"], "--temperature=inf"),
    ("sample.py", ["--out_dir={ckpt}", "--eta=-1"], "--eta=-1.0"),
    ("sample.py", ["--out_dir={ckpt}", "--threshold=2"], "--threshold=2.0"),
    ("sample.py", ["--out_dir={ckpt}", "--factor=-1"], "--factor=-1.0"),
    ("sample.py", ["--out_dir={ckpt}", "--cfg_scale=-2"], "--cfg_scale=-2.0"),
    ("sample.py", ["--out_dir={ckpt}", "--cache=big"], "--cache='big'"),
    ("sample.py", ["--out_dir={ckpt}", "--sampler=beam"], "--sampler='beam'"),
    ("sample.py", ["--out_dir={ckpt}", "--device=banana"], "not a device"),
    ("sample.py", ["--out_dir={ckpt}", "--prompt=FILE:{tmp}"], "is a folder"),
    ("sample.py", ["--out_dir={ckpt}", "--prompt=FILE:{bin}"], "not readable UTF-8"),
    ("sample.py", ["--out_dir={ckpt}", "--trace={file}/t.json"], "cannot be written"),
    ("sample.py", ["--out_dir={ckpt}", "--trace={tmp}"], "is a folder"),
    ("sample.py", ["--out_dir={ckpt}", "--fast", "--sampler=ancestral"], "--fast"),
    ("sample.py", ["--out_dir={ckpt}", "--gen_length=12", "--block_length=8"], "multiple of --block_length=8"),
    ("sample.py", ["--out_dir={ckpt}", "--gen_length=16", "--block_length=8", "--steps=3"], "multiple of the 2 blocks"),
    ("sample.py", ["--out_dir={ckpt}", "--gen_length=64"], "exceeds the model's context"),
    ("sample.py", ["--out_dir={ckpt}", "--prompt=Zebra"], "not in the vocabulary"),
    ("sample.py", ["--out_dir={tmp}/none"], "not found"),
    ("sample.py", ["--out_dir={edited_meta}"], "not a valid checkpoint"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--n_draws=0"], "--n_draws=0"),
    ("eval.py", ["--ckpts={ckpt},", "--judge={judge}"], "empty name"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={tmp}/nojudge"], "config/judge.py"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--temperature=-1"], "--temperature=-1.0"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--prompt_len=0"], "--prompt_len=0"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--gen_length=16", "--block_length=8", "--steps=3"], "--steps=3"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--remasking=best"], "--remasking='best'"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--device=banana"], "not a device"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={ckpt}"], "autoregressive"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--lengths=abc"], "comma-separated positive integers"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--lengths=8,-1"], "--lengths='8,-1'"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--num_samples=0"], "--num_samples=0"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--threshold=-0.5"], "--threshold=-0.5"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=everything"], "--what='everything'"),
    ("bench.py", ["--what=fast", "--out_dir={ckpt}", "--judge={judge}", "--other_dirs={ckpt},"], "--other_dirs="),
    ("bench.py", ["--what=samplers", "--init_from={tmp}/none"], "--init_from is for --what=fast"),
    ("eval.py", ["--mode=accuracy", "--init_from={tmp}/none"], "--init_from needs --dataset"),
    ("eval.py", ["--init_from={tmp}/none", "--dataset=gsm8k"], "options of --mode=accuracy"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=fewstep", "--top_p=0"], "--top_p=0.0"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=fewstep", "--greedy_tail=maybe"], "greedy_tail must be bool"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--block_length=0"], "--block_length=0"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=fast", "--lengths=12"], "must be a multiple of --block_length=32"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={tmp}/nojudge"], "config/judge.py"),
    # sizes are bounded by the context and the memory; what gave a silent wrong result; paths
    ("train.py", [*T, "--out_dir={tmp}/a", "--batch_size=1000000000"], "needs at least"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--gradient_accumulation_steps=1000000000"], "needs at least"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--n_embd=1000000"], "needs at least"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--max_iters=1000000000"], "--max_iters=1000000000"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--seed=100000000000000000000"], "--seed=100000000000000000000"),
    ("train.py", [*T, "--out_dir="], "--out_dir=''"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--eval_only=True"], "--eval_only evaluates a trained model"),
    ("train.py", [*T, "--out_dir={tmp}/a", "--objective=bd3", "--bd3_block=1000000000"], "--bd3_block=1000000000"),
    ("train.py", ["--out_dir={ema}", "--init_from=resume", "--ema_decay=0"], "keeps EMA weights"),
    ("sample.py", ["--out_dir={ckpt}", "--gen_length=16", "--block_length=16", "--num_samples=1000000000"], "needs at least"),
    ("sample.py", ["--out_dir={ckpt}", "--steps=1000000000"], "--steps=1000000000"),
    ("sample.py", ["--out_dir={ckpt}", "--seed=100000000000000000000"], "--seed=100000000000000000000"),
    ("sample.py", ["--out_dir={ckpt}", "--temperature=1e-320"], "--temperature=1e-320"),
    ("sample.py", ["--out_dir={ckpt}", "--prompt=the [MASK*99999999999] sat", "--gen_length=0"], "more than the model's context"),
    ("sample.py", ["--out_dir={ckpt}", "--prompt=the [MASK*-3] sat", "--gen_length=0"], "neither [MASK] nor [MASK*n]"),
    ("sample.py", ["--out_dir="], "--out_dir=''"),
    ("eval.py", ["--ckpts={ckpt},typo", "--judge={judge}"], "typo not found"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--num_samples=1000000000"], "needs at least"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge}", "--steps=1000000000"], "--steps=1000000000"),
    ("eval.py", ["--ckpts={ckpt}", "--judge="], "--judge=''"),
    ("eval.py", ["--mode=accuracy", "--ckpts={sft_ckpt}", "--split=val", "--gen_length=1000000000"], "exceed"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=fewstep", "--step_counts=8,1000000000"], "up to 100,000"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--seed=100000000000000000000"], "--seed="),
    ("bench.py", ["--out_dir=", "--judge={judge}"], "--out_dir=''"),
    ("{prep}/shakespeare_char/prepare.py", ["{empty}"], "empty"),
    ("{prep}/shakespeare_char/prepare.py", ["{tmp}"], "is a folder"),
    ("{prep}/shakespeare_char/prepare.py", ["{bin}"], "UTF-8"),
    ("{prep}/shakespeare_char/prepare.py", ["{tmp}/nope.txt"], "not found"),
    ("{prep}/shakespeare_char/prepare.py", ["{file}", "{file}"], "at most one input file"),
    ("{prep}/shakespeare_speech/prepare.py", ["{file}"], "speeches"),
    ("{prep}/shakespeare_speech/prepare.py", ["{empty}"], "empty"),
    # datasets and prepare inputs that got past the checks
    ("train.py", [*TINY_TRAIN, "--dataset={odd}", "--out_dir={tmp}/a"], "odd number of bytes"),
    ("train.py", [*TINY_TRAIN, "--dataset={big_id}", "--out_dir={tmp}/a"], "outside the vocabulary"),
    ("train.py", [*TINY_TRAIN, "--dataset={wide}", "--out_dir={tmp}/a"], "vocab_size=70000"),
    ("train.py", [*TINY_TRAIN, "--dataset={sft_str}", "--out_dir={tmp}/a"], "holds token 's', not an id"),
    ("train.py", [*TINY_TRAIN, "--dataset={sft_id}", "--out_dir={tmp}/a"], "holds token 70000, not an id"),
    ("train.py", [*TINY_TRAIN, "--dataset={sft_hole}", "--out_dir={tmp}/a"], "holds hole 9, not a position"),
    ("eval.py", ["--ckpts={ckpt}", "--judge={judge_big_id}"], "outside the vocabulary"),
    ("bench.py", ["--out_dir={ckpt}", "--judge={judge}", "--what=fast", "--split=test"], "has no test split"),
    ("{prep}/gsm8k/prepare.py", ["{gsm}"], "train.jsonl:2"),
    ("{prep}/shakespeare_char/prepare.py", ["{many}"], "128,992 distinct characters"),
    ("{prep}/shakespeare_char/prepare.py", ["/dev/zero"], "/dev/zero is not a regular file"),
    ("{prep}/corpus/prepare.py", ["{dev}/zero.txt", "--out={tmp}/corpus"], "zero.txt is not a regular file"),
    ("{prep}/gsm8k/prepare.py", ["{dev}/gsm8k"], "train.jsonl is not a regular file"),
    ("{prep}/shakespeare_char/prepare.py", ["{dev}/huge.txt"], "huge.txt whole needs at least 1,024.0 GiB"),
]


@pytest.fixture(scope="module")
def world(tiny_data, tiny_judge, tmp_path_factory):
    """Every file the table refers to, and the digest of the whole scratch folder before the table runs."""
    tmp = tmp_path_factory.mktemp("bad")
    ckpt = tmp / "ckpt"
    with open(os.path.join(tiny_data, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    from test_train import sft_dataset
    sft_dataset(tmp / "sft", meta, 50)
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={ckpt}", *TINY_TRAIN, "--max_iters=2")
    assert r.returncode == 0, r.stderr
    for name, data, more in (("ema", tiny_data, ["--ema_decay=0.9"]), ("sft_ckpt", tmp / "sft", [])):
        r = run("train.py", f"--dataset={data}", f"--out_dir={tmp / name}", *TINY_TRAIN, "--max_iters=2", *more)
        assert r.returncode == 0, r.stderr
    ck = torch.load(ckpt / "ckpt.pt", weights_only=True)
    (tmp / "edited").mkdir()
    torch.save({**ck, "iter_num": "three"}, tmp / "edited" / "ckpt.pt")
    (tmp / "edited_meta").mkdir()
    torch.save({**ck, "meta": {"tokenizer": "char"}}, tmp / "edited_meta" / "ckpt.pt")
    for name, m in [("other", dict(meta, stoi={c: (i + 1) % len(meta["stoi"]) for c, i in meta["stoi"].items()})),
                    ("short", meta), ("odd", meta), ("big_id", meta), ("wide", dict(meta, vocab_size=70000))]:
        os.makedirs(tmp / name)
        for split in ("train", "val"):
            shutil.copy(os.path.join(tiny_data, f"{split}.bin"), tmp / name / f"{split}.bin")
        with open(tmp / name / "meta.pkl", "wb") as f:
            pickle.dump(m, f)
    (tmp / "short" / "val.bin").write_bytes(b"\x01\x00" * 5)
    with open(tmp / "odd" / "val.bin", "ab") as f:
        f.write(b"\x01")  # half a token
    val = np.fromfile(tmp / "big_id" / "val.bin", dtype=np.uint16)
    val[len(val) // 2] = meta["vocab_size"]
    val.tofile(tmp / "big_id" / "val.bin")
    shutil.copytree(tmp / "short", tmp / "bad_meta")
    (tmp / "bad_meta" / "meta.pkl").write_bytes(b"not a pickle")
    see = [meta["stoi"][c] for c in "see cat\n"]
    for name, bad in [("sft_str", ("see cat\n", see[4:7])), ("sft_id", (see, [70000])), ("sft_hole", (see, [], [9]))]:
        shutil.copytree(tmp / "sft", tmp / name)
        with open(tmp / name / "train_sft.pkl", "rb") as f:
            records = pickle.load(f)
        with open(tmp / name / "train_sft.pkl", "wb") as f:
            pickle.dump(records + [bad], f)
    (tmp / "judge_big_id").mkdir()
    jk = torch.load(os.path.join(tiny_judge[0], "ckpt.pt"), weights_only=True)
    torch.save({**jk, "config": {**jk["config"], "dataset": str(tmp / "big_id")}}, tmp / "judge_big_id" / "ckpt.pt")
    (tmp / "gsm").mkdir()
    (tmp / "gsm" / "train.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n{"question": "2 + 2?", "answer": 4}\n')
    (tmp / "gsm" / "test.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    (tmp / "many.txt").write_text("".join(chr(i) for i in range(32, 0x20000) if not 0xD800 <= i < 0xE000), encoding="utf-8")
    dev = tmp_path_factory.mktemp("dev")
    (dev / "zero.txt").symlink_to("/dev/zero")
    (dev / "gsm8k").mkdir()
    os.mkfifo(dev / "gsm8k" / "train.jsonl")
    with open(dev / "huge.txt", "wb") as f:
        f.truncate(2**40)  # sparse: 1 TiB that takes no disk
    (tmp / "file.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3)
    (tmp / "empty.txt").write_text("  \n")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 4)
    shutil.copytree(os.path.join(ROOT, "data"), tmp / "prep", ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.txt"))
    copy_imports(tmp)
    for name in ("shakespeare_char", "shakespeare_speech", "gsm8k"):  # a prepared dataset that a failure must not touch
        (tmp / "prep" / name / "meta.pkl").write_bytes(b"prepared before")
    names = dict(ckpt=ckpt, judge=tiny_judge[0], data=tiny_data, tmp=tmp, file=tmp / "file.txt", bin=tmp / "binary.bin",
                 empty=tmp / "empty.txt", sft=tmp / "sft", other=tmp / "other", bad_meta=tmp / "bad_meta",
                 short=tmp / "short", edited=tmp / "edited", edited_meta=tmp / "edited_meta", prep=tmp / "prep",
                 ema=tmp / "ema", sft_ckpt=tmp / "sft_ckpt",
                 odd=tmp / "odd", big_id=tmp / "big_id", wide=tmp / "wide", sft_str=tmp / "sft_str", sft_id=tmp / "sft_id",
                 sft_hole=tmp / "sft_hole", judge_big_id=tmp / "judge_big_id", gsm=tmp / "gsm", many=tmp / "many.txt", dev=dev)
    return names, digest(tmp)


@pytest.fixture(scope="module")
def results(world):
    names, _ = world

    out_dirs = {a: threading.Lock() for _, args, _ in TABLE for a in args if a.startswith("--out_dir=")}

    def one(row):
        script, args, _ = row
        with out_dirs.get(next((a for a in args if a.startswith("--out_dir=")), None), nullcontext()):
            return run(script.format(**names), *[a.format(**names) for a in args], timeout=120)
    # four at a time (most of each is importing torch, which waits on more than the 2 cores), one at a
    # time per out_dir: a train.py run owns its out_dir while it runs (tests/test_faults.py)
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, TABLE))


def test_the_table_is_long_enough():
    scripts = {os.path.basename(s) if "prepare" not in s else "prepare.py" for s, _, _ in TABLE}
    assert len(TABLE) >= 40 and scripts == {"train.py", "sample.py", "eval.py", "bench.py", "prepare.py"}


@pytest.mark.parametrize("i", range(len(TABLE)), ids=[f"{os.path.basename(s)} {' '.join(a[-2:])}" for s, a, _ in TABLE])
def test_bad_input_is_one_clear_line(results, i):
    r, (_, _, words) = results[i], TABLE[i]
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert r.stdout.strip() == "" or "preparing" not in r.stdout


def test_no_file_was_changed(world, results):
    _, before = world
    assert digest(world[0]["tmp"]) == before


@pytest.mark.parametrize("dataset, arg, words", [("data", "--gradient_accumulation_steps=3", "multiple of the 2 processes"),
                                                 ("odd", "--block_size=32", "odd number of bytes")])  # a corrupt dataset
def test_a_bad_option_stops_every_torchrun_process_with_the_same_line(world, dataset, arg, words):
    names, _ = world
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             os.path.join(ROOT, "train.py"), f"--dataset={names[dataset]}", f"--out_dir={names['tmp']}/c", arg])
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 2 and len(set(lines)) == 1 and words in lines[0], r.stderr


def test_an_error_line_leaves_train_py_in_one_write(tmp_path):
    """The line above, made deterministic: two ranks' lines can only run into one if a line leaves in
    two writes. A sitecustomize swaps in a stderr (unbuffered, as Python's own) whose raw file marks the
    end of every write with '|'."""
    (tmp_path / "sitecustomize.py").write_text(
        "import io, os, sys\n"
        "class Marked(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b): os.write(2, bytes(b) + b'|'); return len(b)\n"
        "sys.stderr = io.TextIOWrapper(Marked(), write_through=True)\n")
    r = run("train.py", "--batch_size=0", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and r.stderr.count("|") == 1 and r.stderr.endswith("\n|"), r.stderr


def test_a_run_from_scratch_never_replaces_a_checkpoint_unless_told(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", f"--out_dir={tmp_path}", *TINY_TRAIN]
    assert run("train.py", *args, "--max_iters=3").returncode == 0
    trained = (tmp_path / "ckpt.pt").read_bytes()
    r = run("train.py", *args, "--max_iters=0")  # random weights would have replaced the trained ones
    assert r.returncode != 0 and (tmp_path / "ckpt.pt").read_bytes() == trained
    r = run("train.py", *args, "--max_iters=0", "--overwrite=True")
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 0


def test_an_unwritable_trace_fails_before_sampling(world):
    names, _ = world
    r = run("sample.py", f"--out_dir={names['ckpt']}", f"--trace={names['file']}/t.json", "--gen_length=16",
            "--block_length=8")
    assert r.returncode != 0 and r.stdout == ""  # nothing was sampled, so nothing was lost


@pytest.mark.parametrize("args", [["--gen_length=16", "--block_length=8", "--steps=40"],    # more steps than tokens
                                  ["--gen_length=16", "--block_length=8", "--fast", "--threshold=1.0"],
                                  ["--prompt=", "--gen_length=16", "--block_length=16"],   # an empty prompt
                                  ["--prompt=the [MASK*4] sat", "--gen_length=0"],           # infilling
                                  ["--prompt=the [MASK*4] sat", "--gen_length=0", "--fast"]])
def test_edge_inputs_that_must_work(world, args):
    r = run("sample.py", f"--out_dir={world[0]['ckpt']}", "--num_samples=1", *args)
    assert r.returncode == 0, r.stderr
    assert "_" not in r.stdout.split("---------------")[0]  # no mask left on the canvas


def test_bf16_on_cpu_trains(tiny_data, tmp_path):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", *TINY_TRAIN, "--max_iters=2",
            "--dtype=bfloat16")
    assert r.returncode == 0, r.stderr
