"""
How a masked diffusion language model writes text: its samplers, then their command line.

    python sample.py --prompt="ROMEO:" --gen_length=96 --show        # watch the canvas unmask
    python sample.py --sampler=ancestral --steps=32                  # MDLM ancestral sampling
    python sample.py --prompt="ROMEO:[MASK*40]JULIET:" --gen_length=0  # infilling
    python sample.py --fast --cache=dual --threshold=0.9             # Fast-dLLM
    python sample.py --out_dir=out-shakespeare-duo --steps=8         # Duo (a uniform-state checkpoint)
    python sample.py --init_from=GSAI-ML/LLaDA-8B-Instruct --chat --prompt="Hi" --fast   # LLaDA-8B

The canvas is the prompt followed by gen_length [MASK]s; [MASK] or [MASK*n] in the prompt text opens
masked spans anywhere (infilling). Given text is never changed. Top to bottom:

- generate (LLaDA, Nie et al. 2025, Algorithm 4 + semi-autoregressive blocks): the answer is cut into
  blocks of block_length, decoded left to right, each with steps / num_blocks steps. At every step the
  model predicts all masked positions, a token is drawn at each (Gumbel-max at temperature T, in
  float64), and only the k most confident predictions of the current block are committed
  ("low-confidence remasking"); k follows the linear schedule (the block's masks split evenly over its
  steps, the remainder first), or Dream's time grid (transfer="timegrid"). Classifier-free guidance:
  logits u + (s + 1)(c - u), u from the canvas with the prompt masked. Dream's own sampler is this one
  with one block, the time grid and remasking low_confidence / margin / entropy (its maskgit_plus /
  topk_margin / entropy), alg_temp its drawn order.
- generate_ancestral (MDLM, Sahoo et al. 2024): from t to s < t, each masked token is revealed with the
  true reverse posterior's probability (alpha_s - alpha_t) / (1 - alpha_t), alpha_t = 1 - t, and drawn
  from the model; a step that reveals nothing does not call the model again (it has no time input).
  ReMDM (Wang et al. 2025, eta > 0): each decoded token is also re-masked with probability
  sigma_t = min(eta, (1 - alpha_s) / alpha_t), so the model can revise it: self-correction.
- the commit step (commit): candidates, their confidences, the most confident committed;
- the plan (block_plan) and the model as a function of the canvas (padded_forward: where a shifted model's
  outputs, Dream's, are realigned so that every sampler reads position j's prediction at j), the EOS stop;
- the sampling options, declared once (SAMPLE_OPTIONS, read by eval.py and bench.py too), and the command line.

fast_sample.py is Fast-dLLM's version of generate (a K/V cache and parallel commits), built from the
same pieces. The checkpoint names its family (families.py): a Duo checkpoint samples with duo.py's
ancestral sampler, an AR one with ar.py's cached decoder, a block diffusion one with bd3.py's exact cache.
"""

import json
import os
import re
import shutil
import sys

import torch
from torch.nn import functional as F

from configurator import NON_NEGATIVE, PATH, POSITIVE, SEED, STEPS, TEMPERATURE, UNIT, check, rule, one_of
from tokenizer import MASK_GLYPH, write_files


