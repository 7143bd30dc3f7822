import pytest
import torch

import ar as ar_module
import bench
import fast_sample
import sample
from conftest import TINY_TRAIN, run, tiny_model
from eval import entropy, gen_ppl, generated
from sample import cut_at_eos

EOS = 10


def rows(stdout, k=0):
    """The cells of the k-th markdown table's rows (header and rule left out)."""
    tables = [t for t in stdout.split("\n\n") if t.startswith("| ")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in tables[k].splitlines()[2:]]


def per_prompt(fn, prompts, seed):
    """What bench.run does for one method, written out: each prompt alone, generator seed + j."""
    outs, nfe = [], 0.0
    for j in range(len(prompts)):
        out, n = fn(prompts[j:j + 1], torch.Generator().manual_seed(seed + j))
        outs.append(out)
        nfe += n
    return torch.cat(outs), nfe / len(prompts)


def test_fast_table_matches_a_recomputation(capsys):
    model, judge = tiny_model(T=40), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(0))
    bench.bench_fast(model, judge, prompts, [16, 32], block_length=8, temperature=1.0, threshold=0.2, factor=1.0,
                     seed=5, eos=EOS)
    out = capsys.readouterr().out
    table = rows(out)
    methods = {"baseline (sample.py)": None, "+ parallel (threshold 0.2)": dict(cache="none", threshold=0.2),
               "+ prefix cache": dict(cache="prefix", threshold=0), "+ dual cache": dict(cache="dual", threshold=0),
               "+ prefix cache + parallel (0.2)": dict(cache="prefix", threshold=0.2),
               "+ dual cache + parallel (0.2)": dict(cache="dual", threshold=0.2),
               "+ dual cache + factor (1.0)": dict(cache="dual", threshold=0, factor=1.0),
               "+ dual cache + parallel (0.2), no EOS stop": dict(cache="dual", threshold=0.2, eos_stop=False)}
    assert [(int(r[0]), r[1]) for r in table] == [(L, m) for L in (16, 32) for m in methods]
    base_tok_s = {}
    for L, name, tok_s, nfe, speedup, tokens, ppl, h, agree in table:
        L, kw = int(L), methods[name]
        opts = dict(steps=L, gen_length=L, block_length=8, temperature=1.0, eos_id=EOS)
        if kw is None:
            fn = lambda x, g: sample.generate(model, x, generator=g, **opts)  # noqa: E731
        else:
            fn = lambda x, g: fast_sample.generate(model, x, generator=g, **opts, **kw)  # noqa: E731
        samples, want_nfe = per_prompt(fn, prompts, seed=5)
        if kw is None:
            base, base_tok_s[L] = samples, float(tok_s)
        n_tok = int(generated(samples, 8, EOS).sum())
        assert float(nfe) == round(want_nfe, 1) and int(tokens) == round(n_tok / 3), (name, nfe, want_nfe)
        assert float(ppl) == round(gen_ppl(judge, samples, 8, EOS), 2) and float(h) == round(entropy(samples, 8, EOS), 3)
        assert float(agree) == round((samples[:, 8:] == base[:, 8:]).float().mean().item(), 2)
        assert abs(float(speedup[:-1]) - float(tok_s) / base_tok_s[L]) <= 0.05 + 0.01 * float(speedup[:-1])
    costs = rows(out, 1)  # ms of a full forward and of a dual-cache block step, per length
    assert [r[0] for r in costs] == ["16", "32"]
    for _, full, step, ratio in costs:  # the ratio of the unrounded times: within the cells' rounding
        f, s = float(full.split()[0]), float(step.split()[0])
        assert (f - 0.05) / (s + 0.05) - 0.05 <= float(ratio) <= (f + 0.05) / max(s - 0.05, 1e-9) + 0.05


