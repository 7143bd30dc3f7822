"""
A training run's checkpoint, out_dir/ckpt.pt: what train.py writes, what it resumes or fine-tunes from,
and what sample.py, eval.py and bench.py load (families.load). One file a run, written all or nothing
(tokenizer.write_files: a full disk, Ctrl-C or kill -9 leaves the previous checkpoint whole), read
with weights_only=True (a checkpoint is untrusted input):

    model, model_args     the weights (the raw ones) and their GPTConfig
    ema                   the averaged weights, when the run keeps them (the ones sampling uses)
    optimizer, iter_num, best_val, tokens, train_time   what an exact resume needs
    config, meta          the run's options (config['objective'] names its family) and its vocabulary
    <name>                the family's own modules (fam.saved: DCD's teacher)

A resume continues the run as it was configured (resumed_options) with the model and state it saved
(start, restore); a fine-tune starts from another run's weights or from a pretrained folder
(pretrained.py), converted to this family's flags (fam.converts) and grown to the dataset's vocabulary.
"""

import copy
import os
from dataclasses import asdict

import torch

import lora
import shard
from configurator import cast, check_memory, command_line_keys
from model import GPT, GPTConfig
from pretrained import check_config, from_pretrained
from tokenizer import fitting, recode, same_tokens, write_files

SHAPE = ("n_layer", "n_head", "n_embd", "dropout")  # what a resumed or fine-tuned model keeps


def load(path, device="cpu", hint="train one first: python train.py config/shakespeare.py", ema=True):
    """(model, ckpt) of a ckpt.pt (or the out_dir holding it), with its EMA weights when it has them (ema=False:
    the raw weights, to resume). A missing, unreadable or incomplete file raises ValueError, in one line."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} not found ({hint})")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        config = ckpt["config"]
        if config.get("lora_r"):  # adapters over their base (a pretrained folder or an out_dir), loaded first
            base = ckpt.get("lora_base") or config["init_from"]
            model = (from_pretrained(base, device)[0] if os.path.isfile(os.path.join(base, "config.json"))
                     else load(base, device)[0])
            lora.apply(model, config["lora_targets"], config["lora_r"], config["lora_alpha"], config["lora_dropout"])
            if set(ckpt["model"]) != set(lora.adapters(model)):
                raise ValueError(f"its adapters do not fit the layers of its base {base}")
            model.load_state_dict(ckpt["model"], strict=False)
            if ema:  # to sample or evaluate: folded into the base weights (a resume trains them apart)
                lora.merge(model)
        else:
            model = GPT(check_config(GPTConfig(**ckpt["model_args"]), path))
            sd = ckpt["ema"] if ema and "ema" in ckpt else ckpt["model"]
            # checkpoints written before model.py named its transformer layers `layers` call them `blocks`
            model.load_state_dict({"layers." + k[7:] if k.startswith("blocks.") else k: v for k, v in sd.items()})
        meta = ckpt["meta"]  # what sample.py, eval.py and train.py read
        assert isinstance(config, dict) and meta["mask_id"] == model.config.mask_id and \
            meta["vocab_size"] == model.config.vocab_size and meta["tokenizer"], "inconsistent meta"
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"{path} is not a valid checkpoint ({type(e).__name__}: {msg})")
    return model.to(device), ckpt


def save(out_dir, model, optimizer, config, meta, ema=None, saved=(), weights=None, **state):
    """Write out_dir/ckpt.pt, all or nothing: the raw weights (weights: a state dict, else the model's; a LoRA
    run's: its adapters alone, over config['init_from']), their config, the optimizer (None: an export, not
    resumable), the EMA weights (ema: a module or None), the family's modules (saved: {name: module}) and
    state (iter_num, best_val, tokens, train_time). ValueError, in one line, when it cannot be written (the
    old file stays whole)."""
    sd = weights if weights is not None else lora.adapters(model) if config.get("lora_r") else model.state_dict()
    ckpt = dict(model=sd, model_args=asdict(model.config), config=config, meta=meta, **state,
                **{k: m.state_dict() for k, m in dict(saved).items()})
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if ema is not None:  # sample.py and eval.py use these weights (load)
        ckpt["ema"] = ema.state_dict()
    try:
        write_files(out_dir, {"ckpt.pt": lambda path: torch.save(ckpt, path)})
    except Exception as e:  # a full disk, a failing file system: ValueError, in one line
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"could not write {os.path.join(out_dir, 'ckpt.pt')} (is the disk full? "
                         f"{type(e).__name__}: {msg})")


def keep(out_dir, model, optimizer, config, meta, ema=None, saved=(), sharded=False, export=False, **state):
    """The run's checkpoint: ckpt.pt (save), or under FSDP every process's shards (shard.save); export (FSDP,
    every process calls it): the gathered weights into the single-file ckpt.pt that sample.py reads (weights
    only: a resume reads the shards). ValueError, in one line, when it cannot be written."""
    if not sharded:
        return save(out_dir, model, optimizer, config, meta, ema, saved, **state)
    if not export:
        return shard.save(out_dir, model, optimizer, dict(state, model_args=asdict(model.config), config=config,
                                                          meta=meta))
    sd = shard.full_state(model)
    if sd:  # the master's
        save(out_dir, model, None, config, meta, weights=lora.adapters(sd) if config["lora_r"] else sd, **state)


def resumed_options(path, defaults, keep):
    """{option: value} a resumed run takes from its checkpoint: every option of defaults but those in keep
    (set by a config file or the command line, or of this machine and this command), cast to the default's
    type. Reads the options only (mmap: not the weights). ValueError for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise ValueError(f"--init_from=resume: checkpoint {path} not found")
    try:
        options = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"]
        assert isinstance(options, dict), "no config"
    except Exception as e:
        raise ValueError(f"{path} is not a valid checkpoint ({type(e).__name__}: {str(e).strip()[:100]})")
    return {k: cast(k, v, defaults[k], path) for k, v in options.items() if k in defaults and k not in keep}


