"""
Train a masked diffusion language model (MDLM / LLaDA pretraining) or, with --objective=ar, the
autoregressive baseline, through the same loop. nanoGPT style:

    python train.py config/shakespeare.py                       # one process, CPU or GPU
    torchrun --standalone --nproc_per_node=8 train.py config/shakespeare.py   # DDP
    python train.py config/shakespeare.py --init_from=resume    # continue from out_dir/ckpt.pt

Every step's global batch (token windows, times t, masks) is drawn from a generator seeded by
(seed, step) and then split among processes and micro-steps: N processes give the weights that one
process gives with the same global batch, and a resumed run continues exactly as if never stopped.

The objective names a model family (families.py: diffusion.MDLM, ar.AR, duo.Duo, duo.DCD, bd3.BD3): how a batch
of clean rows is noised, the loss, the val bound, the model's flags and any extra state to checkpoint.
This script looks it up once ("the family" below) and never looks inside a batch.

    python train.py config/shakespeare_duo.py                   # uniform-state diffusion (Duo)
    python train.py config/shakespeare_dcd.py                   # its consistency distillation
    python train.py config/shakespeare_bd3.py                   # block diffusion (BD3-LM)
"""

import copy
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed import barrier, init_process_group, destroy_process_group
from tqdm import tqdm

import diffusion
from configurator import (NON_NEGATIVE, PATH, POSITIVE, SEED, UNIT_OPEN, cast, check, check_device, check_memory,
                          check_writable, command_line_keys, configure, fail, one_of, own, rule)
from families import FAMILIES, pretrained
from model import GPT, GPTConfig, load_checkpoint
from tokenizer import check_stream, dataset_dir, load_meta, load_sft, recode, same_tokens, write_files


# -----------------------------------------------------------------------------
# defaults: a small character-level masked diffusion model on Tiny Shakespeare
# I/O
out_dir = "out-shakespeare-char"
init_from = "scratch"   # 'scratch', 'resume' (from out_dir/ckpt.pt), or a checkpoint to fine-tune (SFT) from:
                        # an out_dir, or a LLaDA folder in the Hugging Face layout (config.json, *.safetensors)
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
# objective
objective = "mdlm"      # the model family (families.py): 'mdlm' (masked diffusion), 'ar' (causal next-token loss),
                        # 'duo' (uniform-state diffusion), 'dcd' (Duo's consistency distillation of an init_from model)
                        # or 'bd3' (block diffusion: autoregressive over blocks, masked diffusion within one)
schedule = "linear"     # noise schedule alpha_t, see diffusion.SCHEDULES
masking = "rate"        # 'rate': each token masked w.p. 1 - alpha_t (MDLM); 'count': exactly l ~ U{1..L} (LLaDA)
train_loss = "elbo"     # 'elbo': the NELBO (a bound); 'flat': the mean CE of all masked tokens (a surrogate, see diffusion.flat_weight)
t_eps = 1e-3            # t ~ U(t_eps, 1) (masked and uniform-state diffusion)
antithetic = True       # low-discrepancy times across the global batch
curriculum_iters = 0    # duo: the first this many steps read the Gaussian curriculum's soft input (duo.noise)
tau = 1e-3              # duo: the curriculum's softmax temperature
dcd_delta = 0.02        # dcd: the teacher's time step delta in the first round; it doubles every round
dcd_round_iters = 200   # dcd: steps per round; the teacher is the student copied at the start of each
bd3_block = 4           # bd3: tokens per block (1: autoregression, block_size: MDLM)
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
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
defaults = {k: globals()[k] for k in config_keys}
# Under torchrun every rank meets the same bad input and says so. Python's stderr is unbuffered, so
# sys.exit(msg) writes msg and its newline in two calls and two ranks' lines can run into one;
# line-buffered, each line leaves in one write (tqdm's '\r' flushes too).
sys.stderr.reconfigure(line_buffering=True, write_through=False)
given = set()  # the options a config file or the command line set
globals().update(configure(defaults, given=given))
check(globals(), dict(out_dir=PATH, dataset=PATH, init_from=PATH))
ckpt_path = os.path.join(out_dir, "ckpt.pt")
if eval_only and init_from == "scratch":  # evaluate the model out_dir holds, never fresh random weights
    if not os.path.exists(ckpt_path):
        fail(f"--eval_only evaluates a trained model, and {ckpt_path} does not exist (or give --init_from=<ckpt>)")
    init_from = "resume"
