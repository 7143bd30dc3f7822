"""
A prepared dataset as the models see it: its vocabulary (meta.pkl), text <-> token ids (characters,
as shakespeare_char, or GPT-2 BPE via tiktoken, as shakespeare; each with a [MASK] id appended), the
checks a split passes when it is opened (check_stream, load_sft), and the SFT data contract (sft_rows).
"""

import os
import pickle
import signal
import subprocess
import sys
import threading

import numpy as np

from configurator import check_memory, need, read_json

MASK_GLYPH = "_"  # how a [MASK] is drawn when a canvas is decoded


def write_files(folder, files):
    """Write {file name: bytes, or a function that writes the file at the path it is given (torch.save)}
    into folder, all or nothing: the project's one writer (datasets, checkpoints, traces). Every file is
    written under a temporary name first; then the old files step aside (name.old) and the new ones take
    their names, the last one in a single atomic rename (a checkpoint is always whole, even after kill -9).
    If anything fails (a full disk, Ctrl-C, a rename) the temporary files are removed and the old files
    come back, so the folder is as it was: a half-written dataset would be taken as prepared, a
    half-written checkpoint would replace a good one. A name that is not a regular file (a device such as
    /dev/stdout) is written in place. The error is raised again for the caller to report."""
    undo, written = [], []
    try:
        for name, data in files.items():
            path = os.path.join(folder, name)
            tmp = path + ".tmp"
            if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: nothing to swap
                tmp = path
            else:
                undo.append(lambda t=tmp: os.path.exists(t) and os.remove(t))
                written.append((tmp, path))
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data)
        for j, (tmp, path) in enumerate(written):
            if j < len(written) - 1 and os.path.exists(path):  # the last rename replaces its file atomically
                os.replace(path, path + ".old")
                undo.append(lambda p=path: os.replace(p + ".old", p))
            os.replace(tmp, path)
            undo.append(lambda p=path, t=tmp: os.replace(p, t))
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                pass
        raise
    for _, path in written:
        if os.path.exists(path + ".old"):
            os.remove(path + ".old")


def dataset_dir(dataset):
    """The folder of a dataset, the same in every script: a name of data/ ('shakespeare_char') or a path
    (anything with a '/': relative to the working directory)."""
    if os.sep in dataset:
        return dataset
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", dataset)


class DataUnpickler(pickle.Unpickler):
    """Unpickling of plain data only: dicts, lists, tuples, strings, numbers, what every prepare.py writes,
    none of which names a class. A pickle runs code by naming a callable (a class or function it calls
    while loading); here naming anything is refused before it is looked up, so a dataset file cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, and a dataset file holds plain data only")


def read_pickle(path):
    """A dataset file's plain data (DataUnpickler)."""
    with open(path, "rb") as f:
        return DataUnpickler(f).load()


def load_meta(data_dir):
    """The dataset's meta.pkl; ValueError, with what is wrong in one line, when it is missing or unreadable."""
    path = os.path.join(data_dir, "meta.pkl")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: prepare the dataset first (python {data_dir}/prepare.py)")
    try:
        meta = read_pickle(path)
        assert isinstance(meta, dict) and {"tokenizer", "vocab_size", "mask_id"} <= set(meta), "missing keys"
    except Exception as e:
        raise ValueError(f"{path} is not a valid meta.pkl ({type(e).__name__}: {e}); prepare it again "
                         f"(python {data_dir}/prepare.py)")
    return meta


def same_tokens(a, b):
    """Whether two datasets' metas give the same ids to the same tokens (an SFT vocabulary may add
    special tokens at the end): a model of one can read, and a judge of one can score, the other's text."""
    return (a["tokenizer"], a.get("stoi"), a["mask_id"]) == (b["tokenizer"], b.get("stoi"), b["mask_id"])