def start(init_from, fam, config, meta, device, ckpt_path, pre=None):
    """(model, ckpt) a run starts with, by --init_from: 'scratch' (fresh weights from the seed, the same on every
    process; ckpt None), 'resume' (the raw weights of out_dir's checkpoint, ckpt_path), or a checkpoint to
    fine-tune from (the EMA weights of an out_dir, or pre: a pretrained (model, ckpt) from families.pretrained).
    A checkpoint is refused with ValueError unless it fits the options: the model keeps its objective, its
    shape and, on a resume, the family's model options (fam.model_options, e.g. bd3_block); an option that said
    otherwise would be ignored and then written into the new checkpoint's config. A fine-tuned model of a family
    this one converts (fam.converts, e.g. AR -> block diffusion) gets this family's flags; one trained on a
    vocabulary the dataset's extends (an SFT set's EOS) gets fresh embedding rows for the new ids."""
    if init_from == "scratch":
        torch.manual_seed(config["seed"])
        args = {k: config[k] for k in ("block_size", "n_layer", "n_head", "n_embd", "dropout", *fam.model_options)}
        return GPT(GPTConfig(vocab_size=meta["vocab_size"], mask_id=meta["mask_id"], **args, **fam.flags)).to(device), None
    resume = init_from == "resume"
    path = ckpt_path if resume else init_from
    model, ckpt = pre or load(path, device, ema=not resume)
    objective, before = config["objective"], ckpt["config"].get("objective")
    if {k: getattr(model.config, k) for k in fam.flags} != fam.flags:  # another kind of model
        if resume or before not in fam.converts:
            raise ValueError(f"{path} was trained with objective={before}, not --objective={objective}")
    if resume and before != objective:
        raise ValueError(f"{path} was trained with objective={before}: resume it with --objective={before}")
    for key in SHAPE + (fam.model_options if resume else ()):
        if getattr(model.config, key) != config[key]:
            raise ValueError(f"--{key}={config[key]!r}, but {path} has {key}={getattr(model.config, key)!r}: a resumed "
                             f"or fine-tuned model keeps its shape (pass the run's config, or --{key}="
                             f"{getattr(model.config, key)!r})")
    if model.config.block_size < config["block_size"]:
        raise ValueError(f"--block_size={config['block_size']} exceeds the {model.config.block_size} of {path}")
    if resume:
        if not same_tokens(ckpt["meta"], meta) or ckpt["meta"]["vocab_size"] != meta["vocab_size"]:
            raise ValueError(f"{path} was trained on another vocabulary than --dataset={config['dataset']}'s")
        return model, ckpt
    if not same_tokens(ckpt["meta"], meta) or meta["vocab_size"] < model.config.vocab_size:
        raise ValueError(f"{path} was trained on another vocabulary than --dataset={config['dataset']}'s")
    # the same weights in a model with this family's flags and model options, its embedding (and head) grown
    # to the dataset's vocabulary: the new ids' rows freshly initialised, with the run's seed
    V, args = model.config.vocab_size, {**asdict(model.config), **fam.flags, **{k: config[k] for k in fam.model_options}}
    if args != asdict(model.config) or meta["vocab_size"] != V:
        torch.manual_seed(config["seed"])
        new = GPT(GPTConfig(**{**args, "vocab_size": meta["vocab_size"]})).to(device)
        sd, fresh = model.state_dict(), new.state_dict()
        for name in ("wte.weight", "lm_head.weight"):  # tied: both names hold the one matrix
            sd[name] = torch.cat([sd[name], fresh[name][V:]])
        new.load_state_dict(sd)
        model = new
    return model, ckpt