if init_from == "resume":
    # a resumed run goes on as it was configured: every option that no config file or --key sets is the
    # checkpoint's (its EMA, its recipe), except those of this machine and this command
    if not os.path.isfile(ckpt_path):
        fail(f"--init_from=resume: checkpoint {ckpt_path} not found")
    try:  # mmap: the options without reading the weights
        was = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)["config"]
        assert isinstance(was, dict), "no config"
    except Exception as e:
        fail(f"{ckpt_path} is not a valid checkpoint ({type(e).__name__}: {str(e).strip()[:100]})")
    this_run = {"out_dir", "init_from", "eval_only", "overwrite", "device", "dtype", "compile", "log_interval"}
    globals().update({k: cast(k, v, defaults[k], ckpt_path) for k, v in was.items()
                      if k in defaults and k not in given | this_run})
config = {k: globals()[k] for k in config_keys}
# every option against its range and the others, before any work (under torchrun every process
# stops here with the same line)
check(config, dict(
    eval_interval=POSITIVE, eval_iters=rule(lambda v: 0 < v < 10**9, "in [1, 10^9)"), log_interval=NON_NEGATIVE,
    batch_size=POSITIVE,
    block_size=POSITIVE, gradient_accumulation_steps=POSITIVE, n_layer=POSITIVE, n_head=POSITIVE, n_embd=POSITIVE,
    dropout=UNIT_OPEN, objective=one_of(*FAMILIES), schedule=one_of(*diffusion.SCHEDULES),
    masking=one_of("rate", "count"), train_loss=one_of("elbo", "flat"), t_eps=rule(lambda v: 0 < v < 1, "in (0, 1)"),
    learning_rate=POSITIVE, max_iters=rule(lambda v: 0 <= v < 10**9, "in [0, 10^9)"),  # get_batch: step < 10^9
    weight_decay=NON_NEGATIVE, beta1=UNIT_OPEN, beta2=UNIT_OPEN,
    grad_clip=NON_NEGATIVE, warmup_iters=NON_NEGATIVE, lr_decay_iters=NON_NEGATIVE,
    min_lr=rule(lambda v: 0 <= v <= learning_rate, f"in [0, learning_rate={learning_rate}]"),
    dtype=one_of("float32", "bfloat16"), seed=SEED, curriculum_iters=NON_NEGATIVE,
    tau=POSITIVE, ema_decay=UNIT_OPEN, dcd_delta=rule(lambda v: 0 < v < 1, "in (0, 1)"), dcd_round_iters=POSITIVE,
    bd3_block=rule(lambda v: 0 < v <= block_size, f"in [1, --block_size={block_size}]")))
fam = FAMILIES[objective]  # the family: the one lookup; from here on only its names (families.py)
# an option of another family is a mistake on the command line; in a config file it is the task's recipe
# for that family, which the same file serves for the baselines (config/sudoku.py --objective=ar)
for key in sorted(command_line_keys() & {k for f in FAMILIES.values() for k in f.options} - set(fam.options)):
    if config[key] != defaults[key]:
        fail(f"--{key} is not an option of --objective={objective} (it reads {', '.join(fam.options) or 'none'})")
