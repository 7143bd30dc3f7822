"""
Running a cellular automaton, as prompt/response pairs for SFT: a task whose answer is checked cell by
cell against the rule, and whose every cell depends on the three cells above it, so the answer has an
order (row after row) but each row can be written at once. The prompt is a row of W cells ('#' alive,
'.' dead) and a newline; the response is the next R generations of Rule 110 (Wolfram's rule that is
Turing complete), cells beyond the edges dead, each row ending with a newline:
    prompt   "##.#.....#..###\n"              (W + 1 characters)
    response "####....##.##.#\n" ... 8 rows   (R (W + 1) characters: 128 for W = 15, R = 8, the default)
    python data/automaton/prepare.py                             # 30,000 / 500 / 1,000 of the 32,768 rows
    python data/automaton/prepare.py --width=31 --rows=4 --rule=30 --n_train=5000
Options: --n_train --n_val --n_test (counts), --width (W), --rows (R), --rule (0..255), --seed. The
vocabulary: '\n', '#', '.' (ids 0..2) + [MASK] (3) + [EOS] (4). Writes train_sft.pkl / val_sft.pkl /
test_sft.pkl (no first row in two of them) and meta.pkl.
"""

import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "sudoku"))
from prepare import char_meta, parse_args, split_counts, to_int, write_splits  # noqa: E402  (same CLI and writer)

DEFAULTS = dict(n_train=30000, n_val=500, n_test=1000, width=15, rows=8, rule=110, seed=1337)


def step(cells, rule):
    """One generation: cell i becomes bit (4 left + 2 self + right) of rule, outside cells dead. (n, W) 0/1."""
    p = np.pad(cells, ((0, 0), (1, 1)))
    return (rule >> (4 * p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:])) & 1


def as_text(cells):
    return "".join(".#"[c] for c in cells) + "\n"


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    cfg = parse_args(sys.argv[1:], DEFAULTS)
    counts, seed = split_counts(cfg), to_int(cfg, "seed")
    W, R, rule = to_int(cfg, "width", 1, 62), to_int(cfg, "rows", 1), to_int(cfg, "rule", 0, 255)
    total = sum(counts.values())
    if total > 2 ** W:
        sys.exit(f"error: there are only {2 ** W:,} rows of {W} cells: ask for at most that many records")
    t0 = time.time()
    starts = np.random.default_rng(seed).choice(2 ** W, size=total, replace=False)  # distinct first rows
    history = [(starts[:, None] >> np.arange(W - 1, -1, -1)) & 1]  # (total, W) per generation
    for _ in range(R):
        history.append(step(history[-1], rule))
    meta = char_meta("\n#.", "automaton")
    stoi = meta["stoi"]
    texts = [(as_text(history[0][i]), "".join(as_text(h[i]) for h in history[1:])) for i in range(total)]
    records = [([stoi[c] for c in p], [stoi[c] for c in r]) for p, r in texts]

    # check everything before anything is written: distinct prompts, and every cell by the rule's table read
    # on the text (an independent path from step()'s arithmetic)
    table = {a + b + c: ".#"[rule >> (4 * (a == "#") + 2 * (b == "#") + (c == "#")) & 1]
             for a in ".#" for b in ".#" for c in ".#"}
    def follows(prompt, response):  # noqa: E306
        rows = [prompt] + [response[i:i + W + 1] for i in range(0, len(response), W + 1)]
        return len(rows) == R + 1 and all(b == "".join(table[("." + a[:W] + ".")[i:i + 3]] for i in range(W)) + "\n"
                                          for a, b in zip(rows, rows[1:]))
    if not (len({p for p, _ in texts}) == total and all(follows(p, r) for p, r in texts)):
        raise RuntimeError("a generated record failed its check")
    write_splits(here, meta, records, counts)

    if total:
        print(texts[0][0] + texts[0][1], end="")
    print(f"{total:,} records (train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,}): rule {rule}, "
          f"{W} cells, {R} generations: prompt {W + 1} characters, response {R * (W + 1)}; vocab {meta['vocab_size']} "
          f"(incl. [MASK] {meta['mask_id']} and [EOS] {meta['eos_id']}); {time.time() - t0:.1f} s")
