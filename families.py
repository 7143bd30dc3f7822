"""
The model families by name: the one table that says which file trains, evaluates and samples a model.

A family is one file with one interface (diffusion.MDLM, ar.AR, duo.Duo and duo.DCD, its distillation,
bd3.BD3). train.py's --objective names it and every checkpoint stores that name (config['objective']);
train.py, sample.py, eval.py and bench.py look it up once, here (a pretrained folder, --init_from, is
masked or block diffusion by its layout: pretrained), and from then on call only these names:

    flags             the GPTConfig flags of the model it trains (causal, time_cond)
    row_extra         tokens a training row holds past block_size (AR: the last target)
    exact             True when its held-out number is the exact NLL, False for a bound
    infills           whether generate() fills [MASK]s inside a prompt (else it writes after the prompt)
    converts          the families whose checkpoints --init_from may start it from, though their flags differ
                      (the same weights in a model with its flags)
    train_options     the train.py options it reads, {name: (default, rule, what it does)}: declared here,
                      merged by train.py (options()); a name two families read is the same entry
    model_options     those written into the model's config (GPTConfig), which a resume cannot change
    sample_options    the sampling options generate() reads (their defaults and rules: sample.SAMPLE_OPTIONS)
    check(config, meta, sft)           ValueError for what it cannot train on
    Family(config, meta, model)        its training side: noise(), loss(), val_loss(), saved (modules to
                                       checkpoint), begin_step(step, model)
    sft_rows(records, T, eos_id, generator, mask_id)   its rows of SFT records (families that train on them)
    nll(model, windows, scored, n_draws, seed, batch_size)   held-out NLL per token: (mean, standard error)
    generate(model, prompt, gen_length=, eos_id=, pad=, generator=, on_step=, **sample_options)
                      -> (canvas, NFE per row); describe(**sample_options): the sampler in a few words
"""

import ar
import bd3
import checkpoint
import diffusion
import duo
from pretrained import from_pretrained

FAMILIES = {"mdlm": diffusion.MDLM, "ar": ar.AR, "duo": duo.Duo, "dcd": duo.DCD, "bd3": bd3.BD3}


def options():
    """{name: (default, rule, what it does)} of every family's train.py options (train_options)."""
    out = {}
    for fam in FAMILIES.values():
        for k, v in fam.train_options.items():
            assert out.setdefault(k, v) is v, f"two families declare --{k} apart: share one entry"
    return out


def load(path, device="cpu", **kw):
    """(model, ckpt, family) of a checkpoint written by train.py (checkpoint.load's kw); ValueError for a
    checkpoint that is missing, unreadable, or of no family here."""
    model, ckpt = checkpoint.load(path, device, **kw)
    name = ckpt["config"].get("objective")
    if name not in FAMILIES:
        raise ValueError(f"{path} was trained with objective={name!r}, which is none of {', '.join(FAMILIES)}")
    return model, ckpt, FAMILIES[name]


def pretrained(path, device="cpu"):
    """(model, ckpt, family) of a checkpoint in the Hugging Face layout, a folder or a hub id
    (pretrained.from_pretrained): masked diffusion (LLaDA, Dream, A2D) or block diffusion (SDAR, Fast-dLLM v2),
    with the ckpt entries the scripts read: meta (its own tokenizer.json, [MASK] and EOS ids) and config (its
    family, no dataset of its own)."""
    model, folder, fam, eos = from_pretrained(path, device)
    meta = dict(tokenizer="hf", path=folder, vocab_size=model.config.vocab_size, mask_id=model.config.mask_id,
                eos_id=eos)
    return model, dict(config=dict(objective=fam, dataset="", init_from=path), meta=meta), FAMILIES[fam]