@torch.no_grad()
def generate(model, prompt, *, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence",
             transfer="linear", alg_temp=0.0, cfg_scale=0.0, eos_id=-1, forbid_eos=False, pad=None, generator=None,
             on_step=None):
    """LLaDA's sampler. prompt: (B, P) ids, [MASK] allowed (infilled together with the first block);
    pad: optional (B,) left-padding counts. transfer: how many commits per step (step_count); alg_temp > 0:
    positions drawn by their confidences instead of the top ones (commit). on_step(x, chosen) sees the canvas
    after every step. Returns (canvas (B, P + gen_length), NFE per row)."""
    m = model.config.mask_id
    x = canvas(prompt, gen_length, m)
    given = x != m  # prompt (and padding): never changed; masked out for the unconditional pass
    fwd, nfe = padded_forward(model, pad, x.size(1), eos_id if forbid_eos else -1), 0
    for lo, e, n_steps in block_plan(x, prompt.size(1), gen_length=gen_length, block_length=block_length, steps=steps,
                                     mask_id=m):
        n_commit = num_transfer_tokens(x[:, lo:e] == m, n_steps)  # (B, n_steps) commits per step
        for i in range(n_steps):
            if cfg_scale > 0:  # classifier-free guidance: u + (s + 1)(c - u), u = prompt masked
                cond, uncond = fwd(torch.cat([x, torch.where(given, m, x)]), torch.arange(len(x)).repeat(2)).chunk(2)
                logits = torch.where(cond == float("-inf"), cond, uncond + (cfg_scale + 1) * (cond - uncond))
                nfe += 2
            else:
                logits = fwd(x)
                nfe += 1
            masked = x[:, lo:e] == m
            cand, chosen = commit(logits[:, lo:e], masked, step_count(n_commit, masked, i, transfer),
                                  temperature=temperature, remasking=remasking, alg_temp=alg_temp, generator=generator)
            x[:, lo:e] = torch.where(chosen, cand, x[:, lo:e])
            if on_step:
                on_step(x, F.pad(chosen, (lo, x.size(1) - e)))
    return x, nfe


@torch.no_grad()
def generate_ancestral(model, prompt, *, steps, gen_length, temperature=1.0, eta=0.0, eos_id=-1, forbid_eos=False,
                       pad=None, generator=None, on_step=None):
    """MDLM ancestral sampling (eta = 0) or ReMDM remasking (eta > 0) on the time grid
    1 = t_0 > t_1 > ... > t_steps = 0, alpha_t = 1 - t. Returns (canvas, NFE per row)."""
    if steps <= 0:
        raise ValueError(f"steps={steps} must be positive")
    m = model.config.mask_id
    x = canvas(prompt, gen_length, m)
    B, given = x.size(0), x != m
    fwd = padded_forward(model, pad, x.size(1), eos_id if forbid_eos else -1)
    logits, stale, calls = None, torch.ones(B, dtype=torch.bool, device=x.device), 0
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        a_t, a_s = (1 - ts[i]).item(), (1 - ts[i + 1]).item()
        p_remask = min(eta, (1 - a_s) / a_t) if a_t > 0 else 0.0  # ReMDM's sigma_t, "cap" schedule; 0 for MDLM
        p_reveal = (a_s - (1 - p_remask) * a_t) / (1 - a_t)  # masked -> token: the reverse posterior
        if stale.any():  # the no-change shortcut: a row whose canvas did not change keeps its prediction
            rows = stale.nonzero().squeeze(1)
            out = fwd(x[rows], rows)  # (n, T, V)
            logits = out if logits is None else logits.index_copy_(0, rows, out)
            calls += len(rows)
        masked = x == m
        u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
        reveal = masked & (u < p_reveal)
        remask = ~masked & ~given & (u < p_remask)  # decoded -> [MASK] with probability sigma_t
        new = x.clone()
        new[reveal] = add_gumbel_noise(logits[reveal], temperature, generator).argmax(-1)
        new[remask] = m
        stale = (new != x).any(1)
        x = new
        if on_step:
            on_step(x, reveal)
    return x, calls / B


# -----------------------------------------------------------------------------
# The commit step: a candidate token at every masked position, how sure the model is of it, the most
# confident committed. Names: `cand` a step's candidates, `conf` their confidences; NFE counts model
# forwards per row.

REMASKING = ("low_confidence", "random", "margin", "entropy")


def add_gumbel_noise(logits, temperature, generator=None):
    """argmax(logits / T + Gumbel) is a sample of softmax(logits / T). In float64: float32 or bf16
    noise is coarse in the tail, which lowers diversity and fakes a better perplexity."""
    if temperature == 0:
        return logits
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.double() / temperature - torch.log(-torch.log(u))


def num_transfer_tokens(masked, steps):
    """How many tokens to commit at each step: (B, steps). Each row's masks split evenly, the
    remainder on the first steps (LLaDA's linear schedule)."""
    n = masked.sum(1, keepdim=True)  # (B, 1)
    base, rem = n // steps, n % steps
    return base + (torch.arange(steps, device=n.device)[None, :] < rem).long()


