import importlib.util
import os
import pickle
import re
import shutil

import numpy as np
import pytest

from conftest import ROOT, copy_imports, run
from tokenizer import get_codec

spec = importlib.util.spec_from_file_location("prepare_sudoku", os.path.join(ROOT, "data", "sudoku", "prepare.py"))
sudoku = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sudoku)


def allowed(g, i):
    """The digits that cell i of grid g (a list, 0 = blank) could take."""
    r, c = divmod(i, 9)
    br, bc = r // 3 * 3, c // 3 * 3
    used = set(g[r * 9:r * 9 + 9]) | set(g[c::9]) | {g[(br + a) * 9 + bc + b] for a in range(3) for b in range(3)}
    return [d for d in range(1, 10) if d not in used]


def count_solutions(grid, limit=2):
    """An independent check of the generator: plain backtracking (fewest candidates first) that counts
    a puzzle's solutions, up to limit; returns (count, the first solution found)."""
    g, found = list(grid), []

    def search():  # appends the solutions below the current grid to found, until there are limit
        blanks = [(len(a), i, a) for i in range(81) if g[i] == 0 for a in [allowed(g, i)]]
        if not blanks:
            found.append(list(g))
            return
        _, i, options = min(blanks)
        for d in options:
            if len(found) < limit:
                g[i] = d
                search()
                g[i] = 0

    search()
    return len(found), (found[0] if found else None)


def naked_singles(grid):
    """The grid after filling every cell that has one digit left, again and again (no hidden singles)."""
    g = list(grid)
    while any(g[i] == 0 and len(allowed(g, i)) == 1 for i in range(81)):
        for i in range(81):
            if g[i] == 0 and len(a := allowed(g, i)) == 1:
                g[i] = a[0]
    return g


