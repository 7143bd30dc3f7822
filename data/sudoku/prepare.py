"""
Sudoku puzzles with checkable answers, as infilling records for SFT. Each puzzle has exactly one
solution, and every blank can be deduced step by step with the two simplest rules ("naked single":
a cell has one digit left; "hidden single": a digit has one cell left in a row, column or box).
    python data/sudoku/prepare.py                                  # 100,000 / 500 / 1,000 puzzles, 45 blanks (80 s)
    python data/sudoku/prepare.py --n_train=1000 --blanks=40-50 --seed=1
Options: --n_train --n_val --n_test (counts), --blanks (B or a range LO-HI, drawn per puzzle), --seed.
A record is (solution, [], holes): the 81 digits of the solved grid, row by row, as ids of '1'..'9'
(0..8), no separate response, and the sorted positions of the puzzle's blank cells, which the
trainer and the sampler mask. The vocabulary: '1'..'9' + [MASK] (9) + [EOS] (10).
Writes train_sft.pkl / val_sft.pkl / test_sft.pkl (no puzzle in two of them) and meta.pkl.

How: random full grids (a random fill, fewest candidates first, many grids at once), then cells are
blanked in a random order, keeping a blank only if the puzzle is still solved by singles alone,
until it has `blanks` blanks (a grid that gets stuck earlier is dropped). Singles are forced moves,
so a puzzle they solve has one solution: uniqueness needs no search. Grids are 9-bit masks of
digits in numpy arrays, and a whole batch of puzzles moves in lockstep: 100,000 puzzles in about 80 s on one core.
"""

import os
import pickle
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", ".."))
from tokenizer import write_files  # noqa: E402  (the project's all-or-nothing writer)

DEFAULTS = dict(n_train=100000, n_val=500, n_test=1000, blanks="45", seed=1337)
BATCH = 1000  # puzzles generated together: numpy's per-call cost is shared, memory stays small
MAX_BLANKS = 58  # greedy blanking with singles rarely gets past this many blanks

# the board: cells 0..80 row by row; 27 units (9 rows, 9 columns, 9 boxes) of 9 cells each
ROW, COL = np.divmod(np.arange(81), 9)
BOX = ROW // 3 * 3 + COL // 3
UNITS = np.array([np.flatnonzero(k == u) for k in (ROW, COL, BOX) for u in range(9)])  # (27, 9)
ROW_U, COL_U, BOX_U = ROW, 9 + COL, 18 + BOX  # the three units of each cell
# digits as bits: digit d (1..9) is bit d-1 of a 9-bit mask; 0 (a blank) has no bit
BIT = np.array([0] + [1 << d for d in range(9)], dtype=np.int16)
POPCOUNT = np.array([bin(m).count("1") for m in range(512)], dtype=np.int8)
DIGIT = np.zeros(512, dtype=np.int8)  # a one-bit mask -> its digit; any other mask -> 0 (undecided)
DIGIT[BIT[1:]] = np.arange(1, 10)


def candidates(grids):
    """(B, 81) digits, 0 = blank -> (B, 81) masks of the digits still allowed in each blank (0 where filled)."""
    used = np.bitwise_or.reduce(BIT[grids][:, UNITS], axis=2)  # (B, 27): the digits present in each unit
    seen = used[:, ROW_U] | used[:, COL_U] | used[:, BOX_U]
    return np.where(grids == 0, ~seen & 511, 0).astype(np.int16)


def solve_singles(grids):
    """Fill the blanks (0) of one grid (81,) or a batch (B, 81) with naked and hidden singles until no
    rule applies; returns the filled grid(s), where a blank no rule reached is still 0. Each fill is
    forced, so for a puzzle that has a solution the filled digits are that solution's: no zeros left
    means the solution is unique. (A puzzle without one can come out invalid: see is_valid_grid.)"""
    g = np.array(grids, dtype=np.int8)
    one = g.ndim == 1
    g = g.reshape(-1, 81)
    todo = np.arange(len(g))  # the puzzles still changing: finished ones drop out of the loop
    while len(todo):
        cand = candidates(g[todo])
        # hidden singles: per unit, the digits allowed in exactly one of its cells
        cu = cand[:, UNITS]  # (b, 27, 9)
        once, twice = np.zeros_like(cu[:, :, 0]), np.zeros_like(cu[:, :, 0])
        for i in range(9):
            twice |= once & cu[:, :, i]
            once |= cu[:, :, i]
        only = once & ~twice
        hidden = cand & (only[:, ROW_U] | only[:, COL_U] | only[:, BOX_U])
        new = DIGIT[np.where(POPCOUNT[cand] == 1, cand, hidden)]  # naked single, else hidden single
        changed = (new > 0).any(axis=1)
        g[todo] += new  # new is 0 wherever a cell is filled already or undecided
        todo = todo[changed]
    return g[0] if one else g