def test_sampler_table_matches_a_recomputation(capsys):
    model, judge = tiny_model(T=40), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(1))
    bench.bench_samplers(model, judge, prompts, 16, block_length=8, temperature=1.0, eta=0.1, seed=3)
    table = rows(capsys.readouterr().out)
    assert len(table) == 3 * 5 + 4 * 2
    checked = 0
    for name, steps, nfe, ppl, h, secs in table:
        s = int(steps)
        if name == "llada random, one block":
            fn = lambda x, g: sample.generate(model, x, steps=s, gen_length=16, block_length=16,  # noqa: E731
                                              temperature=1.0, remasking="random", generator=g)
        elif name.startswith("remdm"):
            fn = lambda x, g: sample.generate_ancestral(model, x, steps=s, gen_length=16, temperature=1.0,  # noqa: E731
                                                        eta=0.1, generator=g)
        else:
            continue
        samples, want_nfe = per_prompt(fn, prompts, seed=3)
        assert float(nfe) == round(want_nfe, 1)
        assert float(ppl) == round(gen_ppl(judge, samples, 8), 2) and float(h) == round(entropy(samples, 8), 3)
        checked += 1
    assert checked == 3 + 4


def test_run_interleaves_with_a_generator_per_prompt():
    calls = []

    def fn(tag):
        def f(x, g):
            calls.append((tag, x[0, 0].item()))
            return x + torch.randint(0, 100, (1,), generator=g), 2.0 if tag == "a" else 3.0
        return f
    prompts = torch.tensor([[10], [20], [30]])
    (sa, nfe_a, _), (sb, nfe_b, _) = bench.run([fn("a"), fn("b")], prompts, seed=7)
    assert calls == [("a", 10), ("b", 10), ("a", 20), ("b", 20), ("a", 30), ("b", 30)]
    draws = [torch.randint(0, 100, (1,), generator=torch.Generator().manual_seed(7 + j)).item() for j in range(3)]
    assert sa.flatten().tolist() == sb.flatten().tolist() == [10 + draws[0], 20 + draws[1], 30 + draws[2]]
    assert (nfe_a, nfe_b) == (2.0, 3.0)


@pytest.mark.slow
def test_bench_cli(tiny_data, tiny_judge, tmp_path):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", "--max_iters=2", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    common = [f"--out_dir={tmp_path}", f"--judge={tiny_judge[0]}", "--num_samples=2", "--prompt_len=8", "--block_length=8"]
    r = run("bench.py", "--what=fast", "--lengths=8,16,64", *common)
    assert r.returncode == 0, r.stderr
    assert [row[0] for row in rows(r.stdout)] == ["8"] * 7 + ["16"] * 7, r.stdout  # 64 does not fit the context
    r = run("bench.py", "--what=samplers", "--gen_length=16", *common)
    assert r.returncode == 0, r.stderr
    assert len(rows(r.stdout)) == 3 * 5 + 4 * 2 and "val text: gen PPL" in r.stdout
    r = run("bench.py", "--what=fast", "--lengths=64", *common)
    assert r.returncode != 0 and "no length" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fast_table_on_a_task_has_accuracy_and_an_ar_row(capsys):
    model, ar_model = tiny_model(T=40), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(2))
    kw = dict(steps=16, gen_length=16, block_length=8, temperature=0.0, eos_id=EOS)
    base, _ = per_prompt(lambda x, g: sample.generate(model, x, generator=g, **kw), prompts, 5)
    answers = [cut_at_eos(base[0, 8:].tolist(), EOS, 0), [4, 5], [6]]  # the baseline gets the first one right
    bench.bench_fast(model, None, prompts, [16], block_length=8, temperature=0.0, threshold=0.2, seed=5, eos=EOS,
                     answers=answers, ar_model=ar_model)
    table = rows(capsys.readouterr().out)
    assert [r[1] for r in table][-1] == "AR greedy + K/V cache (ar.py)" and len(table) == 9
    for L, name, tok_s, nfe, speedup, tokens, acc, agree in table:
        if name.startswith("AR"):
            samples, _ = per_prompt(lambda x, g: (ar_module.generate(ar_model, x, 16, 0.0, g, eos_id=EOS), 0), prompts, 5)
            n_tok = generated(samples, 8, EOS).sum(1)
            assert float(nfe) == round((n_tok + 1).clamp(max=16).float().mean().item(), 1)
        elif name.startswith("baseline"):
            samples = base
            assert acc == "33.3%"
        else:
            continue
        right = [cut_at_eos(row[8:], EOS, 0) == a for row, a in zip(samples.tolist(), answers)]
        assert acc == f"{100 * sum(right) / 3:.1f}%"


