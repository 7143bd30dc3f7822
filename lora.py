"""
LoRA (Hu et al. 2021): fine-tune a large model by learning low-rank updates of some of its weights,
W x + (alpha / r) B A x, with A (r, in) and B (out, r); B starts at zero, so the adapted model starts as
the base. The base stays frozen in its stored dtype (bf16: 2 bytes a weight), and only A and B (float32)
are trained, held by the optimizer and written to the checkpoint: for LLaDA-8B at r = 128 on q, k, v about
1.4% of the weights.

model.py fuses some projections (q, k and v in attn.qkv; SwiGLU's gate and up in mlp.gate_up), so a target
is a slice of a fused matrix with its own A and B, exactly the adapter a separate q_proj would get. Targets
are named by model.py's parts or by the checkpoints' own names:

    q k v proj gate up down                      (model.py)
    q_proj k_proj v_proj attn_out ff_proj up_proj ff_out   (LLaDA)   o_proj gate_proj down_proj   (Qwen)

    python train.py config/gsm8k.py --init_from=path/to/LLaDA-8B-Instruct --lora_r=128 --lora_alpha=256
"""

import math

import torch
import torch.nn as nn

from configurator import NON_NEGATIVE, POSITIVE, UNIT_OPEN, rule

# the train.py options it reads: {name: (default, rule, what it does)}
OPTIONS = {"lora_r": (0, NON_NEGATIVE, "> 0: train LoRA adapters of this rank over the frozen --init_from model"),
           "lora_alpha": (16.0, POSITIVE, "the adapters' scale is lora_alpha / lora_r"),
           "lora_dropout": (0.0, UNIT_OPEN, "dropout on the adapters' input"),
           "lora_targets": ("q,k,v", rule(lambda v: all(ALIASES.get(n.strip(), n.strip()) in PARTS for n in v.split(",")),
                                          "parts of a layer: q k v proj gate up down (or LLaDA's / Qwen's names)"),
                            "the parts adapted")}
# a target's name -> (the module of a layer, which of its fused parts)
PARTS = {"q": ("attn.qkv", 0), "k": ("attn.qkv", 1), "v": ("attn.qkv", 2), "proj": ("attn.proj", 0),
         "gate": ("mlp.gate_up", 0), "up": ("mlp.gate_up", 1), "down": ("mlp.down", 0)}
ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "attn_out": "proj", "o_proj": "proj", "ff_proj": "gate",
           "gate_proj": "gate", "up_proj": "up", "ff_out": "down", "down_proj": "down"}


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus low-rank updates of some row slices of its output: y = base(x), and for each
    adapted slice [lo, hi), y[..., lo:hi] += (alpha / r) B A dropout(x)."""

    def __init__(self, base, slices, r, alpha, dropout=0.0):
        super().__init__()
        self.base, self.slices, self.scale = base, slices, alpha / r
        self.drop = nn.Dropout(dropout)
        self.A = nn.ParameterList(nn.Parameter(torch.empty(r, base.in_features)) for _ in slices)
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(hi - lo, r)) for lo, hi in slices)
        for a in self.A:  # as nn.Linear's default: the update starts at zero through B only
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta(self, x):
        """(..., out) the update of the output: zero outside the adapted slices."""
        h = self.drop(x).float()
        parts, at = [], 0
        for (lo, hi), a, b in zip(self.slices, self.A, self.B):
            parts += [h.new_zeros(*h.shape[:-1], lo - at), (h @ a.T) @ b.T * self.scale]
            at = hi
        parts.append(h.new_zeros(*h.shape[:-1], self.base.out_features - at))
        return torch.cat(parts, -1)

    def forward(self, x):
        return self.base(x) + self.delta(x).to(x.dtype)

    def merged(self):
        """The base weight with the updates added (in the base's dtype): the nn.Linear to sample with."""
        w = self.base.weight.detach().float().clone()
        for (lo, hi), a, b in zip(self.slices, self.A, self.B):
            w[lo:hi] += self.scale * (b @ a).detach()
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=self.base.weight.dtype)
        out.weight.data.copy_(w)
        if self.base.bias is not None:
            out.bias.data.copy_(self.base.bias.detach())
        return out


def targets(names):
    """model.py's parts named by a comma-separated list of any of the names above; ValueError for others."""
    out = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        part = ALIASES.get(name, name)
        if part not in PARTS:
            raise ValueError(f"--lora_targets: {name!r} is not a layer's part; choose from "
                             f"{', '.join(PARTS)} (or {', '.join(ALIASES)})")
        out.append(part)
    if not out:
        raise ValueError("--lora_targets names no part")
    return sorted(set(out), key=list(PARTS).index)


def row_slices(layer, module, indices):
    """The row ranges of a fused module's parts (q, k, v: H, H_kv, H_kv heads; gate, up: two halves)."""
    if module == "attn.qkv":
        a = layer.attn
        edges = [0, a.H * a.D, (a.H + a.H_kv) * a.D, (a.H + 2 * a.H_kv) * a.D]
    elif module == "mlp.gate_up":
        n = layer.mlp.gate_up.out_features
        edges = [0, n // 2, n]
    else:
        edges = [0, layer.get_submodule(module).out_features]
    return [(edges[i], edges[i + 1]) for i in indices]


def apply(model, names, r, alpha, dropout=0.0):
    """Freeze the model and wrap the targeted parts of every layer in LoRALinear (in place). Returns the model."""
    model.requires_grad_(False)
    by_module = {}
    for part in targets(names):
        module, i = PARTS[part]
        by_module.setdefault(module, []).append(i)
    for layer in model.layers:
        for module, indices in by_module.items():
            parent, leaf = module.split(".")
            base = getattr(getattr(layer, parent), leaf)
            lora = LoRALinear(base, row_slices(layer, module, indices), r, alpha, dropout)
            setattr(getattr(layer, parent), leaf, lora.to(base.weight.device))
    return model


def adapters(model):
    """{name: tensor} of the adapters alone (what a LoRA checkpoint holds), of a model or of its state dict."""
    return {k: v for k, v in (model if isinstance(model, dict) else model.state_dict()).items()
            if ".A." in k or ".B." in k}


def merge(model):
    """Fold every adapter into its base weight (in place): a plain model.py GPT again. Returns the model."""
    for layer in model.layers:
        for parent in (layer.attn, layer.mlp):
            for leaf, m in list(parent.named_children()):
                if isinstance(m, LoRALinear):
                    setattr(parent, leaf, m.merged())
    return model