def is_valid_grid(grid):
    """Whether a full grid (81,) holds each digit 1..9 once in every row, column and box (a batch (B, 81)
    gives a (B,) bool array)."""
    g = np.asarray(grid)
    ok = ((g >= 1) & (g <= 9)).all(axis=-1)
    full = np.bitwise_or.reduce(BIT[np.clip(g, 0, 9)][..., UNITS], axis=-1) == 511  # 9 cells, 9 digits
    return ok & full.all(axis=-1) if g.ndim > 1 else bool(ok and full.all())


def random_grids(rng, n):
    """Up to n random full grids, (m, 81) int8: each step fills, in every grid, a blank with the fewest
    candidates (ties at random) with a random candidate. No backtracking: the grids that reach a blank
    with no candidate (about 4 in 10) are dropped, which is cheaper. Any valid grid can come out (a
    permuted fixed pattern would give grids of one family only, with regularities a model could learn
    instead of the rules)."""
    g = np.zeros((n, 81), dtype=np.int8)
    alive = np.ones(n, dtype=bool)
    rows = np.arange(n)
    for _ in range(81):
        cand = candidates(g)
        count = np.where(g == 0, POPCOUNT[cand], 10)
        cell = np.argmin(count + rng.random((n, 81)), axis=1)
        c = cand[rows, cell]
        alive &= c > 0
        allowed = (c[:, None] >> np.arange(9)) & 1
        g[rows, cell] = np.argmax(allowed * (rng.random((n, 9)) + 0.1), axis=1) + 1
    return g[alive & is_valid_grid(g)]


def remove_cells(rng, solutions, target):
    """Blank cells of each solution in its own random order, keeping a blank only if solve_singles still
    fills the whole puzzle, until target (B,) blanks. Returns the puzzles and which reached target.
    (A rejected cell stays rejected: blanking more cells never makes singles stronger.)"""
    puzzles = solutions.copy()
    order = np.argsort(rng.random(puzzles.shape), axis=1)
    blanks = np.zeros(len(puzzles), dtype=int)
    for step in range(81):
        todo = np.flatnonzero((blanks < target) & (blanks + 81 - step >= target))  # can still get there
        if len(todo) == 0:
            break
        trial = puzzles[todo]
        trial[np.arange(len(todo)), order[todo, step]] = 0
        ok = (solve_singles(trial) > 0).all(axis=1)
        puzzles[todo[ok]] = trial[ok]
        blanks[todo[ok]] += 1
    return puzzles, blanks == target


def make_puzzles(rng, n, blanks):
    """n puzzles: (solutions, puzzles), both (n, 81) int8, the puzzles with 0 at their blanks; blanks is
    a count or a (lo, hi) range, drawn per puzzle. ValueError if singles-only puzzles that empty are too
    rare to find."""
    lo, hi = (blanks, blanks) if np.isscalar(blanks) else blanks
    sols, puzs, got, tried = [], [], 0, 0
    while got < n:
        if tried >= 20 * BATCH and got < tried // 100:
            raise ValueError(f"fewer than 1% of grids give a puzzle with {lo}-{hi} blanks that singles solve")
        s = random_grids(rng, min(BATCH, 2 * (n - got) + 16))  # 2x: some grids fail, some get stuck
        p, ok = remove_cells(rng, s, rng.integers(lo, hi + 1, len(s)))
        sols.append(s[ok])
        puzs.append(p[ok])
        got, tried = got + ok.sum(), tried + len(s)
    return np.concatenate(sols)[:n], np.concatenate(puzs)[:n]


def make_puzzle(rng, blanks):
    """One puzzle: (solution, puzzle), each (81,) int8, the puzzle with 0 at its blanks."""
    s, p = make_puzzles(rng, 1, blanks)
    return s[0], p[0]


def format_grid(cells):
    """The grid as 9 lines of text, boxes apart: digits (ints or characters), blanks (0) drawn as '.'."""
    ch = [str(c) if c not in (0, "0") else "." for c in cells]
    return "\n".join(" ".join("".join(ch[r * 9 + c:r * 9 + c + 3]) for c in (0, 3, 6)) for r in range(9))


# --- shared with data/sort/prepare.py: the command line and the vocabulary ---

