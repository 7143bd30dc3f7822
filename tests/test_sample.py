import pytest
import torch

from conftest import TINY_TRAIN, run, tiny_model
from sample import generate, num_transfer_tokens


def test_linear_schedule_of_commits():
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[0, :7] = True
    masked[1, :] = True
    k = num_transfer_tokens(masked, 3)
    assert k.tolist() == [[3, 2, 2], [3, 3, 2]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_generate_fills_every_mask_and_keeps_the_prompt(remasking):
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (3, 8))
    out = generate(model, prompt, gen_length=16, steps=8, block_length=8, temperature=1.0,
                   remasking=remasking, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 24)
    assert torch.equal(out[:, :8], prompt)
    assert (out != 11).all()


def test_one_token_per_step_and_blocks_left_to_right():
    # wrap the model to watch the canvas: with steps = gen_length exactly one mask is filled per
    # call, and no position of block 2 is filled before block 1 is complete
    model = tiny_model(T=24)
    seen = []

    def spy(x):
        seen.append(x.clone())
        return model(x)
    spy.config = model.config
    prompt = torch.randint(0, 11, (1, 8))
    out = generate(spy, prompt, gen_length=16, steps=16, block_length=8, temperature=0.0)
    seen.append(out)
    masks = [int((x == 11).sum()) for x in seen]
    assert masks == list(range(16, -1, -1))
    for x in seen:
        if (x[0, 8:16] == 11).any():
            assert (x[0, 16:] == 11).all()


def test_seeded_runs_repeat():
    model = tiny_model(T=24)
    prompt = torch.randint(0, 11, (2, 8))
    a, b = (generate(model, prompt, 16, 8, 8, 1.0, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b)


def test_bad_lengths():
    model = tiny_model(T=24)
    with pytest.raises(ValueError, match="divisible"):
        generate(model, torch.zeros(1, 4, dtype=torch.long), gen_length=10, steps=10, block_length=4)


def test_cli(tiny_data, tmp_path):
    out = str(tmp_path)
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--max_iters=0", *TINY_TRAIN)
    assert r.returncode == 0, r.stderr
    r = run("sample.py", f"--out_dir={out}", "--prompt=the cat", "--gen_length=16", "--block_length=8",
            "--num_samples=2")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("---------------\n")[:2]
    assert len(samples) == 2 and all(s.startswith("the cat") and len(s) == 7 + 16 + 1 for s in samples)
    for args, words in [(["--prompt=the cat!"], "not in the vocabulary"),
                        (["--gen_length=32"], "exceeds the model's context"),
                        (["--gen_length=12", "--block_length=8"], "not divisible"),
                        (["--remasking=best"], "remasking must be one of"),
                        (["--prompt=FILE:/no/such/file"], "not found")]:
        r = run("sample.py", f"--out_dir={out}", *args)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words in r.stderr, r.stderr
    r = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}/ar", "--max_iters=0", "--objective=ar", *TINY_TRAIN)
    r = run("sample.py", f"--out_dir={out}/ar")
    assert r.returncode != 0 and "autoregressive" in r.stderr