TRANSFERS = ("linear", "timegrid")
TIMEGRID_EPS = 1e-3  # Dream's generation_config eps: its time grid ends at t = eps


def step_count(n_commit, masked, i, transfer):
    """Step i's commit counts (B,), masked (B, W) the window's masks now: "linear", LLaDA's n_commit (B, steps)
    (num_transfer_tokens); "timegrid", Dream's: floor(masks left x (1 - t_{i+1} / t_i)) on t = linspace(1, eps,
    steps + 1) in float32, all at the last step (Dream averages the masks over the batch; here each row its own)."""
    left = masked.sum(1)
    if transfer == "linear" or i == n_commit.size(1) - 1:
        return n_commit[:, i] if transfer == "linear" else left
    t = torch.linspace(1, TIMEGRID_EPS, n_commit.size(1) + 1)
    return (left.float() * (1 - t[i + 1] / t[i]).to(left.device)).long()


def lead_first(masked):
    """Where a shifted model's (config.shift) first step under a cache may commit: the window's first position
    alone. It is predicted by the output before the window, which only that step's forward computes; the later
    cached calls run the window alone (Fast-dLLM's Dream code commits x[:, s] after the refresh, Fast-dLLM v2
    the next block's first token from the forward that caches the last). masked (b, W) bool -> (b, W) bool."""
    out = torch.zeros_like(masked)
    out[:, 0] = masked[:, 0]
    return out


def confidence(logits, cand, remasking, generator=None):
    """How sure the model is of each candidate: (B, W) float64, higher = commit first."""
    if remasking == "random":
        return torch.rand(cand.shape, dtype=torch.float64, device=cand.device, generator=generator)
    p = F.softmax(logits.double(), dim=-1)  # (B, W, V)
    if remasking == "low_confidence":  # the probability of the drawn token
        return torch.gather(p, -1, cand[..., None]).squeeze(-1)
    if remasking == "margin":  # top-1 minus top-2 probability
        top = p.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":  # negative entropy of the prediction
        return torch.special.xlogy(p, p).sum(-1)
    raise ValueError(f"unknown remasking {remasking!r}; choose from {REMASKING}")


def commit(logits, masked, n, temperature, remasking, alg_temp=0.0, generator=None):
    """The commit step: a candidate at each position of the window by Gumbel-max at temperature T,
    its confidence, and the n[b] most confident masked positions of each row (LLaDA's torch.topk), or
    with alg_temp > 0 n[b] positions drawn without replacement from softmax(confidence / alg_temp)
    (Dream's alg_temp). logits: (B, W, V); masked: (B, W) bool; n: (B,) counts, or a function of the
    confidences (B, W) -> (B,) counts (the parallel rules). Returns (cand (B, W), commit (B, W) bool)."""
    cand = add_gumbel_noise(logits, temperature, generator).argmax(-1)
    conf = torch.where(masked, confidence(logits, cand, remasking, generator), float("-inf"))
    n = torch.minimum(n(conf) if callable(n) else n, masked.sum(1))  # never more than the masks left
    chosen = torch.zeros_like(masked)
    for b in range(len(conf)):  # per row: its own count
        k = int(n[b])
        if alg_temp > 0 and k:
            chosen[b, torch.multinomial(F.softmax(conf[b] / alg_temp, -1), k, generator=generator)] = True
        else:
            chosen[b, torch.topk(conf[b], k=k).indices] = True
    return cand, chosen


# -----------------------------------------------------------------------------
# The plan: the canvas, its semi-autoregressive blocks, the model as a function of (part of) the canvas,
# the EOS stop. A block is canvas positions [s, e); its window [lo, e) is where commits can happen
# (the block, plus any infill [MASK] left before it).

def canvas(prompt, gen_length, mask_id):
    """prompt (B, P) followed by gen_length masks: (B, P + gen_length)."""
    return torch.cat([prompt, prompt.new_full((prompt.size(0), gen_length), mask_id)], 1)


