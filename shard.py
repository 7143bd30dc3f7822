"""
Training past one device's memory: FSDP2 (train.py --fsdp=True under torchrun), its sharded checkpoints,
their export, and the memory plan every run prints.

DDP keeps the whole model, its gradients and AdamW's two moments on every process: 16 bytes a weight (128 GB
for LLaDA-8B) before activations. FSDP2 (torch.distributed.fsdp.fully_shard) shards each transformer layer
and the rest of the model over the N processes, so each keeps 16/N bytes a weight and gathers one layer's
weights at a time for its forward and backward; gradients are reduce-scattered (averaged, as DDP's are), so
N processes give the weights one process gives, to float tolerance. On GPUs the gathered weights compute in
bf16 while the shards (the master weights), gradient reductions and AdamW stay float32.

Checkpoints (torch.distributed.checkpoint): every process writes its shards of the weights and optimizer in
parallel into out_dir/ckpt.dcp/step-<n>.tmp, which becomes step-<n> when all have written, and the file
`latest` then names it (written all or nothing, os.replace): a kill -9 at any point leaves the step before it
loadable. A resume reads it on any number of processes (the shards are laid out again). At the end of a run
the master also writes the single-file out_dir/ckpt.pt (checkpoint.save, weights only) that sample.py,
eval.py and bench.py read; `python shard.py <out_dir> [--hf=<folder>]` writes it (or LLaDA's Hugging Face
layout) from the latest sharded step, in one process.
"""

import os
import shutil
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

DIR = "ckpt.dcp"
# the train.py options it reads: {name: (default, rule, what it does)}
OPTIONS = {"fsdp": (False, None, "FSDP2 under torchrun: weights, gradients and AdamW sharded over the processes"),
           "act_ckpt": (False, None, "activation checkpointing: each layer recomputed in backward (long SFT rows)"),
           "dry_run": (False, None, "print the memory plan and stop")}


def wrap(model, bf16=False):
    """fully_shard every transformer layer, then the rest of the model (embedding, final norm, head), in place;
    bf16: gathered weights compute in bf16, gradients are reduced in float32."""
    # a layer also returns its fresh keys/values (views of the q/k/v product, for the cached samplers), which
    # training never changes in place: FSDP2's warning about in-place ops on returned views does not apply
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def latest(out_dir):
    """The folder of the last complete sharded step of out_dir, or None."""
    path = os.path.join(out_dir, DIR, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        step = os.path.join(out_dir, DIR, f.read().strip())
    return step if os.path.isfile(os.path.join(step, "state.pt")) else None


def save(out_dir, model, optimizer, state):
    """Every process: its shards of the weights and the optimizer into step-<iter_num>, then (the master) the
    run's state (model_args, config, meta, iter_num, ...: torch.save of plain values) and the `latest` name;
    earlier steps are removed. ValueError, in one line, when a write fails (`latest` still names the last)."""
    root, master = os.path.join(out_dir, DIR), dist.get_rank() == 0
    name = f"step-{state['iter_num']:09d}"
    tmp = os.path.join(root, name + ".tmp")
    try:
        if master:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
        if master:
            torch.save(state, os.path.join(tmp, "state.pt"))
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            os.replace(tmp, os.path.join(root, name))
            with open(os.path.join(root, "latest.tmp"), "w") as f:
                f.write(name)
            os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
            for old in os.listdir(root):
                if old.startswith("step-") and old != name:
                    shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    except Exception as e:
        raise ValueError(f"could not write {tmp} ({type(e).__name__}: {str(e).strip()[:150]})")
    dist.barrier()


def load(out_dir, model, optimizer):
    """Every process: the latest step's shards into the (sharded) model and optimizer, on any number of processes.
    Returns the run's state; ValueError when there is none."""
    step = latest(out_dir)
    if step is None:
        raise ValueError(f"--init_from=resume: {os.path.join(out_dir, DIR)} holds no complete sharded step")
    state = torch.load(os.path.join(step, "state.pt"), weights_only=True)
    msd, osd = get_state_dict(model, optimizer)
    dcp.load({"model": msd, "optim": osd}, checkpoint_id=step)
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)
    return state


