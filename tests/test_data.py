import os
import pickle
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test here runs a prepare.py

from conftest import ROOT, copy_imports, run
from tokenizer import check_stream, get_codec, load_sft

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
SHARED_BPE = os.path.join(ROOT, "..", "shared", "tiktoken_cache")


def prepare(tmp_path, name, env=None, text=TEXT):
    """Run data/<name>/prepare.py on a local input file, from a copy of data/ (the repo stays clean)."""
    shutil.copytree(os.path.join(ROOT, "data"), tmp_path / "data",
                    ignore=shutil.ignore_patterns("*.bin", "*.pkl", "input.txt"), dirs_exist_ok=True)
    copy_imports(tmp_path)
    (tmp_path / "input.txt").write_text(text)
    r = run(str(tmp_path / "data" / name / "prepare.py"), str(tmp_path / "input.txt"), env=env)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "data" / name
    with open(folder / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    if os.path.exists(folder / "train_sft.pkl"):  # SFT pairs
        return meta, [pickle.load(open(folder / f"{s}_sft.pkl", "rb")) for s in ("train", "val")]
    ids = [np.fromfile(folder / f"{s}.bin", dtype=np.uint16).tolist() for s in ("train", "val")]
    return meta, ids


def test_char_round_trip(tmp_path):
    meta, (train, val) = prepare(tmp_path, "shakespeare_char")
    encode, decode = get_codec(meta)
    assert meta["vocab_size"] == len(set(TEXT)) + 1 and meta["mask_id"] == len(set(TEXT))
    assert decode(train + val) == TEXT
    assert encode(TEXT) == train + val
    assert decode([meta["mask_id"]]) == "_"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode("Zebra!")


def test_bpe_round_trip(tmp_path):
    if not os.path.isdir(SHARED_BPE) and "TIKTOKEN_CACHE_DIR" not in os.environ:
        pytest.skip("no offline GPT-2 BPE cache")
    env = {"TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", SHARED_BPE)}
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
    meta, (train, val) = prepare(tmp_path, "shakespeare", env=env)
    assert meta["vocab_size"] == 50258 and meta["mask_id"] == 50257 and meta["eos_id"] == 50256
    encode, decode = get_codec(meta)
    assert decode(train) + decode(val) == TEXT
    assert max(train + val) < meta["mask_id"]
    assert decode(encode("hear me speak") + [meta["mask_id"]]) == "hear me speak_"


