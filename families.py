"""
The model families by name: the one table that says which file trains, evaluates and samples a model.

A family is one file with one interface (diffusion.MDLM, ar.AR, duo.Duo and duo.DCD, its distillation,
bd3.BD3).
train.py's --objective names it and every checkpoint stores that name (config['objective']); train.py,
sample.py, eval.py and bench.py look it up once, here (a pretrained LLaDA folder, --init_from, is masked
diffusion: pretrained), and from then on call only these names:

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
from model import from_pretrained, load_checkpoint

FAMILIES = {"mdlm": diffusion.MDLM, "ar": ar.AR, "duo": duo.Duo, "dcd": duo.DCD, "bd3": bd3.BD3}


def load(path, device="cpu", **kw):
    """(model, ckpt, family) of a checkpoint written by train.py (model.load_checkpoint's kw); ValueError
    for a checkpoint that is missing, unreadable, or of no family here."""
    model, ckpt = load_checkpoint(path, device, **kw)
    name = ckpt["config"].get("objective")
    if name not in FAMILIES:
        raise ValueError(f"{path} was trained with objective={name!r}, which is none of {', '.join(FAMILIES)}")
    return model, ckpt, FAMILIES[name]


def pretrained(path, device="cpu"):
    """(model, ckpt, family) of a LLaDA checkpoint in the Hugging Face layout, a folder or a hub id
    (model.from_pretrained): a masked diffusion model, so MDLM's family, with the ckpt entries the scripts
    read: meta (its own tokenizer.json, [MASK] and EOS ids) and config (no dataset of its own)."""
    model, folder, c = from_pretrained(path, device)
    eos = c.get("eos_token_id")
    meta = dict(tokenizer="hf", path=folder, vocab_size=model.config.vocab_size, mask_id=model.config.mask_id,
                eos_id=eos if isinstance(eos, int) else -1)
    return model, dict(config=dict(objective="mdlm", dataset="", init_from=path), meta=meta), diffusion.MDLM


def options_of(names, values):
    """{name: value} of the options a family reads (names) that a script has (values: its config)."""
    return {k: values[k] for k in names if k in values}