def get_codec(meta):
    """encode(str) -> list of ids (ValueError on text the vocabulary lacks);
    decode(ids) -> str, with [MASK] drawn as MASK_GLYPH."""
    mask_id = meta["mask_id"]
    if meta["tokenizer"] == "char":
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(s):
            bad = sorted(set(c for c in s if c not in stoi))
            if bad:
                raise ValueError(f"characters not in the vocabulary: {''.join(bad)!r}")
            return [stoi[c] for c in s]

        def decode(ids):
            return "".join(MASK_GLYPH if i == mask_id else itos[i] for i in ids)
    elif meta["tokenizer"] == "hf":  # a pretrained model's own tokenizer.json (families.pretrained)
        tok = hf_tokenizer(meta["path"])

        def encode(s):
            return tok.encode(s, add_special_tokens=False).ids

        def decode(ids):
            return decode_runs(ids, mask_id, lambda run: tok.decode(run, skip_special_tokens=True))
    else:
        import tiktoken
        try:
            enc = tiktoken.get_encoding(meta["tokenizer"])
        except Exception as e:  # offline without a cached BPE: one line, not a network traceback
            raise ValueError(f"tiktoken could not load the {meta['tokenizer']} BPE ({type(e).__name__}); "
                             f"offline, set TIKTOKEN_CACHE_DIR to a folder that holds it")

        def encode(s):
            return enc.encode(s, allowed_special={"<|endoftext|>"})

        def decode(ids):
            return decode_runs(ids, mask_id, enc.decode)
    return encode, decode


def decode_runs(ids, mask_id, dec):
    """Decode the runs of real tokens between [MASK]s together (a character may take several BPE tokens)."""
    out, run = [], []
    for i in ids:
        if i == mask_id:
            out.append(dec(run) + MASK_GLYPH)
            run = []
        else:
            run.append(i)
    return "".join(out) + dec(run)


def hf_tokenizer(folder):
    """The tokenizers library's Tokenizer of a Hugging Face checkpoint folder (its tokenizer.json)."""
    tokenizers = need("tokenizers", "a pretrained model's tokenizer.json")
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: the checkpoint's tokenizer")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"{path} is not a tokenizers tokenizer.json ({type(e).__name__}: {str(e)[:100]})")


CHAT_LIMIT, CHAT_SECONDS = 10**6, 5.0  # what a chat template may write, and for how long


def too_slow(*_):
    raise TimeoutError(f"{CHAT_SECONDS:g} s passed")


def chat_prompt(meta, text):
    """text as one user turn of an Instruct model's chat, followed by the opening of the assistant's turn:
    the chat_template of the checkpoint's tokenizer_config.json (a jinja2 template, as transformers renders
    it, in jinja2's sandbox: the template comes from a downloaded file), bounded in what it writes
    (CHAT_LIMIT characters, no operation building more), how long it runs and how deep it recurses."""
    if meta["tokenizer"] != "hf":
        raise ValueError("--chat is for pretrained Instruct models (--init_from); this model has no chat format")
    tc = read_json(os.path.join(meta["path"], "tokenizer_config.json"), "the checkpoint's chat template")
    if not isinstance(tc.get("chat_template"), str):
        raise ValueError(f"{meta['path']}/tokenizer_config.json has no chat_template: --chat is for Instruct models")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Bounded(ImmutableSandboxedEnvironment):  # no operation builds a value of more than CHAT_LIMIT characters
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            sized = [v for v in (left, right) if isinstance(v, (str, list, tuple))]
            counts = [v for v in (left, right) if isinstance(v, int)]
            if operator == "*" and sized and counts and len(sized[0]) * max(counts[0], 0) > CHAT_LIMIT or \
                    operator == "**" and counts and abs(right if isinstance(right, int) else 0) > 64:
                raise SecurityError(f"{operator} would build a value past {CHAT_LIMIT:,} characters")
            return super().call_binop(context, operator, left, right)

    special = {k: v.get("content") if isinstance(v, dict) else v for k, v in tc.items() if k.endswith("_token")}
    where = f"{meta['path']}/tokenizer_config.json: the chat template"
    bounded = threading.current_thread() is threading.main_thread()  # a timer can interrupt the main thread only
    if bounded:
        previous = signal.signal(signal.SIGALRM, too_slow)
        signal.setitimer(signal.ITIMER_REAL, CHAT_SECONDS)
    try:
        out = []
        for piece in Bounded(trim_blocks=True, lstrip_blocks=True).from_string(tc["chat_template"]).generate(
                messages=[{"role": "user", "content": text}], add_generation_prompt=True, **special):
            out.append(piece)
            if sum(map(len, out)) > CHAT_LIMIT:
                raise SecurityError(f"its output passes {CHAT_LIMIT:,} characters")
        return "".join(out)
    except (TemplateError, TimeoutError, RecursionError, MemoryError, OverflowError) as e:
        raise ValueError(f"{where} fails ({type(e).__name__}: {str(e)[:200]})")
    finally:
        if bounded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def recode(records, task_meta, meta, shots=(), chat=False):
    """A task's records (prepared with the task's tokenizer) as prompts and answers in a model's tokens:
    each decoded to text and encoded again. shots: records placed before every prompt as worked examples,
    prompt + answer, separated by blank lines (lm-eval's few-shot format); for a pretrained model (its own
    tokenizer) the prompt's trailing whitespace moves to the answer, whose first token carries it
    ('Question: ...\nAnswer:', as lm-eval asks), and with chat it is wrapped in the chat template. Infilling
    records (holes) have no text form here. Returns (records, stop): stop, the text every prompt starts
    with, is where a few-shot answer ends (the model going on to write the next example)."""
    dec, enc = get_codec(task_meta)[1], get_codec(meta)[0]
    if any(h for _, _, h in records):
        raise ValueError("infilling records (holes in the prompt) cannot change tokenizer or take examples")
    text = [(dec(p), dec(r)) for p, r, _ in records]
    if not same_tokens(task_meta, meta):  # the prompt's trailing space goes to the answer
        text = [(p.rstrip(), p[len(p.rstrip()):] + r) for p, r in text]
    prefix = "".join(dec(p) + dec(r) + "\n\n" for p, r, _ in shots)
    wrap = (lambda t: chat_prompt(meta, t)) if chat else (lambda t: t)
    stop = os.path.commonprefix([p for p, _ in text]).strip() if shots else ""
    return [(enc(wrap(prefix + p)), enc(r), []) for p, r in text], stop


