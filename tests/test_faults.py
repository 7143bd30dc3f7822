"""
Faults a run meets without a mistake in its options: a diverged loss, a full disk, Ctrl-C, a second run
into the same out_dir. Each ends in one line, and what was on disk before is neither lost nor changed.
Then the state a run carries through a resume (its EMA) and what --eval_only evaluates.
"""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_TRAIN, copy_imports, digest, run, tiny_text


def error_lines(stderr):
    """The lines of stderr that say an error (tqdm's bar shares stderr, its updates end in '\\r')."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]


def one_line(r, words):
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and words in errors[0], r.stderr


def run_limited(script, *args, max_file_bytes):
    """run() with files limited to max_file_bytes: a write past it fails (EFBIG), as on a full disk."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=limit)


def test_write_files_is_all_or_nothing_when_the_last_rename_fails(tmp_path, monkeypatch):
    import tokenizer
    for name in ("train.bin", "val.bin", "meta.pkl"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    real, calls = os.replace, []

    def replace(src, dst):  # the rename of the last new file into place fails
        calls.append(dst)
        if str(dst).endswith("meta.pkl") and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real(src, dst)
    monkeypatch.setattr(tokenizer.os, "replace", replace)
    with pytest.raises(OSError):
        tokenizer.write_files(str(tmp_path), {n: b"new" for n in ("train.bin", "val.bin", "meta.pkl")})
    assert len(calls) > 3  # it got as far as the last rename
    assert sorted(os.listdir(tmp_path)) == ["meta.pkl", "train.bin", "val.bin"]
    assert all((tmp_path / n).read_bytes() == b"old " + n.encode() for n in os.listdir(tmp_path))


slow = pytest.mark.slow
TRAIN = [*TINY_TRAIN, "--eval_interval=2"]


@slow
def test_a_diverged_run_stops_and_keeps_the_last_healthy_checkpoint(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'a'}", *TRAIN]
    assert run("train.py", *args, "--max_iters=4").returncode == 0
    healthy = (tmp_path / "a" / "ckpt.pt").read_bytes()
    r = run("train.py", *args, "--init_from=resume", "--max_iters=40", "--learning_rate=1e30")
    one_line(r, "diverged")
    assert "keeps step 4's weights" in r.stderr and (tmp_path / "a" / "ckpt.pt").read_bytes() == healthy
    assert os.listdir(tmp_path / "a") == ["ckpt.pt"]
    # from scratch it diverges before its first checkpoint: it says so, and leaves no out_dir behind
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'b'}", *TRAIN, "--max_iters=40",
            "--learning_rate=1e30", "--eval_interval=100")
    one_line(r, "no checkpoint was written")
    assert not (tmp_path / "b").exists()


