"""
Tiny Shakespeare as prompt/response pairs that end with EOS: a small SFT-style task. Every speech
("NAME:\n<body>") gives one pair: the response is the body, the prompt the 32 characters before it
(the end of the previous speech and the speaker's name line). train.py pads each response with EOS
(to a random length up to the context; LLaDA pads to the mini-batch's longest), so the model learns
where to stop; at sampling time the EOS tail is what Fast-dLLM decodes in parallel and fast_sample.py
skips. Characters as in shakespeare_char (the same ids), + [MASK] (65) + [EOS] (66).
    python data/shakespeare_speech/prepare.py                    # downloads input.txt
    python data/shakespeare_speech/prepare.py path/to/input.txt  # or uses a local copy
Writes train_sft.pkl / val_sft.pkl (the first 90% of the speeches / the rest) and meta.pkl, all or nothing.
"""

import os
import pickle
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shakespeare_char"))
from prepare import read_input, write_files  # noqa: E402  (the same download-or-local-file logic and writer)

here = os.path.dirname(os.path.abspath(__file__))
PROMPT_LEN = 32


def pairs(text):
    """(prompt, response) strings: each speech body, after the PROMPT_LEN characters before it."""
    out = []
    for m in re.finditer(r"(?:^|\n\n)[A-Za-z][^\n:]*:\n(.+?)(?=\n\n|\n?$)", text, flags=re.S):
        b = m.start(1)
        if b >= PROMPT_LEN:
            out.append((text[b - PROMPT_LEN:b], m.group(1)))
    return out


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    text = read_input(here, sys.argv)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    mask_id, eos_id = len(chars), len(chars) + 1
    itos = {i: c for c, i in stoi.items()}
    itos[eos_id] = ""  # EOS is drawn as nothing (samples are cut at the first EOS anyway)
    meta = dict(tokenizer="char", vocab_size=len(chars) + 2, mask_id=mask_id, eos_id=eos_id, stoi=stoi, itos=itos)
    ps = pairs(text)
    n = int(0.9 * len(ps))
    if n < 1 or len(ps) - n < 1:
        sys.exit(f"error: found {len(ps)} speeches ('NAME:' lines after a blank line, each after {PROMPT_LEN} "
                 f"characters): too few for a train and a val split")
    files = {f"{split}_sft.pkl": pickle.dumps([([stoi[c] for c in p], [stoi[c] for c in r]) for p, r in part])
             for split, part in (("train", ps[:n]), ("val", ps[n:]))}
    write_files(here, {**files, "meta.pkl": pickle.dumps(meta)})
    lens = sorted(len(r) for _, r in ps)
    print(f"{len(ps):,} speeches (train {n:,}, val {len(ps) - n:,}), response length median {lens[len(lens) // 2]}, "
          f"max {lens[-1]}; vocab {meta['vocab_size']} (incl. [MASK] {mask_id} and [EOS] {eos_id})")
