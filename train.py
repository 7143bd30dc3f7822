"""
Train a model of any family through one loop, nanoGPT style: masked diffusion (MDLM / LLaDA pretraining
and SFT), the autoregressive baseline, Duo and its distillation, block diffusion.

    python train.py config/shakespeare.py                       # one process, CPU or GPU
    torchrun --standalone --nproc_per_node=8 train.py config/shakespeare.py   # DDP
    python train.py config/shakespeare.py --init_from=resume    # continue from out_dir/ckpt.pt

Every step's global batch (token windows, times t, masks) is drawn from a generator seeded by (seed, step)
and then split among processes and micro-steps: N processes give the weights one process gives, and a
resumed run continues exactly as if never stopped. --objective names the model family (families.py): its
noise, loss, val bound, flags, options and saved state; this script looks it up once and never looks inside
a batch. Top to bottom: the options, their rules (check_options), the set-up (processes, data, the model:
checkpoint.py resumes and fine-tunes), the loop.
"""

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed import barrier, init_process_group, destroy_process_group
from tqdm import tqdm

import checkpoint
import lora
import shard
from configurator import (NON_NEGATIVE, PATH, POSITIVE, SEED, UNIT_OPEN, check, check_device, check_memory,
                          check_writable, command_line_keys, configure, fail, one_of, own, rule)
from families import FAMILIES, options, pretrained
from tokenizer import dataset_dir, load_data

# -----------------------------------------------------------------------------
# defaults: a small character-level masked diffusion model on Tiny Shakespeare
# I/O
out_dir = "out-shakespeare-char"
init_from = "scratch"   # 'scratch', 'resume' (from out_dir/ckpt.pt), or a checkpoint to fine-tune (SFT) from:
                        # an out_dir, or a pretrained folder in the Hugging Face layout (config.json, *.safetensors)
eval_interval = 250     # evaluate (and checkpoint) every this many steps, and at the end
eval_iters = 20         # val batches per evaluation: the same windows and masks every time
log_interval = 0        # >0: also print the training loss every this many steps
always_save_checkpoint = True  # False: save only when val improves
ema_decay = 0.0         # >0: keep an exponential moving average of the weights (0.9999 in MDLM/Duo), evaluated and saved
eval_only = False       # evaluate the checkpoint in out_dir (or --init_from's) and stop
overwrite = False       # a run from scratch (or a fine-tune) may replace a checkpoint already in out_dir
# data
dataset = "shakespeare_char"  # a folder of data/, or a path to a prepared folder (a token stream, or SFT pairs)
batch_size = 32         # sequences per micro-step and process
block_size = 256
gradient_accumulation_steps = 1  # in total, divided among the DDP processes (fewer than processes: one each)
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
objective = "mdlm"      # the model family (families.py): mdlm (masked diffusion), ar, duo (uniform-state),
                        # dcd (Duo's distillation of an init_from model) or bd3 (block diffusion)
# AdamW with linear warmup and cosine decay
learning_rate = 1e-3
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0         # 0: off
decay_lr = True
warmup_iters = 100
lr_decay_iters = 2000   # ~ max_iters
min_lr = 1e-4           # ~ learning_rate / 10
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
compile = False         # torch.compile the model
seed = 1337
# the families' own options (--schedule, --masking, --train_loss, --t_eps, --bd3_block, ...) and those past one
# device's memory (--fsdp, --act_ckpt, --dry_run; --lora_r, ...): their files declare defaults, rules and
# meanings (families.options(), shard.OPTIONS, lora.OPTIONS; python train.py --help lists them all)
OPTIONS = {**options(), **shard.OPTIONS, **lora.OPTIONS}
globals().update({k: default for k, (default, _, _) in OPTIONS.items()})
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
defaults = {k: globals()[k] for k in config_keys}


