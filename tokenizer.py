"""
Text <-> token ids for a prepared dataset, from its meta.pkl: characters (shakespeare_char) or
GPT-2 BPE via tiktoken (shakespeare), each with a [MASK] id appended to the vocabulary.
"""

import os
import pickle

MASK_GLYPH = "_"  # how a [MASK] is drawn when a canvas is decoded


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.pkl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (python {data_dir}/prepare.py)")
    with open(path, "rb") as f:
        return pickle.load(f)


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
    else:
        import tiktoken
        enc = tiktoken.get_encoding(meta["tokenizer"])

        def encode(s):
            return enc.encode(s, allowed_special={"<|endoftext|>"})

        def decode(ids):
            out, run = [], []
            for i in ids:  # decode runs of real tokens together so multi-token characters survive
                if i == mask_id:
                    out.append(enc.decode(run) + MASK_GLYPH)
                    run = []
                else:
                    run.append(i)
            return "".join(out) + enc.decode(run)
    return encode, decode
