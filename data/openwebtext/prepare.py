"""
OpenWebText with the GPT-2 BPE, nanoGPT's route (needs the internet and the optional `datasets`
package, pip install datasets; about 54 GB of Hugging Face cache, 9B train tokens, 17 GB train.bin):
    python data/openwebtext/prepare.py [--out=FOLDER] [--workers=N] [--val_fraction=0.0005] [--seed=2357]
As nanoGPT: a 0.0005 val split of the documents (seed 2357, so the same split), each document's
tokens (encode_ordinary) followed by one EOT (50256), train.bin / val.bin (uint16) and meta.pkl
beside this script (or into --out), written through .tmp files renamed at the end (all or nothing).
Offline, or for your own text, pass local .txt / .jsonl files or folders instead; they are prepared
as data/corpus/prepare.py does (see its --help), into this folder:
    python data/openwebtext/prepare.py PATH [PATH ...] [--out=FOLDER] [--workers=N] [--val_fraction=0.0005] [--seed=2357]
"""

import os
import pickle
import sys

import numpy as np
from tqdm import tqdm

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "corpus"))
from prepare import DEFAULTS, encoder, main, parse_args  # noqa: E402  (data/corpus/prepare.py: the local route)

OWT_DEFAULTS = dict(DEFAULTS, out=here, seed=2357)  # nanoGPT's seed: the same val documents as its val.bin


def process(example):
    """One document -> its ids and one EOT (run by datasets.map in its worker processes)."""
    enc = encoder()
    ids = enc.encode_ordinary(example["text"])
    ids.append(enc.eot_token)
    return {"ids": ids, "len": len(ids)}


def openwebtext(opts):
    try:
        from datasets import load_dataset  # an optional extra: only this route needs it
    except ImportError:
        sys.exit("error: the openwebtext download needs the `datasets` package: pip install datasets "
                 "(or pass local .txt / .jsonl files: python data/openwebtext/prepare.py PATH ...)")
    workers, out = opts["workers"], opts["out"]
    try:
        dataset = load_dataset("openwebtext", num_proc=workers)
    except Exception as e:  # offline, or a `datasets` release that cannot read it
        first_line = (str(e).splitlines() or [""])[0]
        sys.exit(f"error: could not load openwebtext ({type(e).__name__}: {first_line}); "
                 f"pass local .txt / .jsonl files instead")
    split = dataset["train"].train_test_split(test_size=opts["val_fraction"], seed=opts["seed"], shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=workers)
    enc = encoder()
    meta = dict(tokenizer="gpt2", vocab_size=enc.n_vocab + 1, mask_id=enc.n_vocab, eos_id=enc.eot_token)
    # train.bin (17 GB) does not fit in memory as tokenizer.write_files needs: each file is written
    # through a memmap, shard by shard, to a .tmp name, and all are renamed into place at the end
    os.makedirs(out, exist_ok=True)
    tmp = {name: os.path.join(out, name + ".tmp") for name in ("train.bin", "val.bin", "meta.pkl")}
    try:
        for name, dset in tokenized.items():
            n_tokens = int(np.sum(dset["len"], dtype=np.uint64))
            arr = np.memmap(tmp[f"{name}.bin"], dtype=np.uint16, mode="w+", shape=(n_tokens,))
            idx, n_shards = 0, min(1024, len(dset))  # a shard must hold at least one document
            for i in tqdm(range(n_shards), desc=f"writing {name}.bin"):
                shard = dset.shard(num_shards=n_shards, index=i, contiguous=True).with_format("numpy")
                batch = np.concatenate(shard["ids"])
                arr[idx:idx + len(batch)] = batch
                idx += len(batch)
            arr.flush()
            print(f"{name}: {len(dset):,} documents, {idx:,} tokens")
        with open(tmp["meta.pkl"], "wb") as f:
            pickle.dump(meta, f)
    except BaseException:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for name, path in tmp.items():
        os.replace(path, os.path.join(out, name))


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    if {"-h", "--help"} & set(sys.argv):
        print(__doc__)
        sys.exit(0)
    paths, opts = parse_args(sys.argv[1:], OWT_DEFAULTS)
    if paths:
        main(sys.argv[1:], OWT_DEFAULTS)  # local files: the corpus route, written here
    else:
        openwebtext(opts)