def check_options():
    """Every option against its range and the others, before any work (under torchrun every process stops
    here with the same line). Returns the family."""
    check(config, dict(
        eval_interval=POSITIVE, eval_iters=rule(lambda v: 0 < v < 10**9, "in [1, 10^9)"), log_interval=NON_NEGATIVE,
        batch_size=POSITIVE, block_size=POSITIVE, gradient_accumulation_steps=POSITIVE, n_layer=POSITIVE,
        n_head=POSITIVE, n_embd=POSITIVE, dropout=UNIT_OPEN, objective=one_of(*FAMILIES), learning_rate=POSITIVE,
        max_iters=rule(lambda v: 0 <= v < 10**9, "in [0, 10^9)"),  # get_batch: step < 10^9
        weight_decay=NON_NEGATIVE, beta1=UNIT_OPEN, beta2=UNIT_OPEN, grad_clip=NON_NEGATIVE, warmup_iters=NON_NEGATIVE,
        lr_decay_iters=NON_NEGATIVE, dtype=one_of("float32", "bfloat16"), seed=SEED, ema_decay=UNIT_OPEN,
        min_lr=rule(lambda v: 0 <= v <= learning_rate, f"in [0, learning_rate={learning_rate}]"),
        **{k: r for k, (_, r, _) in OPTIONS.items() if r}))
    fam = FAMILIES[objective]  # the family: the one lookup; from here on only its names (families.py)
    # an option of another family is a mistake on the command line; in a config file it is the task's recipe
    # for that family, which the same file serves for the baselines (config/sudoku.py --objective=ar)
    for key in sorted(command_line_keys() & set(options()) - set(fam.train_options)):
        if config[key] != defaults[key]:
            fail(f"--{key} is not an option of --objective={objective} (it reads {', '.join(fam.train_options) or 'none'})")
    if n_embd % n_head or (n_embd // n_head) % 2:
        fail(f"--n_embd={n_embd} must be divisible by --n_head={n_head} into heads of an even size (RoPE rotates pairs)")
    if init_from not in ("scratch", "resume") and not os.path.exists(init_from):
        fail(f"--init_from={init_from!r} must be 'scratch', 'resume' or a checkpoint to fine-tune from (not found)")
    check_device(device)
    if fsdp and ("RANK" not in os.environ or ema_decay):
        fail("--fsdp=True shards over torchrun's processes (torchrun --nproc_per_node=N train.py ...), without --ema_decay")
    if lora_r and (init_from == "scratch" or ema_decay):
        fail("--lora_r adapts a trained model: give --init_from=<an out_dir or a pretrained folder>, without --ema_decay")
    if gradient_accumulation_steps > world and gradient_accumulation_steps % world:
        fail(f"--gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of the {world} "
             f"processes (or at most {world}: one micro-step each)")
    check_writable(out_dir, "out_dir", folder=True)
    return fam


given = set()  # the options a config file or the command line set
globals().update(configure(defaults, given=given, notes={k: what for k, (_, _, what) in OPTIONS.items()}))
check(globals(), dict(out_dir=PATH, dataset=PATH, init_from=PATH))
ckpt_path = os.path.join(out_dir, "ckpt.pt")
sharded_step = shard.latest(out_dir) if init_from == "resume" or eval_only else None  # an FSDP run resumes from its shards
if eval_only and init_from == "scratch":  # evaluate the model out_dir holds, never fresh random weights
    if not os.path.exists(ckpt_path):
        fail(f"--eval_only evaluates a trained model, and {ckpt_path} does not exist (or give --init_from=<ckpt>)")
    init_from = "resume"
resume = init_from == "resume"
if resume:  # a resumed run goes on as it was configured: every option no config file or --key sets is the
    try:    # checkpoint's (its EMA, its recipe), except those of this machine and this command
        globals().update(checkpoint.resumed_options(  # the model's shape too, unless the command line gives it
            os.path.join(sharded_step, "state.pt") if sharded_step else ckpt_path, defaults,
            given - set(checkpoint.SHAPE) | command_line_keys() & given | {
                "out_dir", "init_from", "eval_only", "overwrite", "device", "dtype", "compile", "log_interval"}))
    except ValueError as e:
        fail(e)
config = {k: globals()[k] for k in config_keys}
world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's processes
fam = check_options()
if not eval_only and int(os.environ.get("RANK", 0)) == 0:  # the master writes out_dir; --eval_only only reads
    out_dir_lock = own(out_dir)
if not resume and not eval_only and not overwrite and os.path.exists(ckpt_path):
    fail(f"{ckpt_path} holds a trained model: continue it with --init_from=resume, choose another --out_dir, "
         f"or replace it with --overwrite=True")

# processes: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; gloo on CPU, nccl on GPU
ddp = int(os.environ.get("RANK", -1)) != -1
rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
master = rank == 0
if ddp:
    init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
accum = max(1, gradient_accumulation_steps // world)  # micro-steps per process (at least one: said at start-up)
G = batch_size * accum * world  # sequences in one optimizer step, over all processes
device_type = "cuda" if device.startswith("cuda") else "cpu"
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)
# data (tokenizer.load_data: a token stream, or SFT records; prepared on first use) and, to fine-tune a
# pretrained model in the Hugging Face layout (LLaDA), that model: the records are read in its own tokens
pre = None
try:
    meta, pairs = load_data(dataset, block_size, prepare=not ddp)  # pairs: {split: SFT records}, None for a stream
    fam.check(config, meta, pairs is not None)  # what the family cannot train on
    if init_from not in ("scratch", "resume") and os.path.isfile(os.path.join(init_from, "config.json")):
        if pairs is None:
            fail(f"--init_from={init_from} has a tokenizer of its own: it fine-tunes on SFT records, not "
                 f"{dataset}'s stream")
        pre = pretrained(init_from, "meta" if dry_run else device)  # (model, ckpt, family); --dry_run: its shape
        pairs, meta = checkpoint.in_own_tokens(pre[1]["meta"], pairs, meta, config, pre[0])  # config: its shape
    elif resume and pairs is not None and (own := checkpoint.saved_meta(ckpt_path)).get("tokenizer") == "hf":
        pairs, meta = checkpoint.in_own_tokens(own, pairs, meta, config)  # the resume of such a fine-tune
        globals().update({k: config[k] for k in ("n_layer", "n_head", "n_embd")})
except ValueError as e:
    fail(e)
sft, data_dir = pairs is not None, dataset_dir(dataset)


def get_batch(split, step, n, stream=0):
    """n clean rows of a split with their noise: windows of the token stream, or SFT rows. Drawn
    from a generator of its own per (seed, stream, step): stream 0 trains, 1 evaluates, and
    (seed * 3 + stream) * 10^9 + step gives every (seed, stream) pair its own range of seeds as long
    as step < 10^9, so every step's batch is a function of the step alone (exact resume, DDP)."""
    g = torch.Generator().manual_seed((seed * 3 + stream) * 10**9 + step)
    if sft:
        idx = torch.randint(len(pairs[split]), (n,), generator=g).tolist()
        x0, maskable = fam.sft_rows([pairs[split][i] for i in idx], block_size + fam.row_extra, meta["eos_id"], g,
                                    meta["mask_id"])
    else:
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size - 1, (n,), generator=g).tolist()
        x0 = torch.stack([torch.from_numpy(data[i:i + block_size + fam.row_extra].astype(np.int64)) for i in ix])
        maskable = torch.ones_like(x0, dtype=torch.bool)
    return obj.noise(x0, maskable, g, step, split == "val")