def restore(ckpt, path, optimizer, ema, saved):
    """A resumed run's state, in place: the optimizer, the EMA weights (ema: a module, or None for a run
    without them) and the family's modules (saved). ValueError for a checkpoint that lacks them, or for an
    EMA the options would drop (--ema_decay=0 on a run that keeps one)."""
    if "ema" in ckpt and ema is None:
        raise ValueError(f"--ema_decay=0, but {path} keeps EMA weights (the ones sample.py and eval.py use): leave "
                         f"--ema_decay out to keep averaging them with the run's {ckpt['config'].get('ema_decay')}")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        for key, module in dict(saved).items():  # e.g. DCD's teacher, as it was in the round being resumed
            module.load_state_dict(ckpt[key])
        return ckpt["iter_num"] + 0, float(ckpt["best_val"]), float(ckpt["train_time"]), ckpt["tokens"] + 0
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a checkpoint train.py can resume ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})")


def in_own_tokens(own, pairs, meta, config, model=None):
    """(pairs, meta) of an SFT run whose model has a tokenizer of its own (own: its meta; a fine-tune of a
    pretrained model, or the resume of one): the records' text encoded again in its tokens (tokenizer.recode),
    those whose prompt fits --block_size, and its vocabulary. In place, for a fine-tune (model: the pretrained
    one): the model in float32 (autocast computes in bf16; with LoRA as stored), and config takes its shape
    unless the command line gives one (start refuses that)."""
    if model is not None and model.config.shift:
        raise ValueError(f"{config['init_from']}: its outputs are shifted (position i predicts token i + 1: Dream, "
                         f"Fast-dLLM v2), which the samplers realign but train.py's losses do not: sample or evaluate it")
    T = config["block_size"]
    if config.get("dry_run") and model is not None:  # the memory plan alone: no tokenizer read, no records encoded
        pairs = {}
    else:
        pairs = fitting({s: [r for r in recode(rs, meta, own)[0] if len(r[0]) < T] for s, rs in pairs.items()},
                        config["dataset"], T)
    if model is not None:
        if not config.get("lora_r"):  # LoRA keeps the frozen base as stored (bf16: 2 bytes a weight)
            model.float()
        config.update({k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "bd3_block")
                       if k not in command_line_keys() and getattr(model.config, k)})  # (bd3_block: block diffusion's)
    return pairs, dict(own, task=meta.get("task"))