if n_embd % n_head or (n_embd // n_head) % 2:
    fail(f"--n_embd={n_embd} must be divisible by --n_head={n_head} into heads of an even size (RoPE rotates pairs)")
if init_from not in ("scratch", "resume") and not os.path.exists(init_from):
    fail(f"--init_from={init_from!r} must be 'scratch', 'resume' or a checkpoint to fine-tune from (not found)")
check_device(device)
world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's processes
if gradient_accumulation_steps > world and gradient_accumulation_steps % world:
    fail(f"--gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of the {world} processes "
         f"(or at most {world}: one micro-step each)")
check_writable(out_dir, "out_dir", folder=True)


if not eval_only and int(os.environ.get("RANK", 0)) == 0:  # the master writes out_dir; --eval_only only reads
    out_dir_lock = own(out_dir)
if init_from != "resume" and not eval_only and not overwrite and os.path.exists(ckpt_path):
    fail(f"{ckpt_path} holds a trained model: continue it with --init_from=resume, choose another --out_dir, "
         f"or replace it with --overwrite=True")
# -----------------------------------------------------------------------------

# processes: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; gloo on CPU, nccl on GPU
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
else:
    rank, world = 0, 1
master = rank == 0
# micro-steps per process: the total split among the processes, or one each when there are fewer
# micro-steps than processes (the global batch then grows with the processes, said at start-up)
accum = max(1, gradient_accumulation_steps // world)
G = batch_size * accum * world  # sequences in one optimizer step, over all processes
device_type = "cuda" if device.startswith("cuda") else "cpu"
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)
# data: data/<dataset>/ (or any folder given by path) with meta.pkl and either train.bin / val.bin (a token
# stream: pretraining) or train_sft.pkl / val_sft.pkl (prompt/response pairs: SFT); prepared on first use
data_dir = dataset_dir(dataset)
if not any(os.path.exists(os.path.join(data_dir, f)) for f in ("val.bin", "val_sft.pkl")):
    prepare = os.path.join(data_dir, "prepare.py")
    if not os.path.exists(prepare):
        fail(f"unknown dataset {dataset!r}: no {os.path.relpath(prepare)}")
    if ddp:
        fail(f"dataset {dataset!r} is not prepared; run python {os.path.relpath(prepare)} first")
    print(f"preparing {dataset} ...")
    if subprocess.run([sys.executable, prepare]).returncode:
        sys.exit(1)  # prepare.py has said why in one line
try:
    meta = load_meta(data_dir)
except ValueError as e:
    fail(e)
mask_id = meta["mask_id"]
sft = os.path.exists(os.path.join(data_dir, "train_sft.pkl"))
try:
    fam.check(config, meta, sft)  # what the family cannot train on
except ValueError as e:
    fail(e)
pre = None  # a pretrained model in the Hugging Face layout (LLaDA) to fine-tune: it reads its own tokens
hf_init = init_from not in ("scratch", "resume") and os.path.isfile(os.path.join(init_from, "config.json"))
if hf_init and not sft:
    fail(f"--init_from={init_from} has a tokenizer of its own: it fine-tunes on SFT records, not {dataset}'s stream")
if sft:  # (prompt, response[, holes]) records: tokenizer.py's SFT contract
    try:
        pairs = {split: load_sft(data_dir, split, block_size, meta["vocab_size"]) for split in ("train", "val")}
        if hf_init:
            pre = pretrained(init_from, device)  # (model, ckpt, family); the records' text in its tokens:
            pairs = {s: [r for r in recode(rs, meta, pre[1]["meta"])[0] if len(r[0]) < block_size]
                     for s, rs in pairs.items()}
            meta, mask_id = dict(pre[1]["meta"], task=meta.get("task")), pre[0].config.mask_id
            pre[0].float()  # trained in float32 (autocast computes in bf16); its shape, not a config file's
            shape = {k: getattr(pre[0].config, k) for k in ("n_layer", "n_head", "n_embd")}
            config.update({k: v for k, v in shape.items() if k not in command_line_keys()})
            globals().update({k: config[k] for k in ("n_layer", "n_head", "n_embd")})
    except ValueError as e:
        fail(e)
    if not pairs["train"] or not pairs["val"]:
        fail(f"no SFT record of {dataset} leaves room for a response in --block_size={block_size}")
else:
    for split in ("train", "val"):
        try:
            n = check_stream(data_dir, split, meta["vocab_size"])
        except ValueError as e:
            fail(e)
        if n < block_size + 2:
            fail(f"the {split} split of {dataset} has {n} tokens, too few for --block_size={block_size}")


shift = fam.shift  # an AR row is one token longer than the model's input: the last target
val_name = "NLL" if fam.exact else "NLL bound"


def get_batch(split, step, n, stream=0):
    """n clean rows of a split with their noise: windows of the token stream, or SFT rows. Drawn
    from a generator of its own per (seed, stream, step): stream 0 trains, 1 evaluates, and
    (seed * 3 + stream) * 10^9 + step gives every (seed, stream) pair its own range of seeds as long
    as step < 10^9, so every step's batch is a function of the step alone (exact resume, DDP)."""
    g = torch.Generator().manual_seed((seed * 3 + stream) * 10**9 + step)
    if sft:
        idx = torch.randint(len(pairs[split]), (n,), generator=g).tolist()
        x0, maskable = fam.sft_rows([pairs[split][i] for i in idx], block_size + shift, meta["eos_id"], g, mask_id)
    else:
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size - 1, (n,), generator=g)
        x0 = torch.stack([torch.from_numpy(data[i:i + block_size + 1].astype(np.int64)) for i in ix.tolist()])
        x0 = x0[:, :block_size + shift]
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