def check_blocks(gen_length, block_length, steps):
    """The number of blocks of the semi-autoregressive plan (gen_length 0: one, the infill in the
    prompt); ValueError unless block_length divides gen_length and the blocks divide the steps."""
    if gen_length and (block_length <= 0 or gen_length % block_length):
        raise ValueError(f"--gen_length={gen_length} must be a multiple of --block_length={block_length}")
    num_blocks = gen_length // block_length if gen_length else 1
    if steps <= 0 or steps % num_blocks:
        raise ValueError(f"--steps={steps} must be a positive multiple of the {num_blocks} blocks "
                         f"(gen_length / block_length)")
    return num_blocks


def block_plan(x, P, *, gen_length, block_length, steps, mask_id):
    """The semi-autoregressive plan on canvas x (B, P + gen_length): yields (lo, e, steps per block)
    for each block, left to right. The window start lo is taken when the block starts: the block's
    first position, or earlier if an infill mask is left before it. Bad sizes raise ValueError
    (check_blocks) before anything runs."""
    num_blocks = check_blocks(gen_length, block_length, steps)
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length if gen_length else P
        cols = (x[:, :s] == mask_id).any(0).nonzero()
        yield int(cols[0]) if len(cols) else s, e, steps // num_blocks


def padded_forward(model, pad, T, forbid=-1):
    """The model as a function of (part of) the canvas: f(x, rows, start, kv, return_kv, **kw) runs the
    tokens x of the given rows at positions start.. (kw: more of model.forward's, e.g. attn_mask) and returns
    logits where position j's predict token j, also for a shifted model (config.shift: Dream, Fast-dLLM v2),
    the one place its outputs are realigned; with left padding (pad: (B,) counts), padded keys are hidden
    and each row gets its own positions, so a row sees exactly what it would see alone. forbid >= 0: that
    token (EOS) is never predicted."""
    if pad is None:
        key_mask = pos = None
    else:
        ar = torch.arange(T, device=pad.device)[None]
        key_mask, pos = ar >= pad[:, None], (ar - pad[:, None]).clamp(min=0)  # (B, T)

    def f(x, rows=slice(None), start=0, kv=None, return_kv=False, **kw):
        if pad is not None:
            kw.update(pos=pos[rows, start:start + x.size(1)], key_mask=key_mask[rows])
        out = model(x, start=start, kv=kv, return_kv=return_kv, **kw)
        logits = out[0] if return_kv else out  # (b, n, V)
        if forbid >= 0:
            logits[..., forbid] = float("-inf")
        if model.config.shift:  # output j predicts token j + 1: the logits of [start, start + n) are the outputs
            # of [start - 1, start + n - 1); the first has no predecessor in this call and keeps its own (Dream's
            # convention), which the cached samplers never read (lead_first)
            logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        return (logits, out[1]) if return_kv else logits
    return f


def left_pad(rows, pad_id):
    """Prompts of different lengths -> (B, P) ids left-padded with pad_id, and (B,) pad counts."""
    P = max(len(r) for r in rows)
    return (torch.tensor([[pad_id] * (P - len(r)) + r for r in rows], dtype=torch.long),
            torch.tensor([P - len(r) for r in rows], dtype=torch.long))


def eos_fill(x, P, m, eos_id):
    """The EOS stop, in place: a row whose generated part x[:, P:] holds an EOS followed by nothing but EOS
    and masks is finished, its masks after the EOS become EOS (what a model trained on EOS padding writes
    there), so its sampler stops calling the model for it. Used by fast_sample.py, bd3.py and ar.py."""
    gen = x[:, P:]
    if gen.size(1) == 0 or eos_id < 0:  # infilling: nothing generated after the prompt
        return
    is_eos = gen == eos_id
    j = torch.where(is_eos.any(1), is_eos.float().argmax(1), gen.size(1))  # first EOS (or none)
    after = torch.arange(gen.size(1), device=x.device)[None] > j[:, None]
    clean = ~(after & (gen != eos_id) & (gen != m)).any(1)  # only EOS or masks after it
    gen[after & clean[:, None] & (gen == m)] = eos_id


