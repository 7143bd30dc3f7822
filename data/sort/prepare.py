"""
Sorting lists of two-digit numbers, as prompt/response pairs for SFT: a task whose answer is checked
by comparing it with sorted(). The prompt is N numbers from 00..99 (uniform, repeats allowed), each
zero-padded, one space apart, ending with a newline; the response is the same numbers in ascending
order, in the same format without the newline:
    prompt   "47 03 99 ... 12\n"   (3N characters)
    response "03 12 ... 99"        (3N - 1 characters: 128 for N = 43, the default)
    python data/sort/prepare.py                                 # 100,000 / 500 / 1,000 lists of 43
    python data/sort/prepare.py --n=16 --n_train=5000 --seed=1
Options: --n_train --n_val --n_test (counts), --n (numbers per list), --seed. The vocabulary: '\n',
' ', '0'..'9' (ids 0..11) + [MASK] (12) + [EOS] (13). Writes train_sft.pkl / val_sft.pkl /
test_sft.pkl (no prompt in two of them) and meta.pkl.
"""

import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "sudoku"))
from prepare import char_meta, parse_args, split_counts, to_int, write_splits  # noqa: E402  (same CLI and writer)

DEFAULTS = dict(n_train=100000, n_val=500, n_test=1000, n=43, seed=1337)


def as_text(numbers, end=""):
    return " ".join(f"{x:02d}" for x in numbers) + end


def make_lists(rng, total, n):
    """total distinct lists of n numbers from 0..99, (total, n) int: a list is drawn again if it repeats."""
    out, seen = [], set()
    while len(out) < total:
        for row in rng.integers(0, 100, size=(total - len(out), n)):
            if row.tobytes() not in seen:
                seen.add(row.tobytes())
                out.append(row)
    return np.array(out, dtype=np.int64).reshape(total, n)


if __name__ == "__main__":
    cfg = parse_args(sys.argv[1:], DEFAULTS)
    counts, n, seed = split_counts(cfg), to_int(cfg, "n", 1), to_int(cfg, "seed")
    total = sum(counts.values())
    if n < 4 and total > 100 ** n // 2:  # drawing nearly every possible list again and again would crawl
        sys.exit(f"error: there are only {100 ** n:,} lists of {n} numbers: ask for at most {100 ** n // 2:,}")
    t0 = time.time()
    lists = make_lists(np.random.default_rng(seed), total, n)
    meta = char_meta("\n 0123456789", "sort")
    stoi = meta["stoi"]
    texts = [(as_text(x, "\n"), as_text(sorted(x))) for x in lists]
    records = [([stoi[c] for c in p], [stoi[c] for c in r]) for p, r in texts]

    # check everything before anything is written
    if not (len({p for p, _ in texts}) == total and all(len(p) == 3 * n and len(r) == 3 * n - 1 for p, r in texts)
            and all(sorted(p.split()) == r.split() for p, r in texts)):
        raise RuntimeError("a generated list failed its check")
    write_splits(here, meta, records, counts)

    if total:
        print(f"prompt:   {texts[0][0][:60]}...\nresponse: {texts[0][1][:60]}...")
    print(f"{total:,} lists (train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,}) of {n} numbers: "
          f"prompt {3 * n} characters, response {3 * n - 1}; vocab {meta['vocab_size']} (incl. [MASK] {meta['mask_id']} "
          f"and [EOS] {meta['eos_id']}); {time.time() - t0:.1f} s")