def test_missing_input_is_one_line(tmp_path):
    r = run("data/shakespeare_char/prepare.py", str(tmp_path / "nope.txt"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr


def test_speech_pairs(tmp_path):
    text = TEXT.replace("speak.\nFirst", "speak.\n\nFirst")  # speeches are separated by blank lines
    meta, (train, val) = prepare(tmp_path, "shakespeare_speech", text=text)
    char_meta, _ = prepare(tmp_path, "shakespeare_char", text=text)
    assert meta["stoi"] == char_meta["stoi"]  # the same ids as the character model's: a judge can score it
    assert (meta["mask_id"], meta["eos_id"], meta["vocab_size"]) == (len(set(TEXT)), len(set(TEXT)) + 1, len(set(TEXT)) + 2)
    encode, decode = get_codec(meta)
    pairs = train + val
    assert len(pairs) == 39 and len(val) == 4  # 40 speeches, the first has fewer than 32 characters before it
    for p, r in pairs:
        prompt, response = decode(p), decode(r)
        assert len(p) == 32 and prompt.endswith(":\n") and prompt + response + "\n" in text
        assert response in ("Before we proceed any further, hear me speak.", "Speak, speak.")
    assert decode([meta["eos_id"]]) == ""


def test_a_token_stream_is_checked_when_opened(tmp_path):
    ids = np.zeros(2**24 + 3, dtype=np.uint16)  # one chunk of the scan and 3 tokens more
    ids[-1] = 7
    ids.tofile(tmp_path / "val.bin")
    assert check_stream(tmp_path, "val", 8) == 2**24 + 3
    for vocab_size, words in [(7, "token id 7, outside the vocabulary of 7"), (2**16 + 1, "vocab_size=65537")]:
        with pytest.raises(ValueError, match=words):
            check_stream(tmp_path, "val", vocab_size)
    with pytest.raises(ValueError, match="has no test split"):
        check_stream(tmp_path, "test", 8)
    (tmp_path / "train.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="odd number of bytes"):
        check_stream(tmp_path, "train", 8)
    (tmp_path / "train.bin").write_bytes(b"")
    assert check_stream(tmp_path, "train", 8) == 0


def test_sft_records_are_checked_when_opened(tmp_path):
    good = [([1, 2], [3]), ([1, 2, 3], [4], [0, 2])]
    with open(tmp_path / "train_sft.pkl", "wb") as f:
        pickle.dump(good, f)
    assert load_sft(tmp_path, "train", 8, 5) == [([1, 2], [3], []), ([1, 2, 3], [4], [0, 2])]
    for bad, words in [(("ab", [1]), "record 2 holds token 'a'"), (([1, 5], [1]), "holds token 5"),
                       (([1], [-1]), "holds token -1"), (([1, 2], [3], [2]), "holds hole 2, not a position")]:
        with open(tmp_path / "train_sft.pkl", "wb") as f:
            pickle.dump(good + [bad], f)
        with pytest.raises(ValueError, match=words):
            load_sft(tmp_path, "train", 8, 5)
    with pytest.raises(ValueError, match="has no val split"):
        load_sft(tmp_path, "val", 8, 5)


class Payload:
    """A pickle that runs code when loaded: it calls open(marker, "w"), creating the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_folder(tmp_path, tiny_data, which):
    """A copy of the tiny dataset whose meta.pkl (or, with a valid meta, train_sft.pkl) carries a payload."""
    folder, marker = tmp_path / which, tmp_path / f"{which}.ran"
    shutil.copytree(tiny_data, folder)
    meta = pickle.load(open(folder / "meta.pkl", "rb"))
    if which == "meta":
        pickle.dump(dict(meta, payload=Payload(str(marker))), open(folder / "meta.pkl", "wb"))
    else:  # a task's records (bench.py reads them as its prompts)
        pickle.dump(dict(meta, task="automaton"), open(folder / "meta.pkl", "wb"))
        for split in ("train", "val", "test"):
            pickle.dump([([1, 2], [3], Payload(str(marker)))], open(folder / f"{split}_sft.pkl", "wb"))
    return str(folder), marker


@pytest.mark.parametrize("which", ["meta", "sft"])
def test_a_dataset_file_cannot_run_code(tiny_data, tmp_path, which):
    """meta.pkl and *_sft.pkl are read as plain data (tokenizer.DataUnpickler): a pickle that would call
    open() is refused in one line before anything is called, and the file it would create never appears."""
    from tokenizer import load_meta
    folder, marker = evil_folder(tmp_path, tiny_data, which)
    with pytest.raises(ValueError, match="plain data only") as e:
        load_meta(folder) if which == "meta" else load_sft(folder, "train", 32, 17)
    assert "\n" not in str(e.value) and "prepare it again" in str(e.value) and not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["meta", "sft"])
def test_no_script_runs_a_dataset_files_code(tiny_data, tmp_path, which):
    """train.py, eval.py and bench.py given such a folder: one line, non-zero exit, no file created."""
    folder, marker = evil_folder(tmp_path, tiny_data, which)
    out = str(tmp_path / "ckpt")
    from conftest import TINY_TRAIN
    assert run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--max_iters=0", *TINY_TRAIN).returncode == 0
    for cmd in (["train.py", f"--dataset={folder}", f"--out_dir={tmp_path / 'x'}", "--max_iters=1", *TINY_TRAIN],
                ["eval.py", "--mode=accuracy", f"--ckpts={out}", f"--dataset={folder}"],
                ["bench.py", "--what=fast", f"--out_dir={out}", f"--dataset={folder}", "--lengths=32"]):
        r = run(*cmd)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode != 0 and last.startswith("error:") and "plain data only" in last, (cmd, r.stderr[-800:])
        assert "Traceback" not in r.stderr, (cmd, r.stderr[-800:])
        assert not marker.exists(), cmd
