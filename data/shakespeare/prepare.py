"""
Tiny Shakespeare with the GPT-2 BPE (tiktoken): 50257 tokens + [MASK] (id 50257); EOS is
<|endoftext|> (50256).
    python data/shakespeare/prepare.py                  # downloads input.txt
    python data/shakespeare/prepare.py path/to/input.txt  # or uses a local copy
tiktoken fetches the BPE files once; offline, point TIKTOKEN_CACHE_DIR at a cache that has them.
Writes train.bin / val.bin (uint16, 90/10 split) and meta.pkl next to this file, all or nothing.
"""

import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shakespeare_char"))
from prepare import read_input, write_files  # noqa: E402  (the same download-or-local-file logic and writer)

here = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    text = read_input(here, sys.argv)
    import tiktoken
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        sys.exit(f"error: tiktoken could not load the gpt2 BPE ({type(e).__name__}); offline, set "
                 f"TIKTOKEN_CACHE_DIR to a folder that holds it")
    n_chars = int(0.9 * len(text))
    train_ids = np.array(enc.encode_ordinary(text[:n_chars]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[n_chars:]), dtype=np.uint16)
    if len(train_ids) < 2 or len(val_ids) < 2:
        sys.exit(f"error: {len(text)} characters are too few to split into train and val")
    meta = dict(tokenizer="gpt2", vocab_size=enc.n_vocab + 1, mask_id=enc.n_vocab, eos_id=enc.eot_token)
    write_files(here, {"train.bin": train_ids.tobytes(), "val.bin": val_ids.tobytes(), "meta.pkl": pickle.dumps(meta)})
    print(f"{len(text):,} characters, vocab {meta['vocab_size']} (incl. [MASK]); "
          f"train {len(train_ids):,} tokens, val {len(val_ids):,} tokens")