@torch.no_grad()
def estimate_val(net):
    """Val loss of a model on fixed rows and noise: the exact NLL of an AR model, the NLL bound of a
    diffusion one. net: the bare module (only the master evaluates, outside DDP) or its EMA."""
    net.eval()
    losses = []
    for k in range(eval_iters):
        with ctx:
            batch = [b.to(device) for b in get_batch("val", k, batch_size, stream=1)]
            losses.append(obj.val_loss(net, batch).item())
    net.train()
    return sum(losses) / len(losses)


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# the model (checkpoint.setup: fresh weights or a checkpoint's, LoRA, FSDP's shards, the memory plan, the
# optimizer, the EMA weights; on a resume their state as it was saved)
V = meta["vocab_size"]
check_memory(G * (block_size + 1) * 8 * 3, f"a step's batch ({G} rows of --block_size={block_size})")
try:
    model, optimizer, obj, ema_model, run_state = checkpoint.setup(config, fam, meta, device, pre, world, master,
                                                                   sharded_step)
except ValueError as e:
    fail(e)
iter_num, best_val, prev_time, tokens, lora_base = (run_state[k] for k in ("iter_num", "best_val", "train_time",
                                                                           "tokens", "lora_base"))
raw_model = model
if compile:
    model = torch.compile(model)
if ddp and not fsdp:
    model = DDP(model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)
if master:
    print(f"{objective}: {raw_model.num_params() / 1e6:.2f}M parameters | {dataset}, vocab {V} | {G} x "
          f"{'up to ' if sft else ''}{block_size} tokens per step ({world} process(es) x {accum} micro-steps x {batch_size}) | {device}")
    if accum * world > gradient_accumulation_steps:
        print(f"gradient_accumulation_steps={gradient_accumulation_steps} < {world} processes: one micro-step each, "
              f"so the global batch is {world}x that of one process")


def fmt_val(v):
    bits = f" = {v / math.log(2):.3f} bits/char" if meta["tokenizer"] == "char" else ""
    return f"val NLL{'' if fam.exact else ' bound'} {v:.4f} nats/token{bits}"


def stop(what, hint=""):
    """End the run in one line, on every process, saying what out_dir keeps: a NaN or inf never reaches the
    weights or a checkpoint, and a checkpoint that could not be written leaves the last one as it was."""
    pbar.close()
    fail(f"{what}; " + (f"{ckpt_path} keeps step {saved_iter}'s weights" if saved_iter is not None else
                        "no checkpoint was written") + hint)


def mfu_note(tok_s):
    mfu = raw_model.estimate_mfu(tok_s / world, block_size, torch.cuda.get_device_name() if device_type == "cuda" else "")
    return f", MFU {100 * mfu:.1f}%" if mfu else ""