def parse_args(argv, defaults):
    """--key=value overrides of the defaults, as strings; anything else stops with one line."""
    cfg = dict(defaults)
    for arg in argv:
        key, eq, val = arg[2:].partition("=")
        if not arg.startswith("--") or not eq or key not in defaults:
            sys.exit(f"error: unknown argument {arg!r} (options: {' '.join(f'--{k}={v}' for k, v in defaults.items())})")
        cfg[key] = val
    return cfg


def to_int(cfg, key, lo=0, hi=None):
    """cfg[key] as an int in [lo, hi], else a one-line exit."""
    try:
        v = int(str(cfg[key]))
        if v < lo or (hi is not None and v > hi):
            raise ValueError
        return v
    except ValueError:
        sys.exit(f"error: --{key} must be an integer {f'from {lo} to {hi}' if hi is not None else f'>= {lo}'}, got {cfg[key]!r}")


def char_meta(chars, task):
    """A character vocabulary like shakespeare_speech's: sorted chars, then [MASK], then [EOS]."""
    chars = sorted(chars)
    stoi = {c: i for i, c in enumerate(chars)}
    mask_id, eos_id = len(chars), len(chars) + 1
    itos = {i: c for c, i in stoi.items()}
    itos[eos_id] = ""  # EOS is drawn as nothing
    return dict(tokenizer="char", vocab_size=len(chars) + 2, mask_id=mask_id, eos_id=eos_id,
                stoi=stoi, itos=itos, task=task)


def write_splits(folder, meta, records, counts):
    """meta.pkl and {split}_sft.pkl, the records cut in order into counts {split: n}, all or nothing."""
    files, start = {"meta.pkl": pickle.dumps(meta)}, 0
    for split, n in counts.items():
        files[f"{split}_sft.pkl"] = pickle.dumps(records[start:start + n])
        start += n
    write_files(folder, files)


def split_counts(cfg):
    """{split: count} from --n_train, --n_val, --n_test."""
    return {s: to_int(cfg, f"n_{s}") for s in ("train", "val", "test")}


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    cfg = parse_args(sys.argv[1:], DEFAULTS)
    counts, seed = split_counts(cfg), to_int(cfg, "seed")
    lo, dash, hi = str(cfg["blanks"]).partition("-")
    try:  # B, or a range LO-HI
        lo, hi = int(lo), int(hi if dash else lo)
        if not 1 <= lo <= hi <= MAX_BLANKS:
            raise ValueError
    except ValueError:
        sys.exit(f"error: --blanks must be B or LO-HI with 1 <= LO <= HI <= {MAX_BLANKS}, got {cfg['blanks']!r}")
    from tqdm import tqdm

    t0 = time.time()
    rng = np.random.default_rng(seed)
    total = sum(counts.values())
    sols, puzs, seen = [], [], set()
    with tqdm(total=total, desc="puzzles", unit="puzzle") as bar:
        while len(sols) < total:
            try:
                s, p = make_puzzles(rng, min(BATCH, total - len(sols)), (lo, hi))
            except ValueError as e:
                sys.exit(f"error: --blanks={cfg['blanks']}: {e}")
            for si, pi in zip(s, p):
                key = (si.tobytes(), (pi == 0).tobytes())  # a puzzle is its solution and its blanks
                if key not in seen and len(sols) < total:  # one puzzle in one split only
                    seen.add(key)
                    sols.append(si)
                    puzs.append(pi)
                    bar.update(1)
    sols, puzs = np.array(sols, dtype=np.int8).reshape(-1, 81), np.array(puzs, dtype=np.int8).reshape(-1, 81)

    # check everything before anything is written
    nblank = (puzs == 0).sum(axis=1)
    if not (is_valid_grid(sols).all() and (solve_singles(puzs) == sols).all() and (puzs[puzs > 0] == sols[puzs > 0]).all()
            and ((nblank >= lo) & (nblank <= hi)).all() and len(seen) == total):
        raise RuntimeError("a generated puzzle failed its check")
    meta = char_meta("123456789", "sudoku")
    records = [([meta["stoi"][str(d)] for d in s], [], np.flatnonzero(p == 0).tolist()) for s, p in zip(sols, puzs)]
    write_splits(here, meta, records, counts)

    if total:
        print("\n".join(f"{a}    {b}" for a, b in zip(format_grid(puzs[0]).splitlines(), format_grid(sols[0]).splitlines())))
    blanks = f"{lo}" if lo == hi else f"{lo}-{hi} (mean {nblank.mean():.1f})" if total else f"{lo}-{hi}"
    print(f"{total:,} puzzles (train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,}), {blanks} blanks, "
          f"each solved by singles alone (so unique); vocab {meta['vocab_size']} (incl. [MASK] {meta['mask_id']} and "
          f"[EOS] {meta['eos_id']}); {time.time() - t0:.1f} s")