def full_state(model):
    """The whole model's weights, gathered on the master's CPU (every process calls it); {} elsewhere."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if dist.get_rank() == 0 else {}


def plan(n_params, trainable, n_layer, n_embd, n_hidden, V, tokens, world, *, fsdp, act_ckpt, base_bytes=4,
         compute_bytes=4):
    """Per-process bytes of a training step, an estimate: {what: bytes}. Weights at base_bytes a weight (sharded
    by FSDP), gradients and AdamW's moments at 4 + 8 bytes a trainable weight (sharded), one layer gathered
    (FSDP); activations of tokens = batch_size x block_size positions a micro-step: per layer and position about
    16 n_embd + 3 n_hidden values at compute_bytes (only the layer's input with act_ckpt, plus one layer's
    recomputed), and the float32 logits with their gradient."""
    s = world if fsdp else 1
    layer = (n_params - V * n_embd) / max(n_layer, 1)
    per_layer = tokens * (16 * n_embd + 3 * n_hidden) * compute_bytes
    acts = (tokens * n_embd * compute_bytes * n_layer + per_layer) if act_ckpt else per_layer * n_layer
    return {"weights": n_params * base_bytes / s + (2 * layer * base_bytes if fsdp else 0),
            "gradients": trainable * 4 / s, "AdamW moments": trainable * 8 / s,
            "activations": acts, "logits": tokens * V * 4 * 2}


def show_plan(p):
    """One line: each part and the total, in GiB."""
    return " + ".join(f"{k} {v / 2**30:,.2f}" for k, v in p.items()) + f" = {sum(p.values()) / 2**30:,.2f} GiB per process"


def plan_for(model, o, world):
    """(plan, the line train.py prints) of a model (LoRA applied; the meta device will do) under train.py's
    options o on world processes."""
    c, trainable = model.config, sum(p.numel() for p in model.parameters() if p.requires_grad)
    down = model.layers[0].mlp.down
    hidden = getattr(down, "base", down).in_features  # the SwiGLU width (LoRA's wrapper holds the base)
    p = plan(model.num_params(), trainable if o["lora_r"] else model.num_params(), c.n_layer, c.n_embd, hidden,
             c.vocab_size, o["batch_size"] * o["block_size"], world, fsdp=o["fsdp"], act_ckpt=o["act_ckpt"],
             base_bytes=model.wte.weight.element_size(), compute_bytes=4 if o["dtype"] == "float32" else 2)
    mode = ("FSDP" if o["fsdp"] else "DDP" if world > 1 else "one process") + (", LoRA" if o["lora_r"] else "") + \
        (", activation checkpointing" if o["act_ckpt"] else "")
    return p, f"memory plan ({mode}; {trainable / 1e6:,.2f}M of {model.num_params() / 1e6:,.2f}M weights trained): " \
        + show_plan(p)


if __name__ == "__main__":  # export: python shard.py <out_dir> [--hf=<folder>]
    import checkpoint
    from model import GPT, GPTConfig
    args = [a for a in sys.argv[1:] if not a.startswith("--hf=")]
    hf = next((a[5:] for a in sys.argv[1:] if a.startswith("--hf=")), "")
    if len(args) != 1:
        sys.exit("usage: python shard.py <out_dir> [--hf=<folder>]   (the latest sharded step -> ckpt.pt or a HF folder)")
    step = latest(args[0])
    if step is None:
        sys.exit(f"error: {os.path.join(args[0], DIR)} holds no complete sharded step")
    state = torch.load(os.path.join(step, "state.pt"), weights_only=True)
    model = GPT(GPTConfig(**state["model_args"]))
    sd = model.state_dict()
    dcp.load({"model": sd}, checkpoint_id=step)  # one process: the shards read into whole tensors
    model.load_state_dict(sd)
    if hf:
        from pretrained import save_pretrained
        save_pretrained(model, hf, eos_token_id=state["meta"].get("eos_id", -1))
    else:
        checkpoint.save(args[0], model, None, **{k: v for k, v in state.items() if k != "model_args"})
    print(f"wrote {hf or os.path.join(args[0], 'ckpt.pt')} from {step}")
