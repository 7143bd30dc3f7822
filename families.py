"""
The model families by name: the one table that says which file trains, evaluates and samples a model.

A family is one file with one interface (diffusion.MDLM, ar.AR, duo.Duo and duo.DCD, its distillation,
bd3.BD3).
train.py's --objective names it and every checkpoint stores that name (config['objective']); train.py,
sample.py, eval.py and bench.py look it up once, here, and from then on call only these names:

    flags             the GPTConfig flags of the model it trains (causal, time_cond)
    shift             extra tokens per training row (AR: the last target)
    exact             True when its held-out number is the exact NLL, False for a bound
    infills           whether generate() fills [MASK]s inside a prompt (else it writes after the prompt)
    converts          the families whose checkpoints --init_from may start it from, though their flags differ
                      (the same weights in a model with its flags)
    options           the train.py options it reads; sample_options: the sampling options generate() reads
    check(cfg, meta, sft)              ValueError for what it cannot train on
    Family(cfg, meta, model)           its training side: noise(), loss(), val_loss(), extra (modules to
                                       checkpoint), begin_step(step, model)
    sft_rows(records, T, eos_id, generator, mask_id)   its rows of SFT records (families that train on them)
    nll(model, windows, scored, n_draws, seed, batch_size)   held-out NLL per token: (mean, standard error)
    check_sampling(**opts), generate(model, prompt, **opts) -> (canvas, NFE per row), describe(**opts)
"""

import ar
import bd3
import diffusion
import duo
from model import load_checkpoint

FAMILIES = {"mdlm": diffusion.MDLM, "ar": ar.AR, "duo": duo.Duo, "dcd": duo.DCD, "bd3": bd3.BD3}


def load(path, device="cpu", **kw):
    """(model, ckpt, family) of a checkpoint written by train.py (model.load_checkpoint's kw); ValueError
    for a checkpoint that is missing, unreadable, or of no family here."""
    model, ckpt = load_checkpoint(path, device, **kw)
    name = ckpt["config"].get("objective")
    if name not in FAMILIES:
        raise ValueError(f"{path} was trained with objective={name!r}, which is none of {', '.join(FAMILIES)}")
    return model, ckpt, FAMILIES[name]


def options_of(names, values):
    """{name: value} of the options a family reads (names) that a script has (values: its config)."""
    return {k: values[k] for k in names if k in values}