# -----------------------------------------------------------------------------
# The sampling options, declared once: sample.py's command line, eval.py and bench.py take their
# defaults and rules from here (a script that needs another default sets it in one line with its
# reason). name: (default, rule (None: its type only), what it does). Which family reads which
# option: the family's sample_options (families.py).

SAMPLERS = ("llada", "ancestral", "remdm")
CACHES = ("none", "prefix", "dual")  # fast_sample.py's
SAMPLE_OPTIONS = {
    "steps": (0, STEPS, "denoising steps (0: one token per step); model calls can differ (guidance, ancestral, --fast)"),
    "block_length": (32, NON_NEGATIVE, "llada: semi-autoregressive blocks, decoded left to right (0: one block)"),
    "temperature": (0.8, TEMPERATURE, "Gumbel-max temperature, float64 noise (0: greedy)"),
    "sampler": ("llada", one_of(*SAMPLERS), "llada (remasking), ancestral (MDLM) or remdm (ancestral + re-masking)"),
    "remasking": ("low_confidence", one_of(*REMASKING), "llada: which predictions are committed first"),
    "transfer": ("linear", one_of(*TRANSFERS), "llada: commits per step, linear (LLaDA) or timegrid (Dream's grid)"),
    "alg_temp": (0.0, NON_NEGATIVE, "llada: > 0 draws the committed positions from softmax(confidence / alg_temp) "
                                    "(Dream), 0 takes the surest"),
    "cfg_scale": (0.0, NON_NEGATIVE, "llada: classifier-free guidance scale (0: off)"),
    "eta": (0.02, UNIT, "remdm: the re-masking probability cap"),
    "forbid_eos": (False, None, "never sample EOS (datasets with an EOS token)"),
    "fast": (False, None, "Fast-dLLM: mdlm, block-wise K/V cache + parallel decoding (fast_sample.py); bd3, "
                          "Fast-dLLM v2's sub-block cache"),
    "cache": ("dual", one_of(*CACHES), "fast: the K/V cache, none, prefix or dual"),
    "threshold": (0.9, UNIT, "fast, bd3: commit every position at least this sure (0: off; bd3: at least the "
                             "steps' schedule, SDAR's dynamic rule)"),
    "eb_threshold": (0.0, NON_NEGATIVE, "bd3: commit the surest while their entropies sum below this (SDAR's "
                                        "entropy bound; --remasking=entropy; 0: off)"),
    "sub_block": (0, NON_NEGATIVE, "bd3: decode each block in sub-blocks of this many positions (Fast-dLLM v2: 8; "
                                   "0: the block)"),
    "factor": (0.0, NON_NEGATIVE, "fast, threshold 0: the factor rule (n + 1)(1 - c(n)) < factor (0: off)"),
    "eos_stop": (True, None, "fast: a row stops at a committed EOS with only EOS after it (False: every position "
                             "decoded, as Fast-dLLM's reference)"),
    "bd3_cache": (True, None, "bd3: the exact block K/V cache (False: the canvas recomputed every step, same tokens)"),
    "top_k": (0, NON_NEGATIVE, "duo: sample from the k most likely tokens of each prediction (0: all)"),
    "top_p": (1.0, rule(lambda v: 0 < v <= 1, "in (0, 1]"), "duo: ... from the smallest set with this probability"),
    "greedy_tail": (True, None, "duo: one more forward at t = 0, every position takes its most likely token"),
}


def option_defaults(*names):
    """{name: default} of the sampling options named (all of them when none is): a script's globals."""
    return {k: SAMPLE_OPTIONS[k][0] for k in names or SAMPLE_OPTIONS}


def option_rules(*names):
    """{name: rule} of the sampling options named (all when none is), for configurator.check."""
    return {k: SAMPLE_OPTIONS[k][1] for k in names or SAMPLE_OPTIONS if SAMPLE_OPTIONS[k][1]}


