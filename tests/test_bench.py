import pytest
import torch

import bench
from ar import AR
from bd3 import BD3
from conftest import TINY_TRAIN, run, tiny_model
from diffusion import MDLM
from duo import Duo
from eval import entropy, gen_ppl, generated, quality
from sample import cut_at_eos, generate_ancestral, left_pad

EOS = 10


def rows(stdout, k=0):
    """The cells of the k-th markdown table's rows (header and rule left out)."""
    tables = [t for t in stdout.split("\n\n") if t.startswith("| ")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in tables[k].splitlines()[2:]]


@pytest.mark.slow  # seconds: a table of 7 methods at two lengths, each decoding three prompts
def test_fast_table_rows_speak_for_their_methods(capsys):
    model, judge = tiny_model(T=40), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(0))
    bench.bench_fast(model, MDLM, judge, prompts, [16, 32], block_length=8, temperature=1.0, threshold=0.2, factor=1.0,
                     seed=5, eos=EOS)
    out = capsys.readouterr().out
    table = rows(out)
    names = [name for name, _ in bench.fast_rows(model, MDLM, 0.2, 1.0, EOS)]
    assert [(int(r[0]), r[1]) for r in table] == [(L, m) for L in (16, 32) for m in names]
    assert names[0] == "baseline (llada)" and names[-1] == "+ dual cache + parallel (0.2), no EOS stop"
    for L in (16, 32):
        by = {r[1]: r for r in table if int(r[0]) == L}
        base = by["baseline (llada)"]
        assert base[4] == "1.0x" and base[8] == "1.00"  # the baseline against itself
        # the fixed schedule calls the model once per step, cached or not (L steps)
        assert float(base[3]) == float(by["+ prefix cache"][3]) == float(by["+ dual cache"][3]) == L
        # the baseline row is LLaDA's sampler, one prompt at a time, scored by the judge
        (samples, nfe, _), = bench.run([lambda x, g: MDLM.generate(model, x, steps=L, gen_length=L, block_length=8,
                                                                   temperature=1.0, eos_id=EOS, generator=g)], prompts, 5)
        assert base[6:8] == quality(judge, torch.cat([prompts, samples], 1), 8, EOS)
        assert int(base[5]) == round(int(generated(samples, 0, EOS).sum()) / 3)
    costs = rows(out, 1)  # ms of a full forward and of a dual-cache block step, per length
    assert [r[0] for r in costs] == ["16", "32"]


def test_sampler_table_rows_are_the_samplers_they_name(capsys):
    model, judge = tiny_model(T=40), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(1))
    bench.bench_samplers(model, MDLM, judge, prompts, 16, block_length=8, temperature=1.0, eta=0.1, seed=3)
    table = rows(capsys.readouterr().out)
    assert len(table) == 3 * 5 + 4 * 2
    assert [(r[0], int(r[1])) for r in table] == [(name, s) for name, s, _ in bench.sampler_rows(16, 8, 0.1)]
    for name, steps, opts in [("llada random, one block", 8, dict(remasking="random", block_length=16)),
                              ("remdm (eta 0.1)", 32, dict(sampler="remdm", eta=0.1))]:
        (samples, nfe, _), = bench.run([lambda x, g: MDLM.generate(model, x, steps=steps, gen_length=16, temperature=1.0,
                                                                   generator=g, **opts)], prompts, 3)
        row, = [r for r in table if r[0] == name and int(r[1]) == steps]
        assert float(row[2]) == round(nfe, 1) and row[3:5] == quality(judge, torch.cat([prompts, samples], 1), 8)
    assert all(float(r[2]) == int(r[1]) for r in table if r[0].startswith("llada"))  # one forward per step


def test_run_interleaves_with_a_generator_per_prompt():
    calls = []

    def fn(tag):
        def f(x, g):
            calls.append((tag, x[0, 0].item()))
            return torch.cat([x, x + torch.randint(0, 100, (1,), generator=g)], 1), 2.0 if tag == "a" else 3.0
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


def test_fast_table_on_a_task_has_accuracy_and_rows_of_other_models(capsys):
    """The fast table's accuracy cells and its AR and block diffusion rows are what the same decodings score."""
    model, ar_model = tiny_model(T=40), tiny_model(causal=True, T=40)
    bd3_model = tiny_model(T=40, bd3_block=4)
    prompts = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(2))
    kw = dict(steps=16, gen_length=16, block_length=8, temperature=0.0, eos_id=EOS)
    (base, _, _), = bench.run([lambda x, g: MDLM.generate(model, x, generator=g, **kw)], prompts, 5)
    assert base.shape == (3, 16)  # what each prompt is followed by
    answers = [cut_at_eos(base[0].tolist(), EOS, 0), [4, 5], [6]]  # the baseline gets the first one right

    def accuracy(gen):
        return f"{100 * sum(cut_at_eos(r, EOS, 0) == a for r, a in zip(gen.tolist(), answers)) / 3:.1f}%"
    bench.bench_fast(model, MDLM, None, prompts, [16], block_length=8, temperature=0.0, threshold=0.2, seed=5, eos=EOS,
                     accuracy=accuracy, others=[("ar", ar_model, AR), ("bd3", bd3_model, BD3)])
    table = rows(capsys.readouterr().out)
    assert [r[1] for r in table][-2:] == ["ar (AR, K/V cache)", "bd3 (bd3, block K/V cache, threshold 0.2)"]
    assert len(table) == 10
    (samples, _, _), (blocks, _, _) = bench.run(
        [lambda x, g: AR.generate(ar_model, x, gen_length=16, temperature=0.0, eos_id=EOS, generator=g),
         lambda x, g: BD3.generate(bd3_model, x, gen_length=16, steps=16, threshold=0.2, temperature=0.0, eos_id=EOS,
                                   generator=g)], prompts, 5)
    for got, row in [(base, table[0]), (samples, table[-2]), (blocks, table[-1])]:
        assert row[6] == accuracy(got)
    assert table[0][6] == "33.3%"
    n_tok = generated(samples, 0, EOS).sum(1)  # an AR row: one forward per token written, its EOS included
    assert float(table[-2][3]) == round((n_tok + 1).clamp(max=16).float().mean().item(), 1)