def grow_vocab(model, old_meta):
    """A pretrained model for a dataset whose vocabulary adds special tokens (EOS) at the end of the
    checkpoint's: the same weights, plus freshly initialised embedding rows for the new ids."""
    old, new = model.config.vocab_size, meta["vocab_size"]
    if not same_tokens(old_meta, meta) or new < old:
        fail(f"{init_from} was trained on another vocabulary than --dataset={dataset}'s")
    if new == old:
        return model
    torch.manual_seed(seed)
    grown = GPT(GPTConfig(**{**asdict(model.config), "vocab_size": new})).to(device)
    sd = model.state_dict()
    emb = grown.wte.weight.detach().clone()
    emb[:old] = sd["wte.weight"]
    sd["wte.weight"] = sd["lm_head.weight"] = emb  # tied: one matrix
    grown.load_state_dict(sd)
    return grown


def as_family(model):
    """A model of a family this one converts (fam.converts, e.g. AR -> block diffusion): the same weights
    in a model with this family's flags (its attention)."""
    converted = GPT(GPTConfig(**{**asdict(model.config), **fam.flags})).to(device)
    converted.load_state_dict(model.state_dict())
    return converted


# model and optimizer, from scratch, from the checkpoint (resume), or from a pretrained one (fine-tune)
def from_checkpoint(path):
    """(model, ckpt) of a checkpoint this run resumes or fine-tunes, refused in one line unless it fits
    the options: the model keeps its objective and shape, so an option that says otherwise is a mistake
    (it would be ignored and then written into the new checkpoint's config)."""
    try:
        # resume the raw weights, fine-tune the EMA (a pretrained folder: loaded with the data)
        model, ck = pre[:2] if pre else load_checkpoint(path, device, ema=init_from != "resume")
    except ValueError as e:
        fail(e)
    was = ck["config"].get("objective")
    if {k: getattr(model.config, k) for k in fam.flags} != fam.flags:  # another kind of model
        if init_from == "resume" or was not in fam.converts:
            fail(f"{path} was trained with objective={was}, not --objective={objective}")
        model = as_family(model)
    if init_from == "resume" and was != objective:
        fail(f"{path} was trained with objective={was}: resume it with --objective={was}")
    for key in ("n_layer", "n_head", "n_embd", "dropout"):
        if getattr(model.config, key) != config[key]:
            fail(f"--{key}={config[key]!r}, but {path} has {key}={getattr(model.config, key)!r}: a resumed or "
                 f"fine-tuned model keeps its shape (pass the run's config, or --{key}={getattr(model.config, key)!r})")
    if model.config.block_size < block_size:
        fail(f"--block_size={block_size} exceeds the {model.config.block_size} of {path}")
    return model, ck


# what a step will hold, a lower estimate, against the memory there is: a typo in a size stops here
V = meta["vocab_size"]
check_memory(G * (block_size + 1) * 8 * 3, f"a step's batch ({G} rows of --block_size={block_size})")
check_memory((12 * n_layer * n_embd**2 + V * n_embd) * (16 + 4 * (ema_decay > 0)) + batch_size * block_size * V * 8,
             f"the model and its logits (--n_layer={n_layer}, --n_embd={n_embd}, --batch_size={batch_size}, "
             f"--block_size={block_size})", device)
