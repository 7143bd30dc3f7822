"""
data/corpus/prepare.py and data/openwebtext/prepare.py: a folder of .txt and .jsonl files goes in, and
train.bin + val.bin give back exactly its documents, each followed by one EOT, whatever the number of
workers; bad input stops with one line and changes nothing. The scripts run from a copy of data/.
"""
import importlib.util
import json
import math
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT, copy_imports, digest, run

SHARED_BPE = os.path.join(ROOT, "..", "shared", "tiktoken_cache")
BPE_ENV = {"TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", SHARED_BPE)}
needs_bpe = pytest.mark.skipif(not os.path.isdir(BPE_ENV["TIKTOKEN_CACHE_DIR"]), reason="no offline GPT-2 BPE cache")
META = dict(tokenizer="gpt2", vocab_size=50258, mask_id=50257, eos_id=50256)
EOT = 50256

# the corpus: file (relative path) -> content; .jsonl files as lists of objects (None: a blank line)
FILES = {
    "a.txt": "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "b.txt": "Ünïcödé — naïve café, 日本語のテキスト, emoji 🙂🚀, tab\there\r\n",
    "c/empty.txt": "",
    "c/space.txt": " \n\t\n",
    "c/z.txt": "  leading spaces, and <|endoftext|> written in the text\n\n",
    "d.jsonl": [{"text": "one"}, {"text": ""}, None, {"text": "Zwei — zwei\nZeilen 🙂"},
                {"question": "What is 2+2?", "answer": "2+2 = <<2+2=4>>4\n#### 4"},
                {"id": 7, "question": "No text field?", "answer": "Then the strings, in key order."},
                *({"text": f"document {i}: " + "the cat sat on a mat. " * (i % 5 + 1)} for i in range(24))],
}
# what must come back, in input order: folders walked in sorted order, empty documents dropped,
# a line without "text" joined from its string values
DOCS = [FILES["a.txt"], FILES["b.txt"], FILES["c/z.txt"], "one", "Zwei — zwei\nZeilen 🙂",
        "What is 2+2?\n2+2 = <<2+2=4>>4\n#### 4", "No text field?\nThen the strings, in key order.",
        *(f"document {i}: " + "the cat sat on a mat. " * (i % 5 + 1) for i in range(24))]


def write_corpus(folder, files=FILES):
    for name, content in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, list):
            content = "".join(("" if o is None else json.dumps(o, ensure_ascii=False)) + "\n" for o in content)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    return str(folder)


