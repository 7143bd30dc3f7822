"""
A transformer for diffusion language models: RoPE, RMSNorm, SwiGLU, no biases. It imports torch only:
copy it alone.

Bidirectional by default (a masked diffusion model sees the whole canvas); `causal=True` gives the
autoregressive baseline from the same code. The logit of [MASK] is always -inf: the model predicts
clean tokens only.

The K/V seam used by the cached samplers (fast_sample.py, bd3.py, ar.py): `forward(idx, start=s, kv=cache)`
runs only the tokens `idx` that sit at canvas positions s..s+n-1; the keys/values of the other positions
come from `cache` (kv_buffers(): one (k, v) pair of buffers per layer, each (B, n_head, T, head_dim) for the
whole canvas). Each layer writes its fresh keys/values into the buffers at [s, s+n) (in place: the cache
is the caller's) and attends over all T positions. Running the block and everything after it is the
prefix cache (Fast-dLLM); running the block alone, with cached keys/values on both sides, is the dual
cache. With `return_kv=True` forward also returns the fresh (k, v) of the tokens it ran, per layer: after
a full forward, these are the cache. `attn_mask` narrows which keys each query sees: block diffusion
(bd3.py) trains on the noisy and the clean copy side by side with a block-causal mask and samples through
the same seam, each committed block's keys/values written once.

Real checkpoints (LLaDA-8B in the Hugging Face layout) are this model at scale with a few settings of
GPTConfig (n_hidden, tie, norm_eps, rope_theta); pretrained.py reads and writes them.
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 256   # longest canvas (RoPE tables are built for it)
    vocab_size: int = 66    # including [MASK]
    mask_id: int = 65       # its logit is -inf; -1 for none
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    causal: bool = False    # True: autoregressive baseline
    time_cond: bool = False  # True: conditioned on the noise level sigma (uniform-state diffusion, duo.py)
    bd3_block: int = 0      # > 0: the block size the weights were trained block-causally with (bd3.py reads it;
                            # the attention pattern itself comes from the caller's attn_mask)
    bd3_from_start: bool = False  # its blocks counted from position 0 (SDAR, Fast-dLLM v2), else from the prompt's end
    n_hidden: int = 0       # SwiGLU width (0: ~8/3 n_embd); a loaded checkpoint's own (LLaDA-8B: 12288 = 3 x 4096)
    tie: bool = True        # the output head is the embedding (False: a head of its own, as LLaDA's)
    norm_eps: float = 1e-6  # RMSNorm's epsilon (LLaDA: 1e-5)
    rope_theta: float = 10000.0  # RoPE base (LLaDA-8B: 500,000)
    # the settings of the Qwen-architecture checkpoints (pretrained.py): all off, the model above
    n_kv_head: int = 0      # grouped-query attention: key/value heads, each shared by n_head / n_kv_head queries (0: n_head)
    head_dim: int = 0       # width of a head (0: n_embd // n_head; Qwen3-0.6B: 128 with n_embd 1024 and 16 heads)
    qkv_bias: bool = False  # q, k and v projections with biases (Qwen2: Dream, Fast-dLLM v2)
    qk_norm: bool = False   # an RMSNorm over each head's q and k before RoPE (Qwen3: SDAR)
    shift: bool = False     # output i predicts token i + 1 (trained as an AR model: Dream, Fast-dLLM v2); forward
                            # returns the outputs as they are, the samplers' seam (sample.padded_forward) aligns them

    @property
    def d_head(self):
        return self.head_dim or self.n_embd // self.n_head


# dense bf16 (V100, T4: fp16) tensor-core peaks in FLOP/s, matched by substring of the device name
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "A10": 125e12,
              "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_dim, n_pos, base=10000.0):
    # cos/sin of the rotation angle pos * base^(-2i/d) for every position: (n_pos, head_dim/2)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    # x: (..., B, H, T, D); cos/sin: (T, D/2) or (B, 1, T, D/2). Rotates pairs (x_i, x_{i+D/2}).
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.H, self.H_kv = cfg.n_head, cfg.n_kv_head or cfg.n_head
        self.D = cfg.d_head
        assert self.H % self.H_kv == 0 and (cfg.head_dim or cfg.n_embd % cfg.n_head == 0)
        self.causal, self.dropout = cfg.causal, cfg.dropout
        # q, k, v stacked in one matrix: H, H_kv and H_kv heads of width D (rows in that order)
        self.qkv = nn.Linear(cfg.n_embd, (self.H + 2 * self.H_kv) * self.D, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.H * self.D, cfg.n_embd, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.D, cfg.norm_eps), RMSNorm(self.D, cfg.norm_eps)

    def forward(self, x, cos, sin, start, kv=None, key_mask=None, attn_mask=None):
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, -1, self.D).transpose(1, 2).split([self.H, self.H_kv, self.H_kv], dim=1)
        if hasattr(self, "q_norm"):  # (B, h, n, D): each head's vector normalised
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        fresh = (k, v)  # (B, H_kv, n, D) each
        if kv is not None:  # write the fresh keys/values into the cache at [start, start+n)
            k, v = kv
            k[:, :, start:start + n], v[:, :, start:start + n] = fresh
        T_k = k.size(2)  # (B, H_kv, T_k, D)
        mask = None if key_mask is None else key_mask[:, None, None, :T_k]  # (B, 1, 1, T_k)
        if attn_mask is not None:  # (n, T_k) or (B, 1, n, T_k): the keys each query may see (bd3.py's blocks)
            mask = attn_mask if mask is None else mask & attn_mask
        if self.causal and (kv is not None or mask is not None):
            # query i sits at canvas position start + i and may see keys j <= start + i
            tri = torch.arange(T_k, device=x.device)[None, :] <= start + torch.arange(n, device=x.device)[:, None]
            mask = tri if mask is None else mask & tri
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal and mask is None, enable_gqa=self.H_kv < self.H)
        y = y.transpose(1, 2).reshape(B, n, self.H * self.D)
        return self.proj(y), fresh


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg.n_hidden or 64 * math.ceil(8 * cfg.n_embd / 3 / 64)  # ~8/3 d: a 4d GELU MLP's parameters
        self.gate_up = nn.Linear(cfg.n_embd, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


TIME_DIM = 16  # width of the noise-level embedding: sigma is one number, a few features describe it


def sigma_embedding(sigma, dim=TIME_DIM):
    """Sinusoidal features of the noise level sigma = -log alpha_t (B,) -> (B, dim), at frequencies
    from 0.1 to 100 (sigma lies in [0, ~7])."""
    freqs = torch.logspace(-1, 2, dim // 2, device=sigma.device)
    ang = sigma.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def kv_buffers(fresh, B, T):
    """An empty K/V cache for B canvases of T positions, shaped like a forward's fresh keys/values (fresh:
    per layer (k, v), each (b, n_head, n, head_dim)): per layer a (k, v) pair of (B, n_head, T, head_dim) zeros,
    in their dtype and device, which forward(kv=...) fills."""
    return [(k.new_zeros(B, k.size(1), T, k.size(3)), v.new_zeros(B, v.size(1), T, v.size(3))) for k, v in fresh]


class Layer(nn.Module):
    """One transformer layer: pre-norm attention and SwiGLU, each added to the residual stream."""

    def __init__(self, cfg):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd, cfg.norm_eps), Attention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.n_embd, cfg.norm_eps), SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, start, kv=None, key_mask=None, temb=None, attn_mask=None):
        if temb is None:
            a, fresh = self.attn(self.norm1(x), cos, sin, start, kv=kv, key_mask=key_mask, attn_mask=attn_mask)
            x = x + self.drop(a)
            return x + self.drop(self.mlp(self.norm2(x))), fresh
        # temb: (B, TIME_DIM). (1 + scale), (1 + gate): a zero-initialised projection leaves the plain layer
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(temb)[:, None].chunk(6, dim=-1)  # each (B, 1, C)
        a, fresh = self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, start, kv=kv, key_mask=key_mask,
                             attn_mask=attn_mask)
        x = x + self.drop((1 + gate1) * a)
        x = x + self.drop((1 + gate2) * self.mlp(self.norm2(x) * (1 + scale2) + shift2))
        return x, fresh


class GPT(nn.Module):
    act_ckpt = False  # True: training keeps only each layer's input and recomputes the layer in backward

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie:
            self.wte.weight = self.lm_head.weight  # weight tying
        cos, sin = rope_tables(cfg.d_head, cfg.block_size, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by 1/sqrt(2 n_layer)
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.time_cond:  # made last, so the other weights are those of the plain model with the same seed
            # sigma -> features -> a small MLP -> each layer's adaLN (shift, scale, gate of both sublayers),
            # zero-initialised: the time-conditioned model starts as the plain one
            self.time_mlp = nn.Sequential(nn.Linear(TIME_DIM, TIME_DIM, bias=False), nn.SiLU())
            nn.init.normal_(self.time_mlp[0].weight, mean=0.0, std=0.02)
            for layer in self.layers:
                layer.ada = nn.Linear(TIME_DIM, 6 * cfg.n_embd, bias=False)
                nn.init.zeros_(layer.ada.weight)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def flops_per_token(self, T):
        """Training FLOPs per token at context T, forward + backward (PaLM appendix B, as nanoGPT): 6 per
        weight (2 forward, 4 backward; the tied embedding counted once, as the output layer) plus the
        attention scores and their mix of the values, 2 x 2 x n_layer x n_embd x T forward, x3 with backward."""
        return 6 * self.num_params() + 12 * self.config.n_layer * self.config.n_embd * T

    def estimate_mfu(self, tokens_per_s, T, device_name):
        """Model FLOPs utilisation of one device, against its dense bf16 peak (fp16 for GPUs without
        bf16), or None for a device not in PEAK_FLOPS (a CPU)."""
        peak = next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)
        return None if peak is None else self.flops_per_token(T) * tokens_per_s / peak

    def forward(self, idx, start=0, kv=None, pos=None, key_mask=None, return_kv=False, sigma=None, attn_mask=None):
        """
        idx: (B, n) token ids at canvas positions start..start+n-1, or (B, n, K) probabilities over the
             first K ids (a soft input: their mix of embeddings, duo.py's curriculum).
        sigma: (B,) noise levels -log alpha_t, read by a time-conditioned model (time_cond), else ignored.
        kv: optional per-layer list of (k, v) cache buffers, written in place (see the module docstring).
        pos: optional (B, n) RoPE positions (default: the canvas positions); left-padded batches
             pass each row's own positions so that a row sees what it would see alone.
        key_mask: optional (B, T_k) bool, False for keys that must not be attended to (padding).
        attn_mask: optional (n, T_k) or (B, 1, n, T_k) bool, True where query i may see key j (with key_mask,
             both must allow): bd3.py's block-causal attention, over 2L tokens whose positions come from pos.
        Returns logits (B, n, V) in float32, and with return_kv the list of fresh (k, v).
        """
        B, n = idx.shape[:2]
        if pos is None and start + n > self.config.block_size:  # given positions are the caller's to keep < block_size
            raise ValueError(f"sequence of length {start + n} exceeds the model's block_size {self.config.block_size}")
        if pos is None:
            cos, sin = self.cos[start:start + n], self.sin[start:start + n]
        else:
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, n, D/2)
        if idx.is_floating_point():  # (B, n, K) probabilities: their mix of the first K embeddings
            x = (idx @ self.wte.weight[:idx.size(-1)]).to(self.wte.weight.dtype)  # float32, like a lookup, under autocast
        else:
            x = self.wte(idx)  # (B, n, C)
        x = self.drop(x)
        if self.config.time_cond and sigma is None:
            raise ValueError("a time-conditioned model needs the noise level sigma")
        temb = self.time_mlp(sigma_embedding(sigma)) if self.config.time_cond else None  # (B, TIME_DIM)
        new_kv = []
        for i, layer in enumerate(self.layers):
            args = (x, cos, sin, start, None if kv is None else kv[i], key_mask, temb, attn_mask)
            if self.act_ckpt and self.training and torch.is_grad_enabled():  # the layer recomputed in backward
                x, fresh = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x, fresh = layer(*args)
            new_kv.append(fresh)
        logits = self.lm_head(self.norm_f(x)).float()
        if self.config.mask_id >= 0:
            logits[..., self.config.mask_id] = float("-inf")
        return (logits, new_kv) if return_kv else logits

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay the matrices (2D), not the norms' gains
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))
