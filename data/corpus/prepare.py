"""
Your own text corpus with the GPT-2 BPE, for pretraining: nanoGPT's openwebtext recipe on local files.
    python data/corpus/prepare.py PATH [PATH ...] [--out=FOLDER] [--workers=N] [--val_fraction=0.0005] [--seed=1337]
e.g. python data/corpus/prepare.py path/to/input.txt path/to/gsm8k
PATH is
  - a .txt file: one document;
  - a .jsonl file: one document per line, its "text" field; a line without one (GSM8K's
    {"question": ..., "answer": ...}) becomes its string values joined by "\\n", in key order;
  - a folder: every .txt / .jsonl file below it, in sorted order.
Documents that are empty or only whitespace are dropped. Each document is tokenised with tiktoken's
encode_ordinary (so "<|endoftext|>" written in a text is plain text, never the EOT id) and followed
by one EOT (50256), as nanoGPT's openwebtext; the vocabulary is GPT-2's 50257 tokens + [MASK] (50257).
Parsing and tokenising run in --workers processes, in order: the files do not depend on --workers.
Split: ceil(val_fraction * documents) documents, at least one, drawn with --seed, go to val; with a
single document, its tokens are split 90/10 instead (train.py needs both splits).
Writes train.bin / val.bin (uint16) and meta.pkl into --out (default: beside this script), all or
nothing. The documents are held in memory: fine for hundreds of MB; for OpenWebText's 40 GB, see
data/openwebtext/prepare.py.
"""

import json
import math
import os
import pickle
import sys
import time
from contextlib import nullcontext
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", ".."))
from tokenizer import check_input  # noqa: E402  (the prepare scripts' one check of an input file)

EXTENSIONS = (".txt", ".jsonl")
CHUNK_CHARS = 1 << 20  # text per task, at most: small enough to balance the workers, big enough to amortise IPC
DEFAULTS = dict(out=here, workers=os.cpu_count() or 1, val_fraction=0.0005, seed=1337)


def parse_args(argv, defaults=DEFAULTS):
    """argv -> (paths, options): --key=value options (typed as their defaults), anything else a path."""
    paths, opts = [], dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if not arg.startswith("--"):
            paths.append(arg)
            continue
        key, eq, val = arg[2:].partition("=")
        if key not in opts or not eq:
            sys.exit(f"error: unknown option {arg!r} (options: {', '.join('--' + k + '=' for k in opts)})")
        try:
            opts[key] = type(defaults[key])(val)
        except ValueError:
            sys.exit(f"error: {arg}: expected {type(defaults[key]).__name__}")
    if opts["workers"] < 1:
        sys.exit(f"error: --workers={opts['workers']} must be >= 1")
    if not 0 <= opts["val_fraction"] < 1:  # also false for nan
        sys.exit(f"error: --val_fraction={opts['val_fraction']} must be in [0, 1)")
    if opts["seed"] < 0:
        sys.exit(f"error: --seed={opts['seed']} must be >= 0")
    out = parent = opts["out"]
    while parent and not os.path.exists(parent):  # the nearest folder that exists: makedirs starts there
        parent = os.path.dirname(parent)
    if not out or os.path.exists(out) and not os.path.isdir(out) or not os.access(parent or ".", os.W_OK):
        sys.exit(f"error: --out={out} is not a folder that can be written")
    return paths, opts


def list_files(paths):
    """The .txt / .jsonl files the paths name, folders expanded in sorted order."""
    if not paths:
        sys.exit("error: no input: pass .txt / .jsonl files or folders (see --help)")
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, f) for root, _, names in os.walk(path)
                           for f in names if f.endswith(EXTENSIONS))
            if not found:
                sys.exit(f"error: {path} holds no .txt or .jsonl files")
            files += found
        elif not os.path.exists(path):
            sys.exit(f"error: {path} not found")
        elif not path.endswith(EXTENSIONS):
            sys.exit(f"error: {path} is not a .txt or .jsonl file (nor a folder)")
        else:
            files.append(path)
    for path in files:
        check_input(path)  # a device or a FIFO named .txt, or a file too large to read
    return files


def pieces(path, text):
    """A file's text as parse jobs (path, number of its first line, text): a .txt whole, a .jsonl in
    pieces of about CHUNK_CHARS that end at line ends."""
    start, line = 0, 1
    while start < len(text):
        end = len(text) if path.endswith(".txt") else text.find("\n", start + CHUNK_CHARS) + 1 or len(text)
        yield path, line, text[start:end]
        line += text.count("\n", start, end)
        start = end


def parse(job):
    """A parse job -> (its non-empty documents, None), or (None, what is wrong). Runs in a worker (JSON
    parsing is most of the reading time); returns the error, as an exception would end the worker, not the script."""
    path, first, text = job
    if path.endswith(".txt"):
        return [text] if text and not text.isspace() else [], None
    docs = []
    for i, line in enumerate(text.split("\n"), first):  # JSON strings cannot hold a raw newline
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return None, f"{path}:{i}: not valid JSON ({e.msg})"
        if not isinstance(obj, dict):
            return None, f"{path}:{i}: expected a JSON object, got {type(obj).__name__}"
        if "text" in obj and not isinstance(obj["text"], str):
            return None, f"{path}:{i}: \"text\" is {type(obj['text']).__name__}, not a string"
        doc = obj["text"] if "text" in obj else "\n".join([v for v in obj.values() if isinstance(v, str)])
        if doc and not doc.isspace():
            docs.append(doc)
    return docs, None


