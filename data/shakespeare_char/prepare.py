"""
Tiny Shakespeare at the character level: 65 characters + [MASK] (id 65).
    python data/shakespeare_char/prepare.py                  # downloads input.txt
    python data/shakespeare_char/prepare.py path/to/input.txt  # or uses a local copy
Writes train.bin / val.bin (uint16, 90/10 split) and meta.pkl next to this file, all or nothing.
"""

import os
import pickle
import sys
import urllib.request

import numpy as np

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", ".."))
from tokenizer import check_input, write_files  # noqa: E402  (the project's input check and all-or-nothing writer)


def read_input(here, argv):
    """The text from argv[1], from input.txt beside the script, or downloaded to it. A folder, a
    missing, binary (not UTF-8), empty, non-regular or too large file stops the script with one line before
    anything is written."""
    if len(argv) > 2:
        sys.exit(f"error: expected at most one input file, got {len(argv) - 1}")
    path = argv[1] if len(argv) > 1 else os.path.join(here, "input.txt")
    if os.path.isdir(path):
        sys.exit(f"error: {path} is a folder, not a text file")
    if not os.path.exists(path):
        if len(argv) > 1:
            sys.exit(f"error: {path} not found")
        try:
            with urllib.request.urlopen(URL, timeout=30) as r:
                text = r.read().decode("utf-8")
        except OSError as e:
            sys.exit(f"error: could not download {URL} ({e}); pass a local copy: "
                     f"python {os.path.relpath(here)}/prepare.py path/to/input.txt")
        write_files(os.path.dirname(path), {os.path.basename(path): text.encode("utf-8")})
    check_input(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError) as e:
        sys.exit(f"error: {path} is not readable UTF-8 text ({type(e).__name__})")
    if not text.strip() or "\0" in text:
        sys.exit(f"error: {path} is {'empty' if not text.strip() else 'binary (it holds NUL bytes)'}: nothing to prepare")
    return text


def prepare(text, folder):
    """Write train.bin / val.bin (90/10) and meta.pkl for `text` into `folder`; returns the meta."""
    chars = sorted(set(text))
    if len(chars) >= 2**16:  # the ids, [MASK] (len(chars)) included, are stored as uint16
        sys.exit(f"error: the text has {len(chars):,} distinct characters, more than the 65,535 that uint16 "
                 f"ids hold beside [MASK]")
    stoi = {c: i for i, c in enumerate(chars)}
    meta = dict(tokenizer="char", vocab_size=len(chars) + 1, mask_id=len(chars), eos_id=-1,
                stoi=stoi, itos={i: c for c, i in stoi.items()})
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    if n < 2 or len(ids) - n < 2:
        sys.exit(f"error: {len(text)} characters are too few to split into train and val")
    write_files(folder, {"train.bin": ids[:n].tobytes(), "val.bin": ids[n:].tobytes(), "meta.pkl": pickle.dumps(meta)})
    print(f"{len(text):,} characters, vocab {meta['vocab_size']} (incl. [MASK]); "
          f"train {n:,} tokens, val {len(ids) - n:,} tokens")
    return meta


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    prepare(read_input(here, sys.argv), here)