def sampling(fam, values, gen_length, holes=0, given=(), where="this model"):
    """The options fam.generate() reads, from a script's values of the table's options, with the rules
    between them checked (ValueError, one line): an option given (by a config file or the command line)
    that the family does not read; --fast only on LLaDA's sampler without guidance; LLaDA's blocks must
    divide gen_length and the steps. steps 0: one token per step, gen_length + the prompt's holes (rounded
    up to a multiple of the blocks); block_length 0: one block."""
    for key in sorted(set(given) & set(SAMPLE_OPTIONS) - set(fam.sample_options)):
        raise ValueError(f"--{key} does not apply to {where} (its options: {', '.join(fam.sample_options) or 'none'})")
    opts = {k: values.get(k, SAMPLE_OPTIONS[k][0]) for k in fam.sample_options}
    if opts.get("block_length") == 0:
        opts["block_length"] = gen_length
    if opts.get("steps") == 0:
        n = max(gen_length // opts["block_length"], 1) if opts.get("block_length") else 1  # blocks checked below
        opts["steps"] = -(-(gen_length + holes) // n) * n
    if opts.get("fast") and "sampler" in opts and (opts["sampler"] != "llada" or opts.get("cfg_scale")):
        raise ValueError("--fast accelerates the llada sampler without guidance (sampler=llada, cfg_scale=0)")
    if opts.get("eb_threshold") and opts.get("remasking") != "entropy":
        raise ValueError("--eb_threshold bounds the entropies of what a step commits: it needs --remasking=entropy")
    if opts.get("sampler") == "llada":
        check_blocks(gen_length, opts["block_length"], opts["steps"])
    elif "steps" in opts and opts["steps"] <= 0:
        raise ValueError(f"--steps={opts['steps']} must be positive")
    return opts


# -----------------------------------------------------------------------------
# The command line

def parse_prompt(text, encode, mask_id, limit=None):
    """Prompt text -> ids; '[MASK]' is one masked token, '[MASK*n]' n of them (infilling). ValueError for
    a '[MASK...]' of another form, or (before anything is expanded) more than `limit` tokens in all."""
    ids, n = [], 0
    pieces = re.split(r"(\[MASK[^\]]*\])", text)
    for piece in pieces:
        if piece.startswith("[MASK"):
            if not re.fullmatch(r"\[MASK(\*[1-9]\d*)?\]", piece):
                raise ValueError(f"{piece!r} is neither [MASK] nor [MASK*n] with n >= 1")
            n += int(piece[6:-1]) if "*" in piece else 1
        elif piece:
            ids.append(encode(piece))
            n += len(ids[-1])
    if limit is not None and n > limit:
        raise ValueError(f"{n} tokens, more than the model's context of {limit}")
    out = []
    for piece in pieces:
        if piece.startswith("[MASK"):
            out += [mask_id] * (int(piece[6:-1]) if "*" in piece else 1)
        elif piece:
            out += ids.pop(0)
    return out


def cut_at_eos(ids, eos_id, start):
    """Drop everything after the first EOS at or after `start` (the generated part)."""
    if eos_id >= 0 and eos_id in ids[start:]:
        return ids[:ids.index(eos_id, start)]
    return ids


class LiveView:
    """Re-draws the canvas in place as it unmasks: masks as MASK_GLYPH, fresh commits highlighted.
    With a trace path it also records every step for later rendering (JSON)."""

    def __init__(self, decode, mask_id, show, trace):
        self.decode, self.m, self.show, self.trace, self.lines, self.steps = decode, mask_id, show, trace, 0, []

    def __call__(self, x, chosen):
        row, new = x[0].tolist(), set(chosen[0].nonzero().flatten().tolist())
        self.steps.append({"canvas": self.decode(row), "committed": sorted(new)})
        if not self.show:
            return
        text = "".join(f"\x1b[7m{self.decode([t])}\x1b[0m" if i in new else
                       f"\x1b[2m{MASK_GLYPH}\x1b[0m" if t == self.m else self.decode([t]) for i, t in enumerate(row))
        width = shutil.get_terminal_size().columns
        up = f"\x1b[{self.lines}F" if self.lines else "\r"
        sys.stdout.write(up + "\x1b[J" + text + "\n")
        sys.stdout.flush()
        plain = self.decode(row)
        self.lines = sum(1 + max(0, len(line) - 1) // width for line in plain.split("\n"))

    def save(self):
        if self.trace:  # all or nothing: a failed write leaves an earlier trace as it was
            write_files(os.path.dirname(self.trace) or ".",
                        {os.path.basename(self.trace): json.dumps({"steps": self.steps}).encode()})


# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-char"
init_from = ""          # instead of out_dir: a checkpoint in the Hugging Face layout (pretrained.py), a folder or a hub id
chat = False            # wrap the prompt in the checkpoint's chat template (Instruct models)
prompt = "\n"           # text ([MASK] / [MASK*n] for spans to infill), or FILE:path
num_samples = 3
gen_length = 96         # prompt + gen_length must fit the model's context (128 for config/shakespeare.py)
show = False            # live view of the unmasking (the first sample)
trace = ""              # save the step-by-step history of the first sample to this JSON file
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
globals().update(option_defaults())  # steps, block_length, temperature, sampler, ...: SAMPLE_OPTIONS above
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    # the family table is looked up here, by the command line only: the samplers above import no family
    from configurator import check_device, check_memory, check_writable, configure, fail
    from families import load, pretrained
    from tokenizer import chat_prompt, get_codec

    config_keys = [k for k, v in globals().items()  # its options: the lower-case names of plain values
                   if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str))]
    given = set()  # the options a config file or the command line set
    globals().update(configure({k: globals()[k] for k in config_keys}, given=given,
                               notes={k: what for k, (_, _, what) in SAMPLE_OPTIONS.items()}))
    check(globals(), dict(out_dir=PATH, num_samples=POSITIVE, gen_length=NON_NEGATIVE, seed=SEED, **option_rules()))
    check_device(device)
    if trace:
        check_writable(trace, "trace")
    if prompt.startswith("FILE:"):
        path = prompt[5:]
        if not os.path.isfile(path):
            fail(f"prompt file {path} {'is a folder' if os.path.isdir(path) else 'not found'}")
        try:
            with open(path, encoding="utf-8") as f:
                prompt = f.read()
        except (UnicodeDecodeError, OSError) as e:
            fail(f"prompt file {path} is not readable UTF-8 text ({type(e).__name__})")
    try:
        # the family: the one lookup (families.py); a pretrained checkpoint is masked diffusion
        model, ckpt, fam = pretrained(init_from, device) if init_from else load(out_dir, device)
        encode, decode = get_codec(ckpt["meta"])
        prompt = chat_prompt(ckpt["meta"], prompt) if chat else prompt
    except ValueError as e:
        fail(e)
    model.eval()
    meta, m = ckpt["meta"], model.config.mask_id
    try:
        ids = parse_prompt(prompt, encode, m, limit=model.config.block_size)
    except ValueError as e:
        fail(f"prompt: {e}")
    holes = ids.count(m) if fam.infills else 0
    if gen_length == 0 and not holes:
        fail("nothing to generate: gen_length is 0 and the prompt has no [MASK] to infill")
    try:  # the rules between options, before any work
        opts = sampling(fam, globals(), gen_length, holes, given,
                        f"{init_from or out_dir}, a {ckpt['config']['objective']} checkpoint")
    except ValueError as e:
        fail(e)
    if len(ids) + gen_length > model.config.block_size:
        fail(f"prompt ({len(ids)} tokens) + gen_length ({gen_length}) exceeds the model's context "
             f"of {model.config.block_size} tokens")
    T, V = len(ids) + gen_length, model.config.vocab_size  # the logits of a step, and a float64 copy for the draw
    check_memory(num_samples * T * V * 12, f"--num_samples={num_samples} canvases of {T} tokens", device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    view = LiveView(decode, m, show, trace) if show or trace else None
    eos = meta.get("eos_id", -1)
    out, nfe = fam.generate(model, x, gen_length=gen_length, eos_id=eos, generator=gen, on_step=view, **opts)
    for row in out.tolist():  # a chat prints the reply alone (the template's markup decodes as bare role names)
        print(decode(cut_at_eos(row, eos, len(ids))[len(ids) if chat else 0:]))
        print("---------------")
    if view:
        view.save()
    print(f"({fam.describe(**opts)}, {nfe:g} model forwards per sample (NFE) for {gen_length + holes} tokens)",
          file=sys.stderr)