def read_documents(paths, imap=map):
    """The non-empty documents of the paths, in order, and the bytes read; the files are parsed with
    imap (a Pool's, or the builtin map). Anything unreadable stops the script with one line, before
    anything is written."""
    jobs, n_bytes = [], 0
    for path in list_files(paths):
        try:
            with open(path, "rb") as f:
                data = f.read()
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            sys.exit(f"error: {path} is not UTF-8 text (byte {e.start})")
        except OSError as e:
            sys.exit(f"error: {path} cannot be read ({e.strerror})")
        if "\0" in text:
            sys.exit(f"error: {path} is binary (it holds NUL bytes)")
        n_bytes += len(data)
        jobs += pieces(path, text)
    docs = []
    for part, error in imap(parse, jobs):  # in order: the first error of the input is the one reported
        if error:
            sys.exit(f"error: {error}")
        docs += part
    if not docs:
        sys.exit(f"error: no non-empty document in {' '.join(paths)}")
    return docs, n_bytes


def split(n_docs, val_fraction, seed):
    """Which documents go to val, as a bool array: ceil(val_fraction * n_docs) of them (nanoGPT's
    count), at least 1 and at most n_docs - 1, drawn from the seed alone; none of a single document."""
    is_val = np.zeros(n_docs, dtype=bool)
    if n_docs >= 2:
        n_val = min(n_docs - 1, max(1, math.ceil(val_fraction * n_docs)))
        is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


_enc = None


def encoder():
    """The GPT-2 BPE, loaded once per process."""
    global _enc
    if _enc is None:
        import tiktoken
        _enc = tiktoken.get_encoding("gpt2")
    return _enc


def tokenize(job):
    """(documents, their val flags) -> (train ids, val ids): every document's tokens, then one EOT.
    Runs in a worker; the ids go back as uint16 arrays: a list of ints would pickle to more bytes and
    take the parent far longer to unpickle, all of it serial."""
    docs, is_val = job
    enc = encoder()
    out = ([], [])
    for doc, v in zip(docs, is_val):
        ids = out[v]
        ids += enc.encode_ordinary(doc)
        ids.append(enc.eot_token)
    return tuple(np.array(ids, dtype=np.uint16) for ids in out)


def chunks(docs, is_val, workers):
    """The documents in order, in tasks of about total / (8 * workers) characters (at most CHUNK_CHARS,
    at least one document): enough tasks that the workers finish together."""
    size = min(CHUNK_CHARS, sum(map(len, docs)) // (8 * workers) + 1)
    start, n = 0, 0
    for i, doc in enumerate(docs):
        n += len(doc)
        if n >= size or i == len(docs) - 1:
            yield docs[start:i + 1], is_val[start:i + 1].tolist()
            start, n = i + 1, 0


def load_writer():
    """tokenizer.write_files (all or nothing). Imported late: tokenizer.py imports torch, ~1.5 s of CPU
    that a failed run need not spend, and that main() overlaps with the workers' tokenising."""
    sys.path.insert(0, os.path.join(here, "..", ".."))
    from tokenizer import write_files
    return write_files


def main(argv, defaults=DEFAULTS):
    paths, opts = parse_args(argv, defaults)
    t0 = time.time()
    files = list_files(paths)  # a wrong path fails before anything starts
    try:
        enc = encoder()  # before the fork: the workers inherit it
    except Exception as e:
        sys.exit(f"error: tiktoken could not load the gpt2 BPE ({type(e).__name__}); offline, set "
                 f"TIKTOKEN_CACHE_DIR to a folder that holds it")
    workers = opts["workers"]
    train, val = [], []
    with (Pool(workers) if workers > 1 else nullcontext()) as pool:
        imap = pool.imap if workers > 1 else map  # one worker: all in this process, no IPC
        docs, n_bytes = read_documents(files, imap)
        is_val = split(len(docs), opts["val_fraction"], opts["seed"])
        jobs = list(chunks(docs, is_val, workers))
        results = imap(tokenize, jobs)  # a Pool's workers start now; results in order: the same files for any --workers
        write_files = load_writer()  # ...while this process imports torch (the lazy builtin map waits for it)
        with tqdm(total=len(docs), unit="doc", desc="tokenizing") as bar:
            for (t, v), (job_docs, _) in zip(results, jobs):
                train.append(t)
                val.append(v)
                bar.update(len(job_docs))
    train, val = np.concatenate(train), np.concatenate(val)
    if len(docs) == 1:
        n = int(0.9 * len(train))  # the document and its EOT hold >= 2 tokens: both splits are non-empty
        train, val = train[:n], train[n:]
    meta = dict(tokenizer="gpt2", vocab_size=enc.n_vocab + 1, mask_id=enc.n_vocab, eos_id=enc.eot_token)
    try:
        os.makedirs(opts["out"], exist_ok=True)
        write_files(opts["out"], {"train.bin": train.tobytes(), "val.bin": val.tobytes(),
                                  "meta.pkl": pickle.dumps(meta)})
    except OSError as e:
        sys.exit(f"error: could not write into {opts['out']} ({e.strerror})")
    dt = time.time() - t0
    n_val = int(is_val.sum())
    docs_line = f"{len(docs):,} documents ({len(docs) - n_val:,} train, {n_val:,} val)" if len(docs) > 1 else \
        "1 document (split 90/10 by tokens)"
    print(f"{docs_line}; train {len(train):,} tokens, val {len(val):,} tokens; {n_bytes / 1e6:.1f} MB in {dt:.1f} s "
          f"({n_bytes / 1e6 / dt:.1f} MB/s, {workers} worker{'s' * (workers > 1)}) -> {opts['out']}")


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    main(sys.argv[1:])
