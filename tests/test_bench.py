from conftest import TINY_TRAIN, run


def rows(stdout, k=0):
    """The cells of the k-th markdown table's rows (header and rule left out)."""
    tables = [t for t in stdout.split("\n\n") if t.startswith("| ")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in tables[k].splitlines()[2:]]


def test_bench_tables(tiny_data, tiny_judge, tmp_path):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", "--max_iters=2", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    common = [f"--out_dir={tmp_path}", f"--judge={tiny_judge[0]}", "--num_samples=2", "--prompt_len=8", "--block_length=8"]
    r = run("bench.py", "--what=fast", "--lengths=8,16,64", *common)
    assert r.returncode == 0, r.stderr
    t = rows(r.stdout)
    assert [row[0] for row in t] == ["8"] * 7 + ["16"] * 7, r.stdout  # 64 does not fit the context of 32
    for row in t:
        L, name, nfe, agree = int(row[0]), row[1], float(row[3]), float(row[8])
        assert 1 <= nfe <= L  # the parallel rules and the caches never cost more forwards than the baseline
        if name.startswith("baseline"):
            assert row[4] == "1.0x" and nfe == L and agree == 1.0
        if name.startswith("+ parallel"):  # no cache: the same greedy text is only possible, not forced
            assert 0.0 <= agree <= 1.0
    costs = rows(r.stdout, 1)  # ms of a full forward and of a dual-cache block step, per length
    assert [row[0] for row in costs] == ["8", "16"], r.stdout
    assert all(float(full.split()[0]) > 0 and float(step.split()[0]) > 0 for _, full, step, _ in costs)
    r = run("bench.py", "--what=samplers", "--gen_length=16", *common)
    assert r.returncode == 0, r.stderr
    t = rows(r.stdout)
    assert len(t) == 3 * 5 + 4 * 2, r.stdout
    for name, steps, nfe, ppl, h, secs in t:
        if name.startswith("llada"):
            assert float(nfe) == int(steps)
        elif name.startswith("mdlm"):
            assert float(nfe) <= min(int(steps), 16)  # the no-change shortcut
        assert float(ppl) > 1 and float(h) >= 0  # a 2-step model may well repeat one character
    r = run("bench.py", "--what=fast", "--lengths=64", *common)
    assert r.returncode != 0 and "no length" in r.stderr and len(r.stderr.strip().splitlines()) == 1