# the loop
RETRY = " (lower --learning_rate, or raise --warmup_iters)"
saved_iter = iter_num if resume else None  # the step that ckpt_path holds
t0 = time.time()
start_iter, start_tokens, final_val, loss_ema = iter_num, tokens, float("nan"), None
pbar = tqdm(total=max_iters, initial=iter_num, disable=not master, unit="it", dynamic_ncols=True)
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr
    if (master or fsdp) and (iter_num % eval_interval == 0 or iter_num >= max_iters or eval_only):  # FSDP: all gather
        final_val = estimate_val(ema_model if ema_decay else raw_model)  # the EMA is the model that is kept
        raw_note = f" (EMA weights; the raw weights: {estimate_val(raw_model):.4f})" if ema_decay else ""
        if master:
            tqdm.write(f"step {iter_num}: {fmt_val(final_val)}{raw_note}")
        if eval_only:
            break
        if not math.isfinite(final_val):  # never checkpoint a broken model
            stop(f"step {iter_num}: the val loss is {final_val}: the run diverged", RETRY)
        if final_val < best_val or always_save_checkpoint:
            best_val = min(best_val, final_val)
            if iter_num > start_iter or iter_num >= max_iters:
                try:  # all or nothing: a full disk or Ctrl-C leaves the last checkpoint whole (FSDP: its shards)
                    checkpoint.keep(out_dir, raw_model, optimizer, config, meta, ema_model, obj.saved, sharded=fsdp,
                                    iter_num=iter_num, best_val=best_val, tokens=tokens, lora_base=lora_base,
                                    train_time=prev_time + time.time() - t0)
                except ValueError as e:
                    stop(e)
                saved_iter = iter_num
    if iter_num >= max_iters or eval_only:
        break

    obj.begin_step(iter_num, raw_model)  # e.g. DCD: a new round's teacher
    batch = get_batch("train", iter_num, G)
    for micro in range(accum):
        rows = slice((rank * accum + micro) * batch_size, (rank * accum + micro + 1) * batch_size)
        if fsdp:  # reduce-scatter the gradients on the last micro-step only
            model.set_requires_gradient_sync(micro == accum - 1)
        elif ddp:  # all-reduce them on the last micro-step only
            model.require_backward_grad_sync = micro == accum - 1
        with ctx:
            loss = obj.loss(model, [b[rows].to(device, non_blocking=True) for b in batch]) / accum
        loss.backward()
    # the gradient norm (clipped when grad_clip > 0) is the same on every process after the all-reduce:
    # a diverged step stops them all before it can reach the weights
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip or math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: the norm over all shards
    if not torch.isfinite(norm):
        stop(f"step {iter_num}: the gradient norm is {norm.item()}: the run diverged", RETRY)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema_decay:  # ema <- decay * ema + (1 - decay) * weights, in float32
        for e, p in zip(ema_model.parameters(), raw_model.parameters()):
            e.lerp_(p.detach().float(), 1 - ema_decay)

    iter_num += 1
    tokens += len(batch[0]) * (batch[0].size(1) - fam.row_extra)  # what the model read: G x block_size, or fewer for SFT
    if master:
        lossf = loss.item() * accum  # this process's last micro-batch
        loss_ema = lossf if loss_ema is None else 0.9 * loss_ema + 0.1 * lossf
        if log_interval and iter_num % log_interval == 0:
            tqdm.write(f"iter {iter_num}: loss {lossf:.6f}")
        tok_s = (tokens - start_tokens) / (time.time() - t0)
        pbar.set_postfix_str(f"loss {loss_ema:.4f}, {tok_s:,.0f} tok/s{mfu_note(tok_s)}, lr {lr:.1e}", refresh=False)
        pbar.update(1)
pbar.close()

if master:
    wall = time.time() - t0
    tok_s = (tokens - start_tokens) / wall
    print(f"done: {fmt_val(final_val)} (best {best_val:.4f}) | {iter_num} iters | {tokens / 1e6:.1f}M tokens seen | "
          f"{wall / 60:.1f} min | {tok_s:,.0f} tok/s{mfu_note(tok_s)}")
if fsdp and saved_iter is not None and not eval_only:  # the single-file ckpt.pt that sample.py reads
    checkpoint.keep(out_dir, raw_model, None, config, meta, sharded=True, export=True, iter_num=iter_num,
                    best_val=best_val, tokens=tokens, lora_base=lora_base, train_time=prev_time + time.time() - t0)
if ddp:
    barrier()  # wait for the master's last evaluation and checkpoint: a rank that leaves early aborts gloo
    destroy_process_group()