def load_corpus_module():
    spec = importlib.util.spec_from_file_location("corpus_prepare", os.path.join(ROOT, "data", "corpus", "prepare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_repo(folder):
    """data/ (without prepared files) and tokenizer.py, which the prepare scripts import from ../.."""
    shutil.copytree(os.path.join(ROOT, "data"), folder / "data",
                    ignore=shutil.ignore_patterns("*.bin", "*.pkl", "input.txt", "__pycache__"))
    copy_imports(folder)
    return folder


def read_prepared(folder):
    with open(os.path.join(folder, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    return meta, [np.fromfile(os.path.join(folder, f"{s}.bin"), dtype=np.uint16) for s in ("train", "val")]


def documents(ids):
    """Token ids -> the documents they hold, split at EOT; each must be followed by exactly one EOT."""
    import tiktoken
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", BPE_ENV["TIKTOKEN_CACHE_DIR"])
    enc = tiktoken.get_encoding("gpt2")
    ids = ids.tolist()
    assert ids and ids[-1] == EOT, "a split must end with the last document's EOT"
    ends = [i for i, t in enumerate(ids) if t == EOT]
    starts = [0] + [e + 1 for e in ends[:-1]]
    assert all(e > s for s, e in zip(starts, ends)), "an empty document, or two EOTs in a row"
    return [enc.decode(ids[s:e]) for s, e in zip(starts, ends)]


# ------------------------------------------------------------------ fast: the functions, in-process

def test_read_documents_order_jsonl_and_empty(tmp_path):
    prep = load_corpus_module()
    folder = write_corpus(tmp_path / "corpus")
    docs, n_bytes = prep.read_documents([folder])
    assert docs == DOCS
    assert n_bytes == sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    # a file named twice is read twice, in the order given
    docs, _ = prep.read_documents([os.path.join(folder, name) for name in ("b.txt", "a.txt", "b.txt")])
    assert docs == [FILES["b.txt"], FILES["a.txt"], FILES["b.txt"]]


def test_jsonl_pieces_keep_the_documents_and_the_line_numbers(tmp_path, monkeypatch):
    prep = load_corpus_module()
    lines = [json.dumps({"text": f"line {i} " + "é" * (i % 7)}) if i % 10 else "" for i in range(1, 200)]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    whole, _ = prep.read_documents([str(tmp_path / "big.jsonl")])
    monkeypatch.setattr(prep, "CHUNK_CHARS", 100)  # many pieces, as a large file would be cut
    assert len(list(prep.pieces(str(tmp_path / "big.jsonl"), (tmp_path / "big.jsonl").read_text()))) > 20
    assert prep.read_documents([str(tmp_path / "big.jsonl")])[0] == whole
    assert whole == [json.loads(l)["text"] for l in lines if l]
    lines[150] = '{"text": "no end'
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=r"big.jsonl:151: not valid JSON"):
        prep.read_documents([str(tmp_path / "big.jsonl")])


def test_split_is_deterministic_and_never_leaves_a_split_empty():
    prep = load_corpus_module()
    a = prep.split(1000, 0.05, seed=1337)
    assert a.sum() == 50 and (a == prep.split(1000, 0.05, seed=1337)).all()
    assert not (a == prep.split(1000, 0.05, seed=1338)).all()
    assert 0 < a[:500].sum() < 50  # drawn from the whole corpus, not its tail
    assert prep.split(100_000, 0.0005, 1337).sum() == math.ceil(0.0005 * 100_000)
    for n in (2, 3, 10):
        for frac in (0.0, 0.0005, 0.99):
            s = prep.split(n, frac, 0)
            assert 1 <= s.sum() <= n - 1, (n, frac)
    assert prep.split(1, 0.5, 0).sum() == 0  # a single document is split by tokens instead


@needs_bpe
def test_tokenize_returns_uint16_with_one_eot_per_document(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", BPE_ENV["TIKTOKEN_CACHE_DIR"])
    prep = load_corpus_module()
    train, val = prep.tokenize((["hello world", "<|endoftext|>", "naïve"], [False, True, False]))
    assert train.dtype == np.uint16 and val.dtype == np.uint16
    assert documents(train) == ["hello world", "naïve"] and documents(val) == ["<|endoftext|>"]
    assert (val == EOT).sum() == 1  # the text "<|endoftext|>" is ordinary text, not the EOT id


@needs_bpe
def test_a_single_document_is_split_90_10(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", BPE_ENV["TIKTOKEN_CACHE_DIR"])
    prep = load_corpus_module()
    text = "It was the best of times, it was the worst of times. " * 40
    (tmp_path / "one.txt").write_text(text)
    prep.main([str(tmp_path / "one.txt"), f"--out={tmp_path / 'out'}", "--workers=1"])
    assert "1 document (split 90/10 by tokens)" in capsys.readouterr().out
    meta, (train, val) = read_prepared(tmp_path / "out")
    assert meta == META
    assert len(train) == int(0.9 * (len(train) + len(val))) and len(val) > 0
    assert documents(np.concatenate([train, val])) == [text]


# ------------------------------------------------------------------ slow: the command lines

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"))


@needs_bpe
@pytest.mark.slow
def test_workers_give_identical_files_that_hold_the_documents(repo, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    script = str(repo / "data" / "corpus" / "prepare.py")
    for w in (1, 2):
        r = run(script, corpus, f"--workers={w}", f"--out={tmp_path / f'w{w}'}", "--val_fraction=0.2", env=BPE_ENV)
        assert r.returncode == 0, r.stderr
        assert f"{len(DOCS)} documents" in r.stdout and f"{w} worker" in r.stdout, r.stdout
    for name in ("train.bin", "val.bin", "meta.pkl"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    meta, (train, val) = read_prepared(tmp_path / "w1")
    assert meta == META
    train_docs, val_docs = documents(train), documents(val)
    assert len(val_docs) == math.ceil(0.2 * len(DOCS))
    assert sorted(train_docs + val_docs) == sorted(DOCS)  # every document once, nothing else
    for part in (train_docs, val_docs):  # each split keeps the input order
        assert part == [d for d in DOCS if d in part]
    assert val_docs != DOCS[-len(val_docs):]  # drawn by the seed, not the tail


# (arguments, words the error line must hold); {c} is a good corpus, {out} a prepared folder
BAD = [
    ([], "no input"),
    (["{tmp}/nope.txt"], "not found"),
    (["{tmp}/latin1.txt"], "not UTF-8"),
    (["{tmp}/nul.txt"], "NUL"),
    (["{tmp}/notes"], "holds no .txt or .jsonl files"),
    (["{tmp}/notes/readme.md"], "not a .txt or .jsonl file"),
    (["{tmp}/empty.txt", "{tmp}/empty.jsonl"], "no non-empty document"),
    (["{c}", "{tmp}/bad.jsonl"], "bad.jsonl:3: not valid JSON"),
    (["{tmp}/list.jsonl"], "list.jsonl:1: expected a JSON object"),
    (["{tmp}/number.jsonl"], "number.jsonl:2: \"text\" is int"),
    (["{c}", "--workers=0"], "--workers=0"),
    (["{c}", "--workers=two"], "--workers=two"),
    (["{c}", "--val_fraction=1"], "--val_fraction=1.0"),
    (["{c}", "--val_fraction=-0.1"], "--val_fraction=-0.1"),
    (["{c}", "--val_fraction=nan"], "--val_fraction=nan"),
    (["{c}", "--seed=-1"], "--seed=-1"),
    (["{c}", "--shuffle=True"], "unknown option '--shuffle=True'"),
    (["{c}", "--workers"], "unknown option '--workers'"),
    (["{c}", "--out={tmp}/latin1.txt"], "--out="),
]


@pytest.mark.slow
def test_bad_input_is_one_line_and_changes_nothing(repo, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", {"a.txt": FILES["a.txt"]})
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"text\0more")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("not a corpus file")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n\n{"text": " "}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": "cut off\n')
    (tmp_path / "list.jsonl").write_text('["a", "b"]\n')
    (tmp_path / "number.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    out = tmp_path / "prepared"
    out.mkdir()
    for name in ("train.bin", "val.bin", "meta.pkl"):  # a prepared dataset that a failure must not touch
        (out / name).write_bytes(b"prepared before")
        (repo / "data" / "corpus" / name).write_bytes(b"prepared before")  # and the default --out
    before = digest(tmp_path), digest(repo)
    names = dict(tmp=tmp_path, c=corpus)
    script = str(repo / "data" / "corpus" / "prepare.py")

    def one(row):
        args = [a.format(**names) for a in row[0]]
        if not any(a.startswith("--out=") for a in args) and row[0]:
            args.append(f"--out={out}")
        return run(script, *args, env=BPE_ENV, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, BAD))
    for (args, words), r in zip(BAD, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, r.stderr)
    assert (digest(tmp_path), digest(repo)) == before
    for name in ("train.bin", "val.bin", "meta.pkl"):
        os.remove(repo / "data" / "corpus" / name)


@needs_bpe
@pytest.mark.slow
def test_openwebtext_with_paths_is_the_local_corpus_route(repo, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    r = run(str(repo / "data" / "openwebtext" / "prepare.py"), corpus, "--workers=2", "--val_fraction=0.3", env=BPE_ENV)
    assert r.returncode == 0, r.stderr
    owt = repo / "data" / "openwebtext"
    meta, (train, val) = read_prepared(owt)
    assert meta == META
    assert sorted(documents(train) + documents(val)) == sorted(DOCS)
    # the same files as data/corpus/prepare.py with nanoGPT's seed, openwebtext's default
    r = run(str(repo / "data" / "corpus" / "prepare.py"), corpus, "--seed=2357", "--val_fraction=0.3",
            f"--out={tmp_path / 'c'}", env=BPE_ENV)
    assert r.returncode == 0, r.stderr
    for name in ("train.bin", "val.bin", "meta.pkl"):
        assert (owt / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name


@pytest.mark.slow
def test_openwebtext_without_datasets_says_how_to_get_it(repo):
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("`datasets` is installed: the script would download OpenWebText")
    before = digest(repo / "data" / "openwebtext")
    r = run(str(repo / "data" / "openwebtext" / "prepare.py"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert "pip install datasets" in lines[0] and "PATH" in lines[0]
    assert digest(repo / "data" / "openwebtext") == before