def test_run_drops_each_prompts_left_padding():
    """A left-padded prompt is run alone without its padding: the tokens after it are those of the bare prompt."""
    model = tiny_model(T=40)
    kw = dict(steps=8, gen_length=8, block_length=8, temperature=0.0)
    short, long = [1, 2, 3], [4, 5, 6, 7, 8, 9]
    x, pad = left_pad([short, long], EOS)
    (gen, _, _), = bench.run([lambda x, g: MDLM.generate(model, x, generator=g, **kw)], x, 5, pad)
    for i, p in enumerate([short, long]):
        alone, _ = MDLM.generate(model, torch.tensor([p]), generator=torch.Generator().manual_seed(5 + i), **kw)
        assert gen[i].tolist() == alone[0, len(p):].tolist()


def test_fewstep_table_matches_a_recomputation(capsys):
    mdlm, duo_model, judge = tiny_model(T=40), tiny_model(T=40, time_cond=True), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(3))
    bench.bench_fewstep([("m", mdlm, MDLM), ("d", duo_model, Duo)], judge, prompts, 16, [2, 8], temperature=1.0, seed=9)
    table = rows(capsys.readouterr().out)
    assert [(r[0], r[1], r[2]) for r in table] == [("m", "ancestral", "2"), ("m", "ancestral", "8"),
                                                   ("d", "duo ancestral, greedy tail", "2"),
                                                   ("d", "duo ancestral, greedy tail", "8")]
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
            samples, n = generate_ancestral(mdlm, prompts, steps=int(steps), gen_length=16, temperature=1.0,
                                                   generator=g)
        assert float(nfe) == round(n, 1) and float(ppl) == round(gen_ppl(judge, samples, 8), 2)
        assert float(h) == round(entropy(samples, 8), 3)


def test_fewstep_passes_duo_its_sampler_options(capsys):
    duo_model, judge = tiny_model(T=40, time_cond=True), tiny_model(causal=True, T=40)
    prompts = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(3))
    bench.bench_fewstep([("d", duo_model, Duo)], judge, prompts, 16, [4], temperature=1.0, top_p=0.8, greedy_tail=False, seed=9)
    (name, kind, steps, nfe, ppl, h, tail, secs), = rows(capsys.readouterr().out)
    assert kind == "duo ancestral, top_p 0.8" and tail == "-"
    import duo
    samples, _ = duo.generate(duo_model, prompts, steps=4, gen_length=16, temperature=1.0, top_p=0.8, greedy_tail=False,
                              generator=torch.Generator().manual_seed(9))
    assert float(ppl) == round(gen_ppl(judge, samples, 8), 2) and float(h) == round(entropy(samples, 8), 3)
    default, _ = duo.generate(duo_model, prompts, steps=4, gen_length=16, temperature=1.0,
                              generator=torch.Generator().manual_seed(9))
    assert not torch.equal(samples, default)  # the options change the samples: the row is not the default's


def test_fast_table_of_a_model_that_writes_only_eos_has_no_speed_up(capsys):
    """A baseline that writes nothing before EOS has no tokens/s to divide by: its rows say '-', not a crash."""
    class OnlyEos(torch.nn.Module):
        config = type("C", (), {"mask_id": 11, "block_size": 40, "causal": False, "shift": False})()

        def forward(self, x, start=0, kv=None, return_kv=False, **kw):
            logits = torch.full((*x.shape, 12), -5.0)
            logits[..., EOS], logits[..., 11] = 5.0, float("-inf")
            zeros = torch.zeros(x.size(0), 1, x.size(1), 1)
            return (logits, [(zeros, zeros)]) if return_kv else logits
    prompts = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(0))
    bench.bench_fast(OnlyEos(), MDLM, tiny_model(causal=True, T=40), prompts, [16], block_length=8, temperature=0.0,
                     threshold=0.9, factor=1.0, seed=5, eos=EOS)
    table = rows(capsys.readouterr().out)
    assert len(table) == 8 and all(r[4] == "-" and r[5] == "0" for r in table)