iter_num, best_val, prev_time, tokens = 0, float("inf"), 0.0, 0
if init_from == "resume":
    model, ckpt = from_checkpoint(ckpt_path)
    if not same_tokens(ckpt["meta"], meta) or ckpt["meta"]["vocab_size"] != meta["vocab_size"]:
        fail(f"{ckpt_path} was trained on another vocabulary than --dataset={dataset}'s")
    try:
        iter_num, best_val, prev_time, tokens = (ckpt["iter_num"] + 0, float(ckpt["best_val"]),
                                                 float(ckpt["train_time"]), ckpt["tokens"] + 0)
    except (KeyError, TypeError, ValueError) as e:
        fail(f"{ckpt_path} is not a checkpoint train.py can resume ({type(e).__name__}: {e})")
elif init_from != "scratch":  # fine-tune: the pretrained weights, a fresh optimizer and schedule
    model, pre_ckpt = from_checkpoint(init_from)
    model = grow_vocab(model, pre_ckpt["meta"])
    del pre_ckpt
else:
    torch.manual_seed(seed)  # the same initial weights on every process
    model = GPT(GPTConfig(block_size=block_size, vocab_size=meta["vocab_size"], mask_id=mask_id, n_layer=n_layer,
                          n_head=n_head, n_embd=n_embd, dropout=dropout, **fam.flags)).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
raw_model = model
obj = fam(config, meta, raw_model)  # the family's training side: noise, loss, val loss, extra state
if ema_decay:  # a float32 copy of the weights, averaged over the steps (MDLM and Duo train with 0.9999)
    ema_model = copy.deepcopy(raw_model).float().requires_grad_(False)
if init_from == "resume":
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if "ema" in ckpt and not ema_decay:
            fail(f"--ema_decay=0, but {ckpt_path} keeps EMA weights (the ones sample.py and eval.py use): leave "
                 f"--ema_decay out to keep averaging them with the run's {was.get('ema_decay')}")
        if ema_decay and "ema" in ckpt:
            ema_model.load_state_dict(ckpt["ema"])
        elif ema_decay and master:  # a run that starts averaging now: from the weights it resumes
            print(f"--ema_decay={ema_decay}: {ckpt_path} has no EMA weights; the average starts from its weights")
        for key, module in obj.extra.items():  # e.g. DCD's teacher, as it was in the round being resumed
            module.load_state_dict(ckpt[key])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        fail(f"{ckpt_path} is not a checkpoint train.py can resume ({type(e).__name__}: {str(e).splitlines()[0]})")
    del ckpt
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)
if master:
    print(f"{objective}: {raw_model.num_params() / 1e6:.2f}M parameters | {dataset}, vocab {meta['vocab_size']} | "
          f"{G} x {'up to ' if sft else ''}{block_size} tokens per step ({world} process(es) x {accum} micro-steps x {batch_size}) | {device}")
    if accum * world > gradient_accumulation_steps:
        print(f"gradient_accumulation_steps={gradient_accumulation_steps} < {world} processes: one micro-step each, "
              f"so the global batch is {world}x that of one process")


def fmt_val(v):
    bits = f" = {v / math.log(2):.3f} bits/char" if meta["tokenizer"] == "char" else ""
    return f"val {val_name} {v:.4f} nats/token{bits}"


def saved_note():
    """What a run that stops now leaves in out_dir."""
    return f"{ckpt_path} keeps step {saved_iter}'s weights" if saved_iter is not None else "no checkpoint was written"


def diverged(what):
    """A NaN or inf stops the run, on every process, before it reaches the weights or a checkpoint."""
    pbar.close()
    fail(f"step {iter_num}: {what}: the run diverged; {saved_note()} (lower --learning_rate, or raise --warmup_iters)")