def test_fewstep_table_matches_a_recomputation(capsys):
    mdlm, duo_model, judge = tiny_model(T=40), tiny_model(T=40, time_cond=True), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(3))
    real = torch.cat([prompts, torch.randint(0, 10, (4, 16), generator=torch.Generator().manual_seed(4))], 1)
    bench.bench_fewstep([("m", mdlm), ("d", duo_model)], judge, prompts, 16, [2, 8], temperature=1.0, seed=9, real=real)
    out = capsys.readouterr().out
    table = rows(out)
    # under the table, the Duo model's tail on the val text itself (read as clean: sigma = 0, argmax)
    with torch.no_grad():
        on_data = duo_model(real, sigma=torch.zeros(4))[..., :-1].argmax(-1)
    assert out.count("greedy tail rewrites") == 1
    assert f"d: its greedy tail rewrites {100 * (on_data != real)[:, 8:].float().mean():.1f}% of the val text" in out
    assert [(r[0], r[1], r[2]) for r in table] == [("m", "mdlm ancestral", "2"), ("m", "mdlm ancestral", "8"),
                                                   ("d", "duo, greedy tail", "2"), ("d", "duo, greedy tail", "8")]
    import duo
    for name, kind, steps, nfe, ppl, h, tail, secs in table:
        g = torch.Generator().manual_seed(9)
        if name == "d":
            plain, _ = duo.generate(duo_model, prompts, steps=int(steps), gen_length=16, temperature=1.0,
                                    greedy_tail=False, generator=torch.Generator().manual_seed(9))
            samples, n = duo.generate(duo_model, prompts, steps=int(steps), gen_length=16, temperature=1.0, generator=g)
            assert tail == f"{100 * (samples != plain)[:, 8:].float().mean():.1f}%"  # what the tail changed
            assert torch.equal(samples[:, 8:], duo.tail(duo_model, plain)[:, 8:])  # one argmax pass over the plain run
        else:
            assert tail == "-"
            samples, n = sample.generate_ancestral(mdlm, prompts, steps=int(steps), gen_length=16, temperature=1.0,
                                                   generator=g)
        assert float(nfe) == round(n, 1) and float(ppl) == round(gen_ppl(judge, samples, 8), 2)
        assert float(h) == round(entropy(samples, 8), 3)


def test_fewstep_passes_duo_its_sampler_options(capsys):
    duo_model, judge = tiny_model(T=40, time_cond=True), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(3))
    bench.bench_fewstep([("d", duo_model)], judge, prompts, 16, [4], temperature=1.0, top_p=0.8, greedy_tail=False, seed=9)
    (name, kind, steps, nfe, ppl, h, tail, secs), = rows(capsys.readouterr().out)
    assert kind == "duo, top_p 0.8" and tail == "-"
    import duo
    samples, _ = duo.generate(duo_model, prompts, steps=4, gen_length=16, temperature=1.0, top_p=0.8, greedy_tail=False,
                              generator=torch.Generator().manual_seed(9))
    assert float(ppl) == round(gen_ppl(judge, samples, 8), 2) and float(h) == round(entropy(samples, 8), 3)
    default, _ = duo.generate(duo_model, prompts, steps=4, gen_length=16, temperature=1.0,
                              generator=torch.Generator().manual_seed(9))
    assert not torch.equal(samples, default)  # the options change the samples: the row is not the default's
