import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model import GPT, GPTConfig  # noqa: E402

WORDS = "the cat sat on a mat and then ran to see her small dog who was not there".split()


def tiny_text(n_words, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_words // 8):
        lines.append(" ".join(rng.choice(WORDS, size=8)))
    return "\n".join(lines) + "\n"


def write_char_dataset(folder, text):
    """A prepared character-level dataset in `folder`, written by data/shakespeare_char/prepare.py."""
    os.makedirs(folder, exist_ok=True)
    spec = importlib.util.spec_from_file_location("prepare_char", os.path.join(ROOT, "data", "shakespeare_char", "prepare.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    return prep.prepare(text, folder)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a test file runs (pytestmark = pytest.mark.usefixtures("one_thread")): its tensors
    are tiny, and two threads on two cores shared with other jobs spend their time waiting for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("data") / "tiny")
    write_char_dataset(folder, tiny_text(20000))
    return folder


TINY_TRAIN = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
              "--eval_iters=2", "--warmup_iters=2", "--learning_rate=3e-3", "--min_lr=3e-4"]


def copy_imports(folder):
    """Copy what a data/<name>/prepare.py imports from its ../.. (its input check and writer) into folder."""
    for name in ("tokenizer.py", "configurator.py"):
        shutil.copy(os.path.join(ROOT, name), folder)


def digest(folder):
    """{path: sha256} of every file below folder, and every folder: what a failing command must leave as it was."""
    out = {}
    for root, _, files in os.walk(folder):
        out[root] = "folder"
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.join(root, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run(script, *args, env=None, timeout=300):
    """Run a project script (or a command list) from the repository root; returns CompletedProcess."""
    cmd = [sys.executable, os.path.join(ROOT, script), *args] if isinstance(script, str) else list(script)
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def tiny_model(causal=False, V=12, T=16, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=T, vocab_size=V, mask_id=V - 1, n_layer=2, n_head=2, n_embd=32, causal=causal, **kw)
    return GPT(cfg).eval()


@pytest.fixture(scope="session")
def tiny_judge(tiny_data, tmp_path_factory):
    """A small AR model trained for a few seconds on the tiny corpus: (out_dir, model)."""
    out = str(tmp_path_factory.mktemp("judge"))
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--objective=ar", *TINY_TRAIN,
            "--n_embd=64", "--batch_size=16", "--max_iters=300", "--lr_decay_iters=300", "--eval_interval=300")
    assert r.returncode == 0, r.stderr
    from checkpoint import load
    return out, load(os.path.join(out, "ckpt.pt"))[0].eval()