@slow
def test_a_full_disk_leaves_the_checkpoint_as_it_was(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", f"--out_dir={tmp_path}", *TRAIN]
    assert run("train.py", *args, "--max_iters=2").returncode == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    r = run_limited("train.py", *args, "--init_from=resume", "--max_iters=4", max_file_bytes=len(before) // 2)
    one_line(r, "could not write")
    assert "keeps step 2's weights" in r.stderr
    assert os.listdir(tmp_path) == ["ckpt.pt"] and (tmp_path / "ckpt.pt").read_bytes() == before


@slow
def test_a_full_disk_while_preparing_leaves_the_dataset_as_it_was(tmp_path):
    shutil.copytree(os.path.join(ROOT, "data", "shakespeare_char"), tmp_path / "data" / "shakespeare_char",
                    ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.txt"))
    copy_imports(tmp_path)
    script, old, new = tmp_path / "data" / "shakespeare_char" / "prepare.py", tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(tiny_text(20000))
    new.write_text(tiny_text(20000, seed=1))  # another text: a half-written dataset would show
    assert run(str(script), str(old)).returncode == 0
    before = digest(tmp_path / "data")
    one_line(run_limited(str(script), str(new), max_file_bytes=50_000), "File too large")
    assert digest(tmp_path / "data") == before


@slow
def test_a_trace_that_cannot_be_written_leaves_the_old_one(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("train.py", f"--dataset={tiny_data}", f"--out_dir={ckpt}", *TRAIN, "--max_iters=2").returncode == 0
    args = [f"--out_dir={ckpt}", "--gen_length=16", "--block_length=16", "--num_samples=1"]
    trace = tmp_path / "trace.json"
    assert run("sample.py", *args, f"--trace={trace}").returncode == 0
    good = trace.read_bytes()
    r = run_limited("sample.py", *args, "--prompt=the", f"--trace={trace}", max_file_bytes=len(good) // 4)
    one_line(r, "File too large")
    assert trace.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["ckpt", "trace.json"]
    if os.path.exists("/dev/full"):  # a device is written in place, and its failure is one line too
        one_line(run("sample.py", *args, "--trace=/dev/full"), "No space left on device")


@slow
def test_a_second_run_is_refused_and_ctrl_c_is_one_line(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", f"--out_dir={tmp_path}", *TRAIN]
    log = tmp_path.parent / f"{tmp_path.name}.stderr"  # a file, not a pipe: a pipe nobody reads fills up and blocks
    with open(log, "w") as f:
        # Ctrl-C as in a terminal: SIGINT at its default, even where this test itself runs with it ignored (a
        # background job of a shell without job control), which the child would inherit and never be interrupted
        first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args, "--max_iters=100000"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (tmp_path / "ckpt.pt").exists()
        for more in (["--init_from=resume"], ["--overwrite=True"], []):  # none may write into a running run's out_dir
            one_line(run("train.py", *args, "--max_iters=4", *more), "in use by another train.py run")
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    err = log.read_text()
    assert first.returncode != 0 and "Traceback" not in err, err[err.find("Traceback") - 300:]
    assert error_lines(err) == [
        "error: interrupted (Ctrl-C); files written so far are complete"], err
    from checkpoint import load
    load(str(tmp_path))  # whole: not a half-written file
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert run("train.py", *args, "--init_from=resume", "--max_iters=4").returncode == 0  # the lock went with it


@slow
def test_eval_only_evaluates_the_checkpoint_it_finds(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", f"--out_dir={tmp_path}", *TRAIN, "--ema_decay=0.9"]
    r = run("train.py", *args, "--max_iters=4")
    assert r.returncode == 0, r.stderr
    last = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.startswith("step 4: ")]
    e = run("train.py", f"--out_dir={tmp_path}", "--eval_only=True")  # the run's own options come from it
    assert e.returncode == 0, e.stderr
    assert [line for line in e.stderr.replace("\r", "\n").splitlines() if line.startswith("step 4: ")] == last
    one_line(run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'none'}", "--eval_only=True"),
             "--eval_only evaluates a trained model")
    assert not (tmp_path / "none").exists()


def weights(path, key):
    return torch.load(path / "ckpt.pt", weights_only=True)[key]


@slow
def test_the_ema_survives_a_resume_with_or_without_the_flag(tiny_data, tmp_path):
    args = [f"--dataset={tiny_data}", *TRAIN, "--lr_decay_iters=6"]
    assert run("train.py", *args, f"--out_dir={tmp_path / 'full'}", "--ema_decay=0.9", "--max_iters=6").returncode == 0
    assert run("train.py", *args, f"--out_dir={tmp_path / 'part'}", "--ema_decay=0.9", "--max_iters=4").returncode == 0
    r = run("train.py", *args, f"--out_dir={tmp_path / 'part'}", "--init_from=resume", "--max_iters=6")
    assert r.returncode == 0, r.stderr
    full, part = weights(tmp_path / "full", "ema"), weights(tmp_path / "part", "ema")
    assert all(torch.equal(full[k], part[k]) for k in full)  # as if never stopped
    one_line(run("train.py", *args, f"--out_dir={tmp_path / 'part'}", "--init_from=resume", "--max_iters=8",
                 "--ema_decay=0"), "keeps EMA weights")
    # a run without an EMA that starts one on resume: from the weights it resumes
    assert run("train.py", *args, f"--out_dir={tmp_path / 'plain'}", "--max_iters=4").returncode == 0
    r = run("train.py", *args, f"--out_dir={tmp_path / 'plain'}", "--init_from=resume", "--max_iters=6",
            "--ema_decay=0.9")
    assert r.returncode == 0 and "the average starts from its weights" in r.stdout, r.stderr
    ck = torch.load(tmp_path / "plain" / "ckpt.pt", weights_only=True)
    assert ck["config"]["ema_decay"] == 0.9 and not all(torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["ema"])