# the loop
saved_iter = iter_num if init_from == "resume" else None  # the step that ckpt_path holds
t0 = time.time()
start_iter, start_tokens, final_val, loss_ema = iter_num, tokens, float("nan"), None
pbar = tqdm(total=max_iters, initial=iter_num, disable=not master, unit="it", dynamic_ncols=True)
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr
    if master and (iter_num % eval_interval == 0 or iter_num >= max_iters or eval_only):
        final_val = estimate_val(ema_model if ema_decay else raw_model)  # the EMA is the model that is kept
        raw_note = f" (EMA weights; the raw weights: {estimate_val(raw_model):.4f})" if ema_decay else ""
        tqdm.write(f"step {iter_num}: {fmt_val(final_val)}{raw_note}")
        if eval_only:
            break
        if not math.isfinite(final_val):  # never checkpoint a broken model
            diverged(f"the val loss is {final_val}")
        if final_val < best_val or always_save_checkpoint:
            best_val = min(best_val, final_val)
            if iter_num > start_iter or iter_num >= max_iters:
                ckpt = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                            model_args=asdict(raw_model.config), iter_num=iter_num, best_val=best_val,
                            tokens=tokens, train_time=prev_time + time.time() - t0, config=config, meta=meta)
                ckpt.update({key: module.state_dict() for key, module in obj.extra.items()})
                if ema_decay:  # sample.py and eval.py use these weights (model.load_checkpoint)
                    ckpt["ema"] = ema_model.state_dict()
                try:  # all or nothing: a full disk or Ctrl-C leaves the last checkpoint whole
                    write_files(out_dir, {"ckpt.pt": lambda path: torch.save(ckpt, path)})
                except Exception as e:
                    pbar.close()
                    fail(f"could not write {ckpt_path} (is the disk full? {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); {saved_note()}")
                saved_iter = iter_num
    if iter_num >= max_iters or eval_only:
        break

    obj.begin_step(iter_num, raw_model)  # e.g. DCD: a new round's teacher
    batch = get_batch("train", iter_num, G)
    for micro in range(accum):
        rows = slice((rank * accum + micro) * batch_size, (rank * accum + micro + 1) * batch_size)
        if ddp:  # all-reduce the gradients on the last micro-step only
            model.require_backward_grad_sync = micro == accum - 1
        with ctx:
            loss = obj.loss(model, [b[rows].to(device, non_blocking=True) for b in batch]) / accum
        loss.backward()
    # the gradient norm (clipped when grad_clip > 0) is the same on every process after the all-reduce:
    # a diverged step stops them all before it can reach the weights
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if not torch.isfinite(norm):
        diverged(f"the gradient norm is {norm.item()}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema_decay:  # ema <- decay * ema + (1 - decay) * weights, in float32
        for e, p in zip(ema_model.parameters(), raw_model.parameters()):
            e.lerp_(p.detach().float(), 1 - ema_decay)

    iter_num += 1
    tokens += len(batch[0]) * (batch[0].size(1) - shift)  # what the model read: G x block_size, or fewer for SFT rows
    if master:
        lossf = loss.item() * accum  # this process's last micro-batch
        loss_ema = lossf if loss_ema is None else 0.9 * loss_ema + 0.1 * lossf
        if log_interval and iter_num % log_interval == 0:
            tqdm.write(f"iter {iter_num}: loss {lossf:.6f}")
        tok_s = (tokens - start_tokens) / (time.time() - t0)
        mfu = raw_model.estimate_mfu(tok_s / world, block_size, torch.cuda.get_device_name() if device_type == "cuda" else "")
        pbar.set_postfix_str(f"loss {loss_ema:.4f}, {tok_s:,.0f} tok/s" + (f", MFU {100 * mfu:.1f}%" if mfu else "")
                             + f", lr {lr:.1e}", refresh=False)
        pbar.update(1)
pbar.close()

if master:
    wall = time.time() - t0
    tok_s = (tokens - start_tokens) / wall
    mfu = raw_model.estimate_mfu(tok_s / world, block_size, torch.cuda.get_device_name() if device_type == "cuda" else "")
    print(f"done: {fmt_val(final_val)} (best {best_val:.4f}) | {iter_num} iters | "
          f"{tokens / 1e6:.1f}M tokens seen | {wall / 60:.1f} min | {tok_s:,.0f} tok/s"
          + (f", MFU {100 * mfu:.1f}%" if mfu else ""))
if ddp:
    barrier()  # wait for the master's last evaluation and checkpoint: a rank that leaves early aborts gloo
    destroy_process_group()
