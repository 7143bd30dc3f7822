"""
Tiny Qwen-family diffusion checkpoints in four Hugging Face layouts, and the references the loaded models
are held to. Everything here is written from the descriptions of the formats and algorithms, in plain
torch, without the project's code:

- write_tiny(folder, layout): config.json (the real checkpoint's keys at tiny sizes), model.safetensors
  under the Qwen2/Qwen3 tensor names, tokenizer.json (a byte-level BPE with Qwen's special tokens and the
  layout's mask token at tiny ids) and tokenizer_config.json (a ChatML template); for "sdar" also
  generation_config.json. The layouts: "dream" (Dream-v0-Instruct-7B, Qwen2), "fast_dllm_v2"
  (Fast_dLLM_v2_1.5B, Qwen2, tied), "sdar" (SDAR-4B-Chat, Qwen3), "a2d" (dllm-hub's Qwen3-0.6B MDLM, tied).
- qwen_forward(W, cfg, ids): the Qwen2/Qwen3 decoder read from the state dict by name, with an optional
  K/V cache and attention mask; block_causal(...) builds the block-causal mask of SDAR and Fast-dLLM v2.
- dream_generate, fast_dllm_dream_generate, sdar_generate, fast_dllm_v2_generate: each project's own
  sampler (Dream's _sample, Fast-dLLM v1's Dream block sampler, SDAR's block_diffusion_generate,
  Fast-dLLM v2's generate) at batch size 1, greedy, on that forward.
"""

import json
import math
import os

import torch
from torch.nn import functional as F

from hf_tiny import MERGES, byte_symbols, linear_schedule, rms_norm, rotary, write_weights

# -----------------------------------------------------------------------------
# The tokenizer: 256 byte tokens, hf_tiny's merges, then Qwen's special tokens (at tiny ids)

ENDOFTEXT, IM_START, IM_END = 280, 281, 282  # Qwen: 151643, 151644, 151645
# each layout's mask token at its own id, so a loader that takes one layout's id for another's fails
DREAM_MASK, FAST_DLLM_V2_MASK, SDAR_MASK, A2D_MASK = 283, 284, 285, 286
VOCAB = 288
LAYOUTS = {  # layout: (mask id, mask token's content, Qwen3: q/k norms, head_dim stated, no biases)
    "dream": (DREAM_MASK, "<|mask|>", False),
    "fast_dllm_v2": (FAST_DLLM_V2_MASK, "|<MASK>|", False),
    "sdar": (SDAR_MASK, "<|MASK|>", True),
    "a2d": (A2D_MASK, "<|mask|>", True),
}
MASK = {layout: spec[0] for layout, spec in LAYOUTS.items()}