def saved_meta(path):
    """The meta (vocabulary) of a ckpt.pt, or {} when there is none to read (mmap: not the weights)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"]
    except Exception:
        return {}


def setup(config, fam, meta, device, pre, world, master, sharded_step=None):
    """What train.py trains: (model, optimizer, the family's training side, the EMA model or None, the run's
    state {iter_num, best_val, train_time, tokens, lora_base}). The model is start()'s (an FSDP resume builds
    it from the options, then reads its shards), LoRA's adapters over it (lora_r > 0), activation checkpointing,
    FSDP's shards; what a step will hold per process is printed (shard.plan) and checked against the memory
    there is (--dry_run stops after printing it); on a resume the optimizer, EMA and family state are read
    back. ValueError, in one line, for a checkpoint that does not fit the options."""
    o, resume = config, config["init_from"] == "resume"
    ckpt_path = os.path.join(o["out_dir"], "ckpt.pt")
    if o["init_from"] == "scratch" or sharded_step:  # nothing allocated yet: a lower bound of the model and logits
        V, n = meta["vocab_size"], 12 * o["n_layer"] * o["n_embd"] ** 2 + meta["vocab_size"] * o["n_embd"]
        check_memory(n * (16 / (world if o["fsdp"] else 1) + 4 * (o["ema_decay"] > 0)) + o["batch_size"] * o["block_size"] * V * 8,
                     f"the model and its logits (--n_layer={o['n_layer']}, --n_embd={o['n_embd']}, --batch_size="
                     f"{o['batch_size']}, --block_size={o['block_size']})", device)
    model, ckpt = start("scratch" if sharded_step and resume else o["init_from"], fam, config, meta, device,
                        ckpt_path=ckpt_path, pre=pre and pre[:2])
    state = dict(iter_num=0, best_val=float("inf"), train_time=0.0, tokens=0,
                 lora_base=ckpt.get("lora_base") if resume and ckpt else o["init_from"])  # the base LoRA adapts
    if o["lora_r"] and not (resume and ckpt):  # a resumed single-file LoRA checkpoint brings its adapters (load)
        lora.apply(model, o["lora_targets"], o["lora_r"], o["lora_alpha"], o["lora_dropout"])
    model.act_ckpt = o["act_ckpt"]
    plan, line = shard.plan_for(model, config, world)
    if master:
        print(line)
    if o["dry_run"]:
        raise SystemExit(0)
    cuda = str(device).startswith("cuda")
    check_memory(sum(plan.values()) - plan["weights"], "a training step (the memory plan above)", device)
    if o["fsdp"]:
        shard.wrap(model, bf16=o["dtype"] == "bfloat16" and cuda)
    optimizer = model.configure_optimizers(o["weight_decay"], o["learning_rate"], (o["beta1"], o["beta2"]),
                                           "cuda" if cuda else "cpu")
    obj = fam(config, meta, model)  # the family's training side: noise, loss, val loss, saved modules
    ema = copy.deepcopy(model).float().requires_grad_(False) if o["ema_decay"] else None  # float32, averaged
    if sharded_step and resume:
        state.update({k: v for k, v in shard.load(o["out_dir"], model, optimizer).items() if k in state})
    elif resume:
        state.update(zip(("iter_num", "best_val", "train_time", "tokens"),
                         restore(ckpt, ckpt_path, optimizer, ema, obj.saved)))
        if o["ema_decay"] and "ema" not in ckpt and master:  # a run that starts averaging now, from its weights
            print(f"--ema_decay={o['ema_decay']}: {ckpt_path} has no EMA weights; the average starts from its weights")
    return model, optimizer, obj, ema, state