def valid(grid):
    """Independent of the module's is_valid_grid: each row, column and box holds 1..9."""
    rows = [grid[r * 9:r * 9 + 9] for r in range(9)]
    cols = [grid[c::9] for c in range(9)]
    boxes = [[grid[(br + a) * 9 + bc + b] for a in range(3) for b in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
    return all(sorted(u) == list(range(1, 10)) for u in rows + cols + boxes)


def test_counter_sees_several_solutions():
    assert count_solutions([0] * 81)[0] == 2  # the checker below can fail: an empty grid is not unique
    s, p = sudoku.make_puzzle(np.random.default_rng(0), 30)
    p = p.copy()
    p[:18] = 0  # rows 0 and 1 empty: the solution with them swapped is a second one
    assert count_solutions(p)[0] == 2


def test_sudoku_puzzles_unique():
    sols, puzs = sudoku.make_puzzles(np.random.default_rng(0), 30, 45)
    assert sols.shape == puzs.shape == (30, 81)
    for s, p in zip(sols.tolist(), puzs.tolist()):
        assert valid(s)
        assert sum(d == 0 for d in p) == 45
        assert all(d in (0, sd) for d, sd in zip(p, s))  # the givens are the solution's digits
        n, first = count_solutions(p)
        assert n == 1 and first == s
        assert sudoku.solve_singles(p).tolist() == s  # and singles alone reach it
    stuck = sum(0 in naked_singles(p) for p in puzs.tolist())
    assert 0 < stuck < 30  # some puzzles need hidden singles (9 of these 30), most do not
    again = sudoku.make_puzzles(np.random.default_rng(0), 30, 45)
    assert (again[0] == sols).all() and (again[1] == puzs).all()  # seeded


def test_sudoku_helpers():
    s, p = sudoku.make_puzzle(np.random.default_rng(1), (40, 50))
    assert 40 <= (p == 0).sum() <= 50 and sudoku.is_valid_grid(s) and not sudoku.is_valid_grid(p)
    bad = s.copy()
    bad[[0, 1]] = bad[[1, 0]]  # two digits swapped in a row: columns and boxes break
    assert not sudoku.is_valid_grid(bad) and sudoku.is_valid_grid(np.stack([s, bad])).tolist() == [True, False]
    assert (sudoku.solve_singles(np.zeros(81, dtype=int)) == 0).all()  # singles find nothing in an empty grid
    text = sudoku.format_grid(p)
    lines = text.splitlines()
    assert len(lines) == 9 and all(re.fullmatch(r"[1-9.]{3} [1-9.]{3} [1-9.]{3}", ln) for ln in lines)
    assert text.replace(" ", "").replace("\n", "") == "".join(str(d) if d else "." for d in p)


def prepare(tmp_path, name, *args):
    """Run data/<name>/prepare.py from a copy of data/ (the repo stays clean); (meta, [train, val, test])."""
    shutil.copytree(os.path.join(ROOT, "data"), tmp_path / "data",
                    ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.tmp", "input.txt"), dirs_exist_ok=True)
    copy_imports(tmp_path)
    r = run(str(tmp_path / "data" / name / "prepare.py"), *args, timeout=60)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "data" / name
    assert sorted(os.listdir(folder)) == ["meta.pkl", "prepare.py", "test_sft.pkl", "train_sft.pkl", "val_sft.pkl"]
    load = lambda f: pickle.load(open(folder / f, "rb"))  # noqa: E731
    return load("meta.pkl"), [load(f"{s}_sft.pkl") for s in ("train", "val", "test")]


def check_meta(meta, chars, task):
    n = len(chars)
    assert meta["tokenizer"] == "char" and meta["task"] == task
    assert meta["stoi"] == {c: i for i, c in enumerate(sorted(chars))}
    assert (meta["mask_id"], meta["eos_id"], meta["vocab_size"]) == (n, n + 1, n + 2)
    assert all(meta["itos"][i] == c for c, i in meta["stoi"].items()) and meta["itos"][n + 1] == ""


def is_ids(x, vocab):
    return type(x) is list and all(type(i) is int and 0 <= i < vocab for i in x)


@pytest.mark.slow
def test_sudoku_files(tmp_path):
    meta, splits = prepare(tmp_path, "sudoku", "--n_train=40", "--n_val=8", "--n_test=8", "--blanks=40-50", "--seed=3")
    check_meta(meta, "123456789", "sudoku")
    _, decode = get_codec(meta)
    assert [len(s) for s in splits] == [40, 8, 8]
    keys = [{(tuple(sol), tuple(holes)) for sol, _, holes in s} for s in splits]
    assert sum(map(len, keys)) == 56 and len(set.union(*keys)) == 56  # no puzzle twice, none in two splits
    for sol, response, holes in sum(splits, []):
        assert is_ids(sol, 9) and response == [] and type(holes) is list and all(type(h) is int for h in holes)
        assert len(sol) == 81 and holes == sorted(set(holes)) and 40 <= len(holes) <= 50 and 0 <= holes[0] and holes[-1] < 81
        grid = [int(c) for c in decode(sol)]  # ids are the digits '1'..'9'
        assert valid(grid)
        assert count_solutions([0 if i in holes else d for i, d in enumerate(grid)]) == (1, grid)


RULE_110 = {"###": ".", "##.": "#", "#.#": "#", "#..": ".", ".##": "#", ".#.": "#", "..#": "#", "...": "."}  # Wolfram's table


def next_row(row):
    """An independent Rule 110 step on a row of '#'/'.', the cells beyond the edges dead."""
    padded = "." + row + "."
    return "".join(RULE_110[padded[i:i + 3]] for i in range(len(row)))


@pytest.mark.slow
def test_automaton_files(tmp_path):
    meta, splits = prepare(tmp_path, "automaton", "--n_train=60", "--n_val=10", "--n_test=10", "--seed=3")
    check_meta(meta, "\n#.", "automaton")
    _, decode = get_codec(meta)
    assert [len(s) for s in splits] == [60, 10, 10]
    prompts = [{tuple(p) for p, _ in s} for s in splits]
    assert len(set.union(*prompts)) == 80  # no first row twice, none in two splits
    for rec in sum(splits, []):
        assert type(rec) is tuple and len(rec) == 2 and is_ids(rec[0], 3) and is_ids(rec[1], 3)
        prompt, response = decode(rec[0]), decode(rec[1])
        assert re.fullmatch(r"[#.]{15}\n", prompt) and re.fullmatch(r"([#.]{15}\n){8}", response)
        rows = [prompt[:-1]] + response.splitlines()
        assert all(next_row(a) == b for a, b in zip(rows, rows[1:]))
        assert len(response) == 128  # the default: 8 generations of 15 cells, an answer of 128 tokens
    # every row of 4 cells once; another rule
    meta, splits = prepare(tmp_path / "small", "automaton", "--width=4", "--rows=2", "--rule=30", "--n_train=10",
                           "--n_val=3", "--n_test=3", "--seed=1")
    prompts = [decode(p) for s in splits for p, _ in s]
    assert sorted(prompts) == sorted(f"{i:04b}".translate(str.maketrans("01", ".#")) + "\n" for i in range(16))
    rule30 = {"###": ".", "##.": ".", "#.#": ".", "#..": "#", ".##": "#", ".#.": "#", "..#": "#", "...": "."}
    for p, r in sum(splits, []):
        rows = [decode(p)[:-1]] + decode(r).splitlines()
        assert all("".join(rule30[("." + a + ".")[i:i + 3]] for i in range(4)) == b for a, b in zip(rows, rows[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("script,arg", [("sudoku", "--blanks=abc"), ("sudoku", "--blanks=70"), ("sudoku", "--blanks=50-40"),
                                        ("sudoku", "--nope=1"), ("sudoku", "n_train=5"), ("automaton", "--width=0"),
                                        ("automaton", "--n_train=x"), ("automaton", "--rule=256"),
                                        ("automaton", "--width=4"), ("automaton", "--rows=two")])
def test_bad_argument_is_one_line(tmp_path, script, arg):
    for name in ("sudoku", "automaton"):  # a copy, should the script write anything; automaton's imports sudoku's
        shutil.copytree(os.path.join(ROOT, "data", name), tmp_path / "data" / name,
                        ignore=shutil.ignore_patterns("*.pkl", "*.tmp"))
    copy_imports(tmp_path)
    r = run(str(tmp_path / "data" / script / "prepare.py"), arg, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")
    assert not [f for f in os.listdir(tmp_path / "data" / script) if f.endswith((".pkl", ".tmp"))]  # nothing written


def test_write_is_all_or_nothing(tmp_path):
    from tokenizer import write_files
    (tmp_path / "meta.pkl").write_bytes(b"old")
    with pytest.raises(TypeError):  # the second file cannot be written: the first must not change either
        write_files(str(tmp_path), {"meta.pkl": b"new", "train_sft.pkl": "not bytes"})
    assert os.listdir(tmp_path) == ["meta.pkl"] and (tmp_path / "meta.pkl").read_bytes() == b"old"
    write_files(str(tmp_path), {"meta.pkl": b"new", "val.bin": b"1"})
    assert sorted(os.listdir(tmp_path)) == ["meta.pkl", "val.bin"] and (tmp_path / "meta.pkl").read_bytes() == b"new"


# -----------------------------------------------------------------------------
# The accuracy command (eval.py --mode=accuracy): a right answer scores 1, a wrong one 0, for every task

import torch  # noqa: E402

import eval as ev  # noqa: E402
from tokenizer import as_pair  # noqa: E402
from ar import AR  # noqa: E402
from diffusion import MDLM  # noqa: E402

SUDOKU_META = sudoku.char_meta("123456789", "sudoku")


def sudoku_record(seed=0):
    s, p = sudoku.make_puzzle(np.random.default_rng(seed), 45)
    return [int(d) - 1 for d in s], [], np.flatnonzero(p == 0).tolist()


def test_scores_of_hand_made_answers():
    rec = sudoku_record()
    sol = rec[0]
    wrong = list(sol)
    wrong[rec[2][0]] = (wrong[rec[2][0]] + 1) % 9  # one blank filled wrong
    assert ev.score([sol], [sol], [rec], SUDOKU_META) == dict(exact=1.0, cells=1.0, valid=1.0)
    got = ev.score([wrong], [sol], [rec], SUDOKU_META)
    assert got["exact"] == 0.0 and got["valid"] == 0.0 and got["cells"] == 44 / 45
    ca_meta = sudoku.char_meta("\n#.", "automaton")
    enc = lambda t: [ca_meta["stoi"][c] for c in t]  # noqa: E731
    rec = (enc("#.#\n"), enc("###\n#.#\n"), [])  # Rule 110, 3 cells, 2 generations
    assert next_row("#.#") == "###" and next_row("###") == "#.#"
    assert ev.score([rec[1]], [rec[1]], [rec], ca_meta) == dict(exact=1.0)
    assert ev.score([enc("###\n###\n")], [rec[1]], [rec], ca_meta) == dict(exact=0.0)  # one cell wrong
    assert ev.score([enc("###\n")], [rec[1]], [rec], ca_meta) == dict(exact=0.0)  # a generation short
    gsm = sudoku.char_meta("\n 0123456789", "gsm8k")  # a digit vocabulary; the number after "####" decides
    enc = lambda t: [gsm["stoi"][c] for c in t]  # noqa: E731
    ref = enc("12 03\n 15")
    assert ev.score([enc("0 15")], [ref], [([], ref, [])], gsm)["exact"] == 1.0
    assert ev.score([enc("0 16")], [ref], [([], ref, [])], gsm)["exact"] == 0.0


class Oracle(torch.nn.Module):
    """A 'model' that knows the answer: it predicts the target row at every position (diffusion), or its
    next token (causal, with the K/V seam ar.generate uses)."""

    def __init__(self, target, V, causal=False):
        super().__init__()
        self.target, self.w = torch.tensor(target), torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"vocab_size": V, "mask_id": V - 2, "causal": causal, "time_cond": False, "shift": False,
                                     "block_size": 4 * len(target)})()

    def forward(self, x, start=0, kv=None, pos=None, key_mask=None, return_kv=False, sigma=None):
        B, n = x.shape
        idx = torch.arange(start, start + n) + (1 if self.config.causal else 0)
        tok = self.target[idx.clamp(max=len(self.target) - 1)]
        logits = torch.full((B, n, self.config.vocab_size), -5.0)
        logits[:, torch.arange(n), tok] = 5.0
        logits[..., self.config.mask_id] = float("-inf")
        return (logits, [(torch.zeros(B, 1, n, 1), torch.zeros(B, 1, n, 1))]) if return_kv else logits


def test_the_accuracy_command_scores_an_oracle_one_and_a_wrong_model_zero():
    meta, eos = SUDOKU_META, SUDOKU_META["eos_id"]
    rec = sudoku_record(1)
    answer = rec[0] + [eos]  # the diffusion canvas: the 81 cells, then EOS
    for right in (True, False):
        target = answer if right else [(t + 1) % 9 if i in rec[2] else t for i, t in enumerate(rec[0])] + [eos]
        model = Oracle(target, meta["vocab_size"])
        a, t, nfe, _ = ev.answer_records(model, MDLM, [rec], meta, steps=45, block_length=1, temperature=0.0)
        assert ev.score(a, t, [rec], meta)["exact"] == float(right) and nfe == 45
        prompt, full = as_pair(rec, meta["mask_id"])  # the AR row: puzzle, solution, EOS
        ar_target = prompt + (full if right else target[:81]) + [eos]
        model = Oracle(ar_target, meta["vocab_size"], causal=True)
        a, t, nfe, _ = ev.answer_records(model, AR, [rec], meta, temperature=0.0)
        assert ev.score(a, t, [rec], meta)["exact"] == float(right), (a, t)
    ca_meta = sudoku.char_meta("\n#.", "automaton")
    enc = lambda s: [ca_meta["stoi"][c] for c in s]  # noqa: E731
    rec = (enc("#.#\n"), enc("###\n#.#\n"), [])
    model = Oracle(rec[0] + rec[1] + [ca_meta["eos_id"]] * 8, ca_meta["vocab_size"])
    a, t, _, _ = ev.answer_records(model, MDLM, [rec], ca_meta, steps=16, block_length=16, gen_length=16)
    assert ev.score(a, t, [rec], ca_meta)["exact"] == 1.0 and a == [rec[1]]


def test_ar_answers_prompts_of_mixed_lengths_and_stops_at_eos():
    # GSM8K's prompts differ in length: AR decodes each prompt length apart (no padding), and decoding stops
    # once every row has written EOS (an answer longer than the context is cut, not an error)
    meta, eos = SUDOKU_META, SUDOKU_META["eos_id"]
    records = [([1, 2, 3], [4, 5], []), ([1, 2, 3, 4, 5], [6], []), ([2, 2, 2], [1], [])]
    model = Oracle([eos] * 16, meta["vocab_size"], causal=True)  # writes EOS at once
    a, t, nfe, _ = ev.answer_records(model, AR, records, meta, temperature=0.0, batch_size=8)
    assert a == [[], [], []] and sorted(map(tuple, t)) == [(1,), (4, 5), (6,)] and nfe == 1.0
    model.config.block_size = 4  # room for one token after the 3-token prompts, none needed for EOS
    a, _, _, _ = ev.answer_records(model, AR, records[::2], meta, temperature=0.0)
    assert a == [[], []]


def test_a_bpe_that_cannot_load_is_one_line():
    # offline without TIKTOKEN_CACHE_DIR, tiktoken raises from deep in a download: one line instead
    with pytest.raises(ValueError) as e:
        get_codec(dict(tokenizer="no-such-bpe", mask_id=0))
    assert str(e.value).startswith("tiktoken could not load the no-such-bpe BPE") and "\n" not in str(e.value)


@pytest.mark.slow
def test_gsm8k_prepare(tmp_path):
    shared = os.path.join(ROOT, "..", "shared")
    if not os.path.isdir(os.path.join(shared, "data", "gsm8k")) or not os.path.isdir(os.path.join(shared, "tiktoken_cache")):
        pytest.skip("no offline GSM8K or GPT-2 BPE")
    src = tmp_path / "src"
    src.mkdir()
    for name, n in (("train", 520), ("test", 7)):
        with open(os.path.join(shared, "data", "gsm8k", f"{name}.jsonl")) as f:
            (src / f"{name}.jsonl").write_text("".join(f.readlines()[:n]))
    shutil.copytree(os.path.join(ROOT, "data", "gsm8k"), tmp_path / "data" / "gsm8k", ignore=shutil.ignore_patterns("*.pkl"))
    copy_imports(tmp_path)
    env = {"TIKTOKEN_CACHE_DIR": os.path.join(shared, "tiktoken_cache")}
    r = run(str(tmp_path / "data" / "gsm8k" / "prepare.py"), str(src), env=env)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "data" / "gsm8k"
    meta = pickle.load(open(folder / "meta.pkl", "rb"))
    splits = {s: pickle.load(open(folder / f"{s}_sft.pkl", "rb")) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [20, 500, 7] and meta["task"] == "gsm8k"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
    _, decode = get_codec(meta)
    p, resp = splits["test"][0]
    assert decode(p).startswith("Question: ") and decode(p).endswith("\nAnswer: ") and "####" in decode(resp)
    assert ev.extract_answer(decode(resp)) == ev.extract_answer(decode(resp).split("####")[-1])
    (src / "test.jsonl").write_text("not json\n")
    r = run(str(tmp_path / "data" / "gsm8k" / "prepare.py"), str(src), env=env)
    assert r.returncode != 0 and "test.jsonl:1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_accuracy_command_takes_the_options_given_even_when_they_equal_the_table_defaults(tmp_path):
    # accuracy's own defaults (greedy, low_confidence, the task's answer length) replace the table's
    # only for options not given: --remasking=random (the table's default) must still sample randomly
    prepare(tmp_path, "automaton", "--width=8", "--rows=2", "--n_train=200", "--n_val=20", "--n_test=20", "--seed=1")
    data, out = tmp_path / "data" / "automaton", tmp_path / "out"
    r = run("train.py", f"--dataset={data}", f"--out_dir={out}", "--max_iters=2", "--eval_iters=1", "--n_layer=1",
            "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4")
    assert r.returncode == 0, r.stderr
    for args, sampler in [([], "llada, low_confidence"), (["--remasking=random"], "llada, random"),
                          (["--remasking=margin"], "llada, margin")]:
        r = run("eval.py", "--mode=accuracy", f"--ckpts={out}", "--max_records=4", *args)
        assert r.returncode == 0, r.stderr
        assert f"| {out} | {sampler} | 4 |" in r.stdout, r.stdout
