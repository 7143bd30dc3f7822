"""The family interface (families.py): every family has the same names, the scripts look a family up
once and never branch on it, and what the interface adds (AR in sample.py, AR answers to prompts of
mixed lengths, one dataset path for every script) works."""
import ast
import dataclasses
import os

import pytest
import torch

import families
import sample
from ar import AR, decode
from conftest import ROOT, TINY_TRAIN, run, tiny_model
from families import FAMILIES
from model import GPTConfig
from sample import left_pad

SCRIPTS = ["train.py", "sample.py", "eval.py", "bench.py", "fast_sample.py"]
INTERFACE = ["flags", "row_extra", "exact", "infills", "converts", "train_options", "model_options", "sample_options",
             "check", "noise", "loss", "val_loss", "begin_step", "nll", "generate", "describe"]


def top_level_names(path):
    """The names a script assigns at its top level: its options."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_never_branch_on_the_family(script):
    # no model flag read, and no comparison with a family's name: what differs is the family's to say
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    flags = {f.name for f in dataclasses.fields(GPTConfig)} & {"causal", "time_cond"}
    refusals = {id(c) for node in ast.walk(tree) if isinstance(node, ast.If) and len(node.body) == 1
                and getattr(getattr(node.body[0], "value", None), "func", None) is not None
                and getattr(node.body[0].value.func, "id", "") == "fail" for c in ast.walk(node.test)}
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Attribute) and node.attr in flags), (script, node.lineno)
        if isinstance(node, ast.Compare) and id(node) not in refusals:  # a check that refuses takes no other path
            consts = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not consts & set(FAMILIES) and "objective" not in names, (script, node.lineno)
    lookups = [n for n in ast.walk(tree) if isinstance(n, ast.Subscript) and getattr(n.value, "id", "") == "FAMILIES"]
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "load"]
    assert len(lookups) + len(loads) <= 1 or script in ("eval.py", "bench.py"), script  # one lookup (per model)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_has_the_interface_and_its_options_exist(name):
    fam = FAMILIES[name]
    assert all(hasattr(fam, k) for k in INTERFACE), [k for k in INTERFACE if not hasattr(fam, k)]
    assert set(fam.flags) == {"causal", "time_cond"} and fam.row_extra in (0, 1)
    # its train.py options: declared once (a name two families read is the one entry), none of train.py's own
    # names, each (default, rule or None, what it does); those that shape the model are GPTConfig fields
    assert all(families.options()[k] is v for k, v in fam.train_options.items())
    assert not set(fam.train_options) & top_level_names("train.py")
    for default, rule, what in fam.train_options.values():
        assert isinstance(default, (int, float, bool, str)) and (rule is None or rule[0](default)) and what
    assert set(fam.model_options) <= set(fam.train_options) & {f.name for f in dataclasses.fields(GPTConfig)}
    # its sampling options: rows of sample.py's one table, which sample.py, eval.py and bench.py import
    assert set(fam.sample_options) <= set(sample.SAMPLE_OPTIONS) and "temperature" in fam.sample_options
    assert set(fam.sample_options) <= set(vars(sample))  # sample.py's options, importable


def test_ar_answers_left_padded_prompts_as_each_alone():
    model = tiny_model(causal=True, T=32)
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [2, 2, 2, 2]]
    x, pad = left_pad(rows, 0)
    out, nfe = AR.generate(model, x, gen_length=6, temperature=0.0, pad=pad)
    P = x.size(1)
    for i, r in enumerate(rows):
        alone, n = decode(model, torch.tensor([r]), 6, 0.0)
        assert torch.equal(out[i, P - len(r):], alone[0]) and n == 6
    assert nfe == 6.0


@pytest.mark.slow
def test_sample_py_samples_an_ar_checkpoint(tiny_data, tmp_path):
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path}", "--objective=ar", "--max_iters=2",
            *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    r = run("sample.py", f"--out_dir={tmp_path}", "--prompt=the ", "--gen_length=8", "--num_samples=2")
    assert r.returncode == 0 and "AR, K/V cache, 8 model forwards" in r.stderr, r.stderr
    assert [len(s) for s in r.stdout.split("---------------\n")[:2]] == [4 + 8 + 1] * 2  # prompt, 8 chars, newline
    r = run("sample.py", f"--out_dir={tmp_path}", "--steps=4")
    assert r.returncode != 0 and "--steps does not apply" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_relative_dataset_path_works_in_every_script(tiny_data, tmp_path):
    rel = os.path.relpath(tiny_data, ROOT)  # the scripts run from the repository root
    for obj in ("ar", "mdlm"):
        r = run("train.py", f"--dataset={rel}", f"--out_dir={tmp_path / obj}", f"--objective={obj}", "--max_iters=2",
                *TINY_TRAIN)
        assert r.returncode == 0, r.stderr
    common = [f"--judge={tmp_path / 'ar'}", "--num_samples=2", "--prompt_len=8"]
    r = run("eval.py", f"--ckpts={tmp_path / 'mdlm'}", "--gen_length=8", "--n_draws=1", *common)
    assert r.returncode == 0 and "(bound)" in r.stdout, r.stderr
    r = run("bench.py", "--what=fewstep", f"--out_dir={tmp_path / 'mdlm'}", "--gen_length=8", "--step_counts=2", *common)
    assert r.returncode == 0 and "| ancestral | 2 |" in r.stdout, r.stderr


def project_imports(path):
    """The project modules a file imports when it is imported (an `if __name__ == "__main__":` block is the
    script's command line, run only as a script, and left out), anywhere in the file, functions included."""
    own = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    main = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    skip = {id(m) for n in main for m in ast.walk(n)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & own


def test_no_import_cycle_and_model_py_stands_alone():
    files = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))
    graph = {f[:-3]: project_imports(f) for f in files}
    assert graph["model"] == set()  # torch and the standard library only: copy it alone
    assert "fast_sample" not in graph["sample"] and "sample" in graph["fast_sample"]  # fast_sample builds on sample
    done, path = set(), []

    def visit(m):  # depth-first: a module met again on the current path is a cycle
        assert m not in path, " -> ".join(path + [m])
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)
    for m in graph:
        visit(m)


def test_every_sampling_option_is_declared_once():
    # sample.SAMPLE_OPTIONS is the one declaration; a script that needs another default for its purpose sets it
    # in one line that says why, and nothing else declares a sampling option's default
    for script in ("sample.py", "eval.py", "bench.py"):
        lines = open(os.path.join(ROOT, script)).read().splitlines()
        own = [line for line in lines if line.split(" = ")[0] in sample.SAMPLE_OPTIONS and " = " in line]
        assert all("#" in line and len(line.split("#", 1)[1].split()) >= 4 for line in own), (script, own)
        assert script != "sample.py" or not own, own
    for name, (default, rule, what) in sample.SAMPLE_OPTIONS.items():
        assert what and (rule is None or rule[0](default)), name