CHAT_TEMPLATE = (  # ChatML, as Qwen's (without the system-prompt default)
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def special_tokens(layout):
    """{id: content} for ids 280..VOCAB-1: Qwen's three, the layout's mask token, the others reserved
    (named by id, so each layout has the same vocabulary size and the other layouts' mask ids are free)."""
    mask, content, _ = LAYOUTS[layout]
    out = {i: f"<|reserved_{i - ENDOFTEXT}|>" for i in range(ENDOFTEXT, VOCAB)}
    out.update({ENDOFTEXT: "<|endoftext|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>", mask: content})
    return out


def write_tokenizer(folder, layout, eos):
    """tokenizer.json and tokenizer_config.json: byte b is id b, merge j is id 256 + j, the specials at
    their ids. No post-processor (Qwen adds no BOS). The mask token is an added special token and one of
    "additional_special_tokens": for fast_dllm_v2 and a2d that is the only place it is named."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    specials = special_tokens(layout)
    vocab = {s: b for b, s in enumerate(byte_symbols())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    assert len(vocab) == ENDOFTEXT
    vocab.update({tok: i for i, tok in specials.items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(specials[i], special=True) for i in sorted(specials)])
    assert [tok.token_to_id(specials[i]) for i in sorted(specials)] == sorted(specials)
    assert tok.get_vocab_size() == VOCAB
    tok.save(os.path.join(folder, "tokenizer.json"))
    mask = LAYOUTS[layout][0]
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": specials[eos], "pad_token": specials[ENDOFTEXT],
                   "additional_special_tokens": [specials[IM_START], specials[IM_END], specials[mask]],
                   "chat_template": CHAT_TEMPLATE, "model_max_length": 131072, "errors": "replace",
                   "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer"}, f, indent=2)


# -----------------------------------------------------------------------------
# config.json and the weights

def tiny_config(layout, **kw):
    """The layout's config.json at tiny sizes (keys sorted on writing, as transformers writes them).
    Qwen3 layouts state head_dim 16 != hidden / heads = 8, so a loader that computes it fails."""
    cfg = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "max_position_embeddings": 128, "rope_theta": 1000000.0,
           "rms_norm_eps": 1e-6, "vocab_size": VOCAB, "hidden_act": "silu", "attention_dropout": 0.0,
           "initializer_range": 0.02, "max_window_layers": 2, "rope_scaling": None, "sliding_window": None,
           "use_sliding_window": False, "use_cache": True, "torch_dtype": "float32",
           "transformers_version": "4.46.2"}
    qwen3 = {"head_dim": 16, "attention_bias": False}
    cfg.update({
        "dream": {"architectures": ["DreamModel"], "model_type": "Dream", "use_cache": False,
                  "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                               "AutoModel": "modeling_dream.DreamModel"},
                  "tie_word_embeddings": False, "mask_token_id": DREAM_MASK, "pad_token_id": ENDOFTEXT,
                  "bos_token_id": ENDOFTEXT, "eos_token_id": ENDOFTEXT},
        "fast_dllm_v2": {"architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen",
                         "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                                      "AutoModel": "modeling.Fast_dLLM_QwenModel",
                                      "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
                         "bd_size": 8, "tie_word_embeddings": True, "bos_token_id": ENDOFTEXT,
                         "eos_token_id": IM_END, "pad_token_id": IM_END},  # no mask key: tokenizer only
        "sdar": {"architectures": ["SDARForCausalLM"], "model_type": "sdar", **qwen3,
                 "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
                              "AutoModel": "modeling_sdar.SDARModel",
                              "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
                 "block_size": 4, "mask_token_id": SDAR_MASK, "bos_token_id": ENDOFTEXT,
                 "eos_token_id": ENDOFTEXT, "tie_word_embeddings": False},
        "a2d": {"architectures": ["A2DQwen3LMHeadModel"], "model_type": "a2d-qwen3", **qwen3,
                "tie_word_embeddings": True, "bos_token_id": ENDOFTEXT, "eos_token_id": ENDOFTEXT},
    }[layout])
    cfg.update(kw)
    return cfg


def head_dim(cfg):
    """Qwen3 configs state it (SDAR-4B: 128, not 2560 / 32); Qwen2 ones leave it to hidden / heads."""
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def tiny_weights(cfg, layout, seed=0, dtype=torch.float32):
    """{HF tensor name: tensor}, random, scaled like hf_tiny.tiny_weights: attention logits of order one,
    norm gains U(0.5, 1.5), biases of order 0.5, output logits spread so some predictions are > 0.9 sure
    and some are not. The mask token's output row is shrunk: real models never predict [MASK], and the
    samplers that decode until no mask is left would not end if the argmax could be the mask."""
    g = torch.Generator().manual_seed(seed)
    d, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    mask, _, qwen3 = LAYOUTS[layout]
    tied = cfg["tie_word_embeddings"]

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def gain(n):
        return (0.5 + torch.rand(n, generator=g)).to(dtype)
    # tied: the embedding is also the head; a larger one would make every position predict its own token
    W = {"model.embed_tokens.weight": randn(V, d, std=1.5 if tied else 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        W[p + "input_layernorm.weight"] = gain(d)
        for name, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            W[p + f"self_attn.{name}_proj.weight"] = randn(rows, d, std=2.0 / math.sqrt(d))
            if not qwen3:  # Qwen2: q/k/v biases, none on o_proj
                W[p + f"self_attn.{name}_proj.bias"] = randn(rows, std=0.5)
        if qwen3:  # RMSNorm gains over head_dim, shared by all heads
            W[p + "self_attn.q_norm.weight"] = gain(hd)
            W[p + "self_attn.k_norm.weight"] = gain(hd)
        W[p + "self_attn.o_proj.weight"] = randn(d, H * hd, std=1.0 / math.sqrt(H * hd))
        W[p + "post_attention_layernorm.weight"] = gain(d)
        W[p + "mlp.gate_proj.weight"] = randn(inter, d, std=1.0 / math.sqrt(d))
        W[p + "mlp.up_proj.weight"] = randn(inter, d, std=1.0 / math.sqrt(d))
        W[p + "mlp.down_proj.weight"] = randn(d, inter, std=1.0 / math.sqrt(inter))
    W["model.norm.weight"] = gain(d)
    if not tied:
        W["lm_head.weight"] = randn(V, d, std=10.0 / math.sqrt(d))
    head = W["model.embed_tokens.weight" if tied else "lm_head.weight"]
    head[mask] *= 0.05
    return W


def write_tiny(folder, layout, seed=0, dtype=torch.float32, **cfg_kw):
    """A whole tiny folder of the layout (config, weights, tokenizer; SDAR's generation_config.json).
    Returns (config dict, weights dict)."""
    os.makedirs(folder, exist_ok=True)
    cfg = tiny_config(layout, torch_dtype=str(dtype).replace("torch.", ""), **cfg_kw)
    W = tiny_weights(cfg, layout, seed, dtype)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    if layout == "sdar":  # the chat model stops at <|im_end|> as well
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT],
                       "pad_token_id": ENDOFTEXT, "transformers_version": "4.46.2"}, f, indent=2)
    write_weights(folder, W)
    write_tokenizer(folder, layout, eos=IM_END if layout == "fast_dllm_v2" else ENDOFTEXT)
    return cfg, W


# -----------------------------------------------------------------------------
# The Qwen2 / Qwen3 decoder, from the state dict by name

def block_causal(q_positions, k_positions, b):
    """(n, T_k) bool, True = may attend: a query at absolute position p sees the key at j iff
    j // b <= p // b (its own block and all before it). Positions: tensors, ranges or lists."""
    q, k = (p if torch.is_tensor(p) else torch.tensor(list(p), dtype=torch.long)
            for p in (q_positions, k_positions))
    return k[None, :] // b <= q[:, None] // b


def qwen_forward(W, cfg, ids, start=0, cache=None, attn_mask=None, positions=None):
    """Raw logits (not shifted, mask column untouched) for ids (B, n) at positions (default
    start..start+n-1). cache: None or per layer (k, v), each (B, kv_heads, T_c, hd); the keys are the cached
    ones before start, the fresh ones, then the cached ones after start + n (prefix cache if T_c = start,
    dual cache if T_c covers everything). attn_mask: None (bidirectional) or bool (n, T_k), True = attend.
    Returns (logits (B, n, V) float32, [(k, v) fresh per layer, each (B, kv_heads, n, hd), k after RoPE])."""
    B, n = ids.shape
    H, KV, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd, theta = head_dim(cfg), cfg["rope_theta"]
    positions = torch.arange(start, start + n) if positions is None else torch.as_tensor(positions)
    x = W["model.embed_tokens.weight"][ids]  # (B, n, d)
    fresh = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)

        def proj(name):  # (B, n, d) -> (B, n, heads, hd), plus Qwen2's bias
            y = h @ W[p + f"self_attn.{name}_proj.weight"].T + W.get(p + f"self_attn.{name}_proj.bias", 0)
            return y.view(B, n, -1, hd)
        q, k, v = proj("q"), proj("k"), proj("v")
        if p + "self_attn.q_norm.weight" in W:  # Qwen3: each head vector normed before RoPE
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q = rotary(q.transpose(1, 2), positions, theta)  # (B, H, n, hd)
        k = rotary(k.transpose(1, 2), positions, theta)  # (B, KV, n, hd)
        v = v.transpose(1, 2)
        fresh.append((k, v))
        if cache is not None:
            ck, cv = cache[i]
            k = torch.cat([ck[:, :, :start], k, ck[:, :, start + n:]], dim=2)  # (B, KV, T_k, hd)
            v = torch.cat([cv[:, :, :start], v, cv[:, :, start + n:]], dim=2)
        # grouped-query attention: query head h reads kv head h // (H / KV)
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(hd)  # (B, H, n, T_k)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        att = (scores.softmax(-1) @ v.float()).to(x.dtype)  # (B, H, n, hd)
        x = x + att.transpose(1, 2).reshape(B, n, H * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T  # (B, n, inter)
        x = x + (F.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return (x @ head.T).float(), fresh


# -----------------------------------------------------------------------------
# The samplers, batch size 1, temperature 0. `f(ids, start=0, cache=None, attn_mask=None) -> (raw logits,
# fresh K/V)`: qwen_forward bound to its weights and config. Each returns (canvas (1, T), NFE).

NEG_INF = float("-inf")


def shift(logits):
    """The AR-style reading of Dream and Fast-dLLM v2: position i is predicted by the output at i - 1
    (position 0 by its own). logits (1, n, V)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def with_masks(prompt, n, mask_id):  # (1, P) -> (1, P + n)
    return torch.cat([prompt, torch.full((1, n), mask_id, dtype=torch.long)], dim=1)


def append_kv(cache, kv):
    """The prefix cache grown by the fresh K/V of the positions right after it."""
    if cache is None:
        return kv
    return [(torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)) for (ck, cv), (k, v) in zip(cache, kv)]


def dream_confidence(probs, alg):
    """Dream's sample_tokens at temperature 0 on probs (M, V): x0 = argmax and its confidence."""
    top, x0 = probs.max(-1)
    if alg == "maskgit_plus":
        return top, x0
    if alg == "topk_margin":
        two = probs.topk(2, dim=-1).values
        return two[:, 0] - two[:, 1], x0
    if alg == "entropy":  # negative entropy: higher = surer
        return (probs * torch.log(probs + 1e-10)).sum(-1), x0
    raise ValueError(alg)


def dream_generate(f, prompt, gen_length, steps, mask_id, alg="maskgit_plus", eps=1e-3, alg_temp=None,
                   generator=None):
    """Dream's _sample: every step a full forward over the canvas, then the most confident masked
    positions (by the float32 schedule of timesteps linspace(1, eps)) take their argmax."""
    x = with_masks(prompt, gen_length, mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)  # float32, as Dream's rounding depends on it
    for i in range(steps):
        mask_index = x == mask_id
        logits = shift(f(x)[0])
        t, s = timesteps[i], timesteps[i + 1]
        confidence, x0 = dream_confidence(F.softmax(logits[mask_index].float(), dim=-1), alg)
        num_mask = mask_index.sum() / mask_index.shape[0]
        k = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        full = torch.full(x.shape, NEG_INF)
        full[mask_index] = confidence
        if k > 0:
            if not alg_temp:
                idx = torch.topk(full, k).indices  # (1, k)
            else:
                idx = torch.multinomial(F.softmax(full / alg_temp, dim=-1), k, generator=generator)
            x_ = torch.full_like(x, mask_id)
            x_[mask_index] = x0
            x[0, idx[0]] = x_[0, idx[0]]
    return x, steps


def fast_dllm_dream_generate(f, prompt, gen_length, block_length, mask_id, threshold=0.9, dual_cache=False):
    """Fast-dLLM v1's Dream block sampler (alg "confidence_threshold"). Per block [s, e): a full forward
    (the cache) commits the block's first token; then, until the block has no mask (checked after each
    step: a do-while), run x[:, s:] against the prefix cache or x[:, s:e] against the dual cache and commit
    the most confident masked position of the block, and each other one at least `threshold` sure."""
    x = with_masks(prompt, gen_length, mask_id)
    P, nfe = prompt.size(1), 0
    for b in range(gen_length // block_length):
        s, e = P + b * block_length, P + (b + 1) * block_length
        logits, kv = f(x)
        nfe += 1
        x[:, s] = shift(logits).argmax(-1)[:, s]  # from the output at s - 1
        cache = kv if dual_cache else [(k[:, :, :s], v[:, :, :s]) for k, v in kv]
        end = e if dual_cache else x.size(1)
        while True:
            window = x[:, s:end]  # a view: commits land in x
            mask_index = window == mask_id
            logits, _ = f(window, start=s, cache=cache)
            nfe += 1
            # shifted inside the window: its position 0 reads its own output, but is already committed
            conf, x0 = F.softmax(shift(logits)[mask_index], dim=-1).max(-1)
            full = torch.full(window.shape, NEG_INF)
            full[mask_index] = conf
            full[:, block_length:] = NEG_INF  # prefix mode: nothing after the block
            k = int((x[:, s:e] == mask_id).sum())
            top_conf, top = torch.topk(full[0], k)
            x_ = torch.full_like(window, mask_id)
            x_[mask_index] = x0
            keep = top[(top_conf >= threshold) | (torch.arange(k) == 0)]
            window[0, keep] = x_[0, keep]
            if not (x[:, s:e] == mask_id).any():
                break
    return x, nfe


def sdar_commit(probs, mask_index, n_step, strategy, threshold, eb_threshold):
    """Which of the block's positions to commit. probs (B, V) of the raw logits, mask_index (B,)."""
    p = probs.max(-1).values
    conf = torch.where(mask_index, p, torch.full_like(p, NEG_INF))
    left = int(mask_index.sum())
    commit = torch.zeros_like(mask_index)
    if strategy == "entropy_bounded":
        # the intended rule (the released code takes the entropy of the chosen token's probability only):
        # the lowest-entropy masked positions whose entropies sum to less than eb_threshold, at least one
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        ent_sorted, order = torch.where(mask_index, ent, torch.full_like(ent, float("inf"))).sort()
        k = int(torch.searchsorted(ent_sorted.cumsum(0), torch.tensor(eb_threshold, dtype=ent.dtype)))
        commit[order[:max(1, min(k, left))]] = True
        return commit
    assert strategy in ("low_confidence_static", "low_confidence_dynamic"), strategy
    high = conf > threshold  # strict
    if strategy == "low_confidence_dynamic" and int(high.sum()) >= n_step:
        return high
    # clamped to the masks left: the original takes topk(conf, n_step), which, when the prompt's tail
    # sits in the block, also picks -inf positions and overwrites prompt tokens with their argmax
    commit[torch.topk(conf, min(n_step, left)).indices] = True
    return commit


def sdar_generate(f, prompt, gen_length, block_length, steps, mask_id, strategy="low_confidence_static",
                  threshold=0.85, eb_threshold=0.35, stop_ids=()):
    """SDAR's block_diffusion_generate, greedy: blocks of B tokens from position 0, attention block-causal,
    the prompt's whole blocks prefilled into the cache, its tail decoded with the first block's masks.
    Logits are read unshifted. After each block, stop if a stop id appears past the prompt."""
    P, B = prompt.size(1), block_length
    nb = -(-(P + gen_length) // B)
    x = torch.full((1, nb * B), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    pre, cache, nfe = P // B * B, None, 0
    if pre:
        _, cache = f(x[:, :pre], attn_mask=block_causal(range(pre), range(pre), B))
        nfe += 1
    n = linear_schedule(B, steps)
    for b in range(P // B, nb):
        s = b * B
        blk = x[:, s:s + B]  # a view: commits land in x
        mask = block_causal(range(s, s + B), range(s + B), B)  # all True: earlier blocks and its own
        step = 0
        while True:
            # the original stops after steps + 1 iterations: static and dynamic always finish by then (the
            # schedule sums to B); entropy_bounded may not, and runs on rather than leave masks behind
            mask_index = blk[0] == mask_id
            logits, kv = f(blk, start=s, cache=cache, attn_mask=mask)
            nfe += 1
            if not mask_index.any():  # the block is done: this forward's K/V are stored
                cache = append_kv(cache, kv)
                break
            probs = F.softmax(logits[0], dim=-1)  # (B, V)
            commit = sdar_commit(probs, mask_index, n[min(step, steps - 1)], strategy, threshold, eb_threshold)
            blk[0, commit] = probs.argmax(-1)[commit]
            step += 1
        if any((x[0, P:] == t).any() for t in stop_ids):
            break
    return x, nfe


def v2_commit(logits, window, mask_id, threshold):
    """One step in a sub-block: logits (S, V) already shifted, window (S,) a view of the canvas. Commit the
    surest masked position and every masked one more than `threshold` sure (strict)."""
    p, x0 = F.softmax(logits, dim=-1).max(-1)
    m = window == mask_id
    conf = torch.where(m, p, torch.full_like(p, NEG_INF))
    commit = conf > threshold
    commit[conf.argmax()] = True
    commit &= m
    window[commit] = x0[commit]


def first_stop(x, P0, stop_token):
    """Index (in x) of the first stop token after the prompt, or None."""
    hits = (x[0, P0:] == stop_token).nonzero()
    return P0 + int(hits[0, 0]) if len(hits) else None


def fast_dllm_v2_generate(f, prompt, max_new_tokens, block_size, small_block_size, mask_id, threshold=0.9,
                          stop_token=-1, use_block_cache=False):
    """Fast-dLLM v2's generate, greedy: blocks of B = block_size aligned to position 0, attention
    block-causal; within the current block, sub-blocks of small_block_size are decoded in order from
    shifted logits (each step the surest masked position and every one above threshold); a finished
    block is run once more to store its K/V and its last raw output gives the next block's first token."""
    B, S, P0 = block_size, small_block_size, prompt.size(1)
    x, cache, nfe = prompt.clone(), None, 0
    # the original prefills only when P0 > B: at P0 == B the first window would hold only masks with no
    # cache, the prompt unseen; treated like P0 > B
    if P0 >= B:
        pre = P0 // B * B
        logits, cache = f(x[:, :pre], attn_mask=block_causal(range(pre), range(pre), B))
        nfe += 1
        if P0 % B == 0:
            x = torch.cat([x, logits[:, -1:].argmax(-1)], dim=1)

    def stopped():  # a stop token generated with no mask before it
        i = first_stop(x, P0, stop_token)
        return i is not None and not (x[0, P0:i] == mask_id).any()
    for _ in range(max_new_tokens // B):
        if first_stop(x, P0, stop_token) is not None:
            break
        x = torch.cat([x, torch.full((1, B - x.size(1) % B), mask_id, dtype=torch.long)], dim=1)
        s = x.size(1) - B  # the block's start, a multiple of B
        mask = block_causal(range(s, s + B), range(s + B), B)  # all True: the cache and its own block
        block_kv = None  # the block cache, reset at every block
        while not stopped():
            if not (x[:, s:] == mask_id).any():
                logits, kv = f(x[:, s:], start=s, cache=cache, attn_mask=mask)
                nfe += 1
                cache = append_kv(cache, kv)
                x = torch.cat([x, logits[:, -1:].argmax(-1)], dim=1)
                break
            for sb in range(B // S):
                a, z = s + sb * S, s + (sb + 1) * S  # the sub-block, absolute
                while (x[:, a:z] == mask_id).any() and not stopped():
                    if not use_block_cache or block_kv is None or x[0, a] == mask_id:
                        logits, block_kv = f(x[:, s:], start=s, cache=cache, attn_mask=mask)
                        logits = shift(logits)[:, a - s:z - s]
                    else:  # the sub-block alone against prefix + block cache (its rows fresh), no mask
                        logits, kv = f(x[:, a:z], start=a, cache=append_kv(cache, block_kv))
                        block_kv = [tuple(torch.cat([b[:, :, :a - s], y, b[:, :, z - s:]], dim=2) for b, y in
                                          zip(bkv, fkv)) for bkv, fkv in zip(block_kv, kv)]  # written back
                        logits = shift(logits)  # inside the sub-block: its position 0 is committed
                    nfe += 1
                    v2_commit(logits[0], x[0, a:z], mask_id, threshold)
    i = first_stop(x, P0, stop_token)
    return (x if i is None else x[:, :i + 1]), nfe