def check_stream(data_dir, split, vocab_size):
    """The number of tokens of a split's token stream, {split}.bin (uint16 ids, no header), checked once
    when it is opened: ValueError, in one line, when it is missing, is not a whole number of uint16s, or
    holds an id the vocabulary lacks (the model would index past its embedding, or learn garbage). The
    ids are scanned in chunks of 2**24 so that a multi-GB stream (OpenWebText) is never in memory at once."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: the dataset has no {split} split")
    if vocab_size > 2**16:
        raise ValueError(f"{os.path.join(data_dir, 'meta.pkl')} has vocab_size={vocab_size}: a uint16 .bin holds "
                         f"ids below 65536 only")
    size = os.path.getsize(path)
    if size % 2:
        raise ValueError(f"{path} has an odd number of bytes ({size}): it is not a stream of uint16 token ids")
    data = np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, dtype=np.uint16)
    for i in range(0, len(data), 2**24):
        top = int(data[i:i + 2**24].max())
        if top >= vocab_size:
            raise ValueError(f"{path} holds token id {top}, outside the vocabulary of {vocab_size} ids (meta.pkl)")
    return len(data)


def load_sft(data_dir, split, block_size, vocab_size):
    """The SFT records of a split, {split}_sft.pkl: a list of (prompt, response) id lists, or of
    (prompt, response, holes) for infilling, holes being positions in the prompt that are blanks (the
    prompt holds their answers; a sampler sees [MASK] there). Returned as triples (holes [] for pairs);
    records whose prompt leaves no room in block_size are dropped. ValueError, in one line, for a missing
    file or a record that breaks the contract (an id outside [0, vocab_size), a hole outside the prompt)."""
    path = os.path.join(data_dir, f"{split}_sft.pkl")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: the dataset has no {split} split")
    try:
        records = [(list(r[0]), list(r[1]), list(r[2]) if len(r) > 2 else []) for r in read_pickle(path)]
    except Exception as e:
        raise ValueError(f"{path} is not a list of (prompt, response[, holes]) id lists ({type(e).__name__}: {e}); "
                         f"prepare it again (python {data_dir}/prepare.py)")
    for k, (p, r, h) in enumerate(records):  # here, once, not as an index error deep in a forward
        for what, items, n, where in (("token", p + r, vocab_size, f"an id in [0, {vocab_size})"),
                                      ("hole", h, len(p), f"a position in its prompt of {len(p)} tokens")):
            bad = [i for i in items if not isinstance(i, (int, np.integer)) or not 0 <= i < n]
            if bad:
                raise ValueError(f"{path}: record {k} holds {what} {bad[0]!r}, not {where}")
    return [(p, r, h) for p, r, h in records if len(p) < block_size]


def load_data(dataset, block_size, prepare=True):
    """(meta, pairs) of a dataset for training at block_size: data/<dataset>/ or a folder given by path,
    with meta.pkl and either train.bin / val.bin (a token stream: pairs is None) or train_sft.pkl /
    val_sft.pkl (SFT records: pairs is {split: records}), every split checked (check_stream, load_sft).
    A dataset not prepared yet is prepared first by its prepare.py (prepare=False: say how, under torchrun).
    ValueError, in one line, for what is missing or broken."""
    data_dir = dataset_dir(dataset)
    if not any(os.path.exists(os.path.join(data_dir, f)) for f in ("val.bin", "val_sft.pkl")):
        script = os.path.join(data_dir, "prepare.py")
        if not os.path.exists(script):
            raise ValueError(f"unknown dataset {dataset!r}: no {os.path.relpath(script)}")
        if not prepare:
            raise ValueError(f"dataset {dataset!r} is not prepared; run python {os.path.relpath(script)} first")
        print(f"preparing {dataset} ...")
        if subprocess.run([sys.executable, script]).returncode:
            sys.exit(1)  # prepare.py has said why in one line
    meta = load_meta(data_dir)
    if not os.path.exists(os.path.join(data_dir, "train_sft.pkl")):
        for split in ("train", "val"):
            n = check_stream(data_dir, split, meta["vocab_size"])
            if n < block_size + 2:
                raise ValueError(f"the {split} split of {dataset} has {n} tokens, too few for --block_size={block_size}")
        return meta, None
    return meta, fitting({s: load_sft(data_dir, s, block_size, meta["vocab_size"]) for s in ("train", "val")},
                         dataset, block_size)


def fitting(pairs, dataset, block_size):
    """pairs ({split: SFT records}), ValueError unless both splits keep a record with room for a response."""
    if not pairs["train"] or not pairs["val"]:
        raise ValueError(f"no SFT record of {dataset} leaves room for a response in --block_size={block_size}")
    return pairs


def check_input(path):
    """For the prepare scripts, before a local input file is read whole: stop with one line when it is
    not a regular file (a device such as /dev/zero never ends, a FIFO may never open) or is larger than
    the memory available, which would swap the machine to a halt or get the script killed without a word."""
    if not os.path.isfile(path):  # symlinks followed: false for devices, FIFOs, sockets
        sys.exit(f"error: {path} is not a regular file")
    check_memory(os.path.getsize(path), f"reading {path} whole")


def as_pair(record, mask_id):
    """A record read as prompt -> response (what an autoregressive model is trained on): the prompt with
    its holes masked, and for an infilling record the whole clean prompt (then the response) as the answer."""
    p, r, holes = record
    if not holes:
        return p, r
    shown = list(p)
    for i in holes:
        shown[i] = mask_id
    return shown, p + r


def sft_rows(records, block_size, eos_id, generator=None, mask_id=None, causal=False):
    """SFT rows (n, T) and the positions that may be masked (n, T) bool, from (prompt, response, holes)
    records: the data contract of every SFT dataset.
    Diffusion (LLaDA): prompt + response + EOS padding; maskable are the holes, the response and its
    padding (the model learns where to stop), never the rest of the prompt. LLaDA pads a mini-batch to
    its longest row; T is drawn between that (+ one EOS) and block_size, so the model sees EOS tails of
    every length and stops wherever a sampling canvas ends.
    causal=True (AR): as_pair's prompt + answer + one EOS, padded with EOS to the longest row; 'maskable'
    marks the tokens that are scored as next-token targets: the answer and its EOS."""
    import torch  # here, not at the top: the prepare scripts use this file's writer without loading torch
    if causal:
        rows = [(p, (p + a + [eos_id])[:block_size]) for p, a in (as_pair(rec, mask_id) for rec in records)]
        T = max(len(row) for _, row in rows)
    else:
        rows = [(p, (p + r)[:block_size]) for p, r, _ in records]
        longest = min(max(len(row) for _, row in rows) + 1, block_size)
        T = int(torch.randint(longest, block_size + 1, (1,), generator=generator))
    x0 = torch.full((len(rows), T), eos_id, dtype=torch.long)
    maskable = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, ((p, row), rec) in enumerate(zip(rows, records)):
        x0[b, :len(row)] = torch.tensor(row)
        maskable[b, len(p):len(row) if causal else T] = True
        if not causal:
            maskable[b, rec[2]] = True  # the holes of an infilling record
    return x0, maskable
