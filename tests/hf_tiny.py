"""
A tiny LLaDA checkpoint in the Hugging Face layout, and the references the loaded model is held to
(tests/test_hf.py). Everything here is written from the descriptions of the formats and algorithms,
in plain torch, without the project's code:

- write_tiny_llada(folder): config.json (LLaDA's keys at tiny sizes), the weights under LLaDA's tensor
  names in one model.safetensors or in shards with model.safetensors.index.json, tokenizer.json (a
  byte-level BPE built with the `tokenizers` library, with LLaDA's special tokens) and
  tokenizer_config.json (its Llama-3 style chat template).
- llada_forward(W, cfg, ids): LLaDA's forward (modeling_llada.py, LLaDALlamaBlock) read from the state
  dict by name, with an optional K/V cache for Fast-dLLM.
- fast_dllm_generate / _prefix_cache / _dual_cache: Fast-dLLM's three samplers (NVlabs/Fast-dLLM,
  llada/generate.py) at batch size 1, on that forward.
"""

import json
import math
import os

import torch
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# The tokenizer: 256 byte tokens, a few merges, then LLaDA's special tokens (at tiny ids)

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("a", "n"),
          ("r", "e"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "c"), ("o", "u"), ("Ġ", "w"), ("i", "s"),
          ("n", "d"), ("Ġa", "nd"), ("Ġ", "o"), ("e", "d"), ("i", "t"), ("Ġ", "h"), ("Ġ", "m"), ("Ġ", "b")]
BOS, EOS, MASK, START_HEADER, END_HEADER, EOT = 280, 281, 282, 283, 284, 285  # LLaDA: 126080, 126081, 126336, ...
SPECIAL = {BOS: "<|startoftext|>", EOS: "<|endoftext|>", MASK: "<|mdm_mask|>", START_HEADER: "<|start_header_id|>",
           END_HEADER: "<|end_header_id|>", EOT: "<|eot_id|>", 286: "<|reserved_token_0|>", 287: "<|reserved_token_1|>"}
VOCAB = 288  # [MASK] is not the last id, as in LLaDA (126336 of 126464)

# Llama-3 style, as LLaDA-Instruct's: bos before the first message, each message's content trimmed
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def byte_symbols():
    """The 256 printable characters a byte-level BPE writes bytes as, byte b -> symbols[b]: the bytes
    that are printable stand for themselves, the others take the characters from U+0100 on, in order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def write_tokenizer(folder):
    """tokenizer.json and tokenizer_config.json of the tiny byte-level BPE: byte b is id b, merge j is
    id 256 + j, the special tokens sit at their SPECIAL ids. No post-processor: encode adds no BOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    symbols = byte_symbols()
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())  # the library's own byte alphabet
    vocab = {s: b for b, s in enumerate(symbols)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    assert len(vocab) == min(SPECIAL)
    vocab.update({tok: i for i, tok in SPECIAL.items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(SPECIAL[i], special=True) for i in sorted(SPECIAL)])
    assert [tok.token_to_id(SPECIAL[i]) for i in sorted(SPECIAL)] == sorted(SPECIAL) and tok.get_vocab_size() == VOCAB
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": SPECIAL[BOS], "eos_token": SPECIAL[EOS], "pad_token": SPECIAL[EOS],
                   "chat_template": CHAT_TEMPLATE, "model_max_length": 1000000000000000019884624838656,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)


# -----------------------------------------------------------------------------
# config.json and the weights

def tiny_config(**kw):
    """LLaDA-8B's config.json at tiny sizes. mlp_hidden_size 48 is neither 8/3 d nor mlp_ratio * d, so a
    loader that computes the SwiGLU width instead of reading it fails."""
    cfg = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
           "d_model": 32, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 48, "mlp_ratio": 4,
           "vocab_size": VOCAB, "embedding_size": VOCAB, "mask_token_id": MASK, "eos_token_id": EOS,
           "pad_token_id": EOS, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 64,
           "weight_tying": False, "include_bias": False, "include_qkv_bias": False, "layer_norm_type": "rms",
           "activation_type": "silu", "alibi": False, "rope": True, "scale_logits": False,
           "input_emb_norm": False, "attention_layer_norm": False, "clip_qkv": None, "torch_dtype": "float32"}
    cfg.update(kw)
    return cfg


def tiny_weights(cfg, seed=0, dtype=torch.float32):
    """{LLaDA tensor name: tensor}, random. Scaled so the model is far from uniform: attention logits of
    order one (the answer depends on the context), output logits spread enough that some predictions
    are sure (above 0.9) and some are not; the norms' gains vary around 1 (a loader that drops them fails)."""
    g = torch.Generator().manual_seed(seed)
    d, hidden, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def gain(n):
        return (0.5 + torch.rand(n, generator=g)).to(dtype)  # U(0.5, 1.5)
    W = {"model.transformer.wte.weight": randn(V, d, std=1.0)}
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        W[p + "attn_norm.weight"] = gain(d)
        for name in ("q_proj", "k_proj"):
            W[p + name + ".weight"] = randn(d, d, std=2.0 / math.sqrt(d))
        W[p + "v_proj.weight"] = randn(d, d, std=2.0 / math.sqrt(d))
        W[p + "attn_out.weight"] = randn(d, d, std=1.0 / math.sqrt(d))
        W[p + "ff_norm.weight"] = gain(d)
        W[p + "ff_proj.weight"] = randn(hidden, d, std=1.0 / math.sqrt(d))  # the gate: SiLU is applied to it
        W[p + "up_proj.weight"] = randn(hidden, d, std=1.0 / math.sqrt(d))
        W[p + "ff_out.weight"] = randn(d, hidden, std=1.0 / math.sqrt(hidden))
    W["model.transformer.ln_f.weight"] = gain(d)
    W["model.transformer.ff_out.weight"] = randn(V, d, std=10.0 / math.sqrt(d))  # untied output head
    return W


def write_weights(folder, W, shards=1):
    """model.safetensors, or `shards` files model-0000K-of-0000N.safetensors and the index that maps each
    tensor name to its file (the layout of LLaDA-8B, whose weights come in 6 shards)."""
    from safetensors.torch import save_file
    if shards == 1:
        save_file(W, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(W)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: W[n] for n in names[k::shards]}  # interleaved: every shard holds parts of several layers
        save_file(part, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in W.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_tiny_llada(folder, dtype=torch.float32, shards=1, seed=0, **cfg_kw):
    """A whole tiny LLaDA folder (config, weights, tokenizer). Returns (config dict, weights dict)."""
    os.makedirs(folder, exist_ok=True)
    cfg = tiny_config(torch_dtype=str(dtype).replace("torch.", ""), **cfg_kw)
    W = tiny_weights(cfg, seed, dtype)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_weights(folder, W, shards)
    write_tokenizer(folder)
    return cfg, W


# -----------------------------------------------------------------------------
# LLaDA's forward (LLaDALlamaBlock), from the state dict by name

def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) in float32, cast back to x's dtype, then times the gain (OLMo's RMSLayerNorm)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotary(x, positions, theta):
    """RoPE on x (B, H, n, hd) at the given positions (n,): x cos + rotate_half(x) sin, with the angle of
    dimension i (and i + hd/2) pos / theta^(2i/hd); computed in float32."""
    hd = x.size(-1)
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)  # (hd/2,)
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (n, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (n, hd)
    xf = x.float()
    half = hd // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * emb.cos() + rotated * emb.sin()).to(x.dtype)


def llada_forward(W, cfg, ids, start=0, cache=None):
    """LLaDA's logits for the tokens ids (B, n) that sit at positions start..start+n-1.
    cache: None (ids is the whole sequence) or one (k, v) per layer, each (B, H, T_c, hd): the keys and
    values of other positions. The queries attend to the cached keys before `start`, their own fresh keys,
    then the cached keys after start + n (if T_c reaches past them): with a cache truncated at start this
    is Fast-dLLM's prefix cache, with a full-length cache its dual cache (the block's rows replaced).
    Returns (logits (B, n, V) float32, [(k, v) fresh, per layer, each (B, H, n, hd)])."""
    B, n = ids.shape
    d, H, eps = cfg["d_model"], cfg["n_heads"], cfg["rms_norm_eps"]
    hd = d // H
    positions = torch.arange(start, start + n)
    x = W["model.transformer.wte.weight"][ids]  # (B, n, d)
    fresh = []
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms_norm(x, W[p + "attn_norm.weight"], eps)

        def heads(name):  # (B, n, d) -> (B, H, n, hd)
            return (h @ W[p + name + ".weight"].T).view(B, n, H, hd).transpose(1, 2)
        q = rotary(heads("q_proj"), positions, cfg["rope_theta"])
        k = rotary(heads("k_proj"), positions, cfg["rope_theta"])
        v = heads("v_proj")
        fresh.append((k, v))
        if cache is not None:
            ck, cv = cache[i]
            k = torch.cat([ck[:, :, :start], k, ck[:, :, start + n:]], dim=2)  # (B, H, T_k, hd)
            v = torch.cat([cv[:, :, :start], v, cv[:, :, start + n:]], dim=2)
        # bidirectional attention, no mask; scores and softmax in float32 (as a fused kernel accumulates)
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(hd)  # (B, H, n, T_k)
        att = (scores.softmax(-1) @ v.float()).to(x.dtype)  # (B, H, n, hd)
        x = x + att.transpose(1, 2).reshape(B, n, d) @ W[p + "attn_out.weight"].T
        h = rms_norm(x, W[p + "ff_norm.weight"], eps)
        gate, up = h @ W[p + "ff_proj.weight"].T, h @ W[p + "up_proj.weight"].T  # (B, n, hidden)
        x = x + (F.silu(gate) * up) @ W[p + "ff_out.weight"].T
    x = rms_norm(x, W["model.transformer.ln_f.weight"], eps)
    return (x @ W["model.transformer.ff_out.weight"].T).float(), fresh


# -----------------------------------------------------------------------------
# Fast-dLLM's samplers (llada/generate.py), batch size 1, temperature 0, low-confidence remasking.
# `forward(ids, start=0, cache=None) -> (logits (1, n, V), fresh K/V per layer)`: llada_forward bound to
# its weights. Each returns (canvas (1, P + gen_length), NFE).

def linear_schedule(n_masked, steps):
    """LLaDA's get_num_transfer_tokens for one row: n_masked split evenly over steps, remainder first."""
    base, rem = divmod(n_masked, steps)
    return [base + (i < rem) for i in range(steps)]


def transfer_index(logits, mask_index, x, k, threshold):
    """Fast-dLLM's get_transfer_index for one row: the argmax x0 at every position, its probability
    (softmax in float64) as the confidence of the masked ones, and which positions to commit: the k most
    confident, or with a threshold all masked ones sorted by confidence, keeping the first and then only
    those at least `threshold` sure. logits (1, n, V), mask_index and x (1, n). Returns (x0, transfer)."""
    x0 = logits.argmax(-1)  # (1, n)
    p = F.softmax(logits.double(), dim=-1)
    x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # (1, n)
    x0 = torch.where(mask_index, x0, x)
    conf = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=torch.float64))
    if threshold:
        k = int(mask_index.sum())
    top = torch.topk(conf[0], k=k).indices
    transfer = torch.zeros_like(mask_index)
    transfer[0, top] = True
    if threshold:
        for j in range(1, k):
            if conf[0, top[j]] < threshold:
                transfer[0, top[j]] = False
    return x0, transfer


def _plan(prompt, gen_length, block_length, steps, mask_id):
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=torch.long)], dim=1)
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    return x, gen_length // block_length, steps // (gen_length // block_length)


def fast_dllm_generate(forward, prompt, steps, gen_length, block_length, mask_id, threshold=None):
    """generate(): every step a full forward; masks after the current block do not count; with a
    threshold the block is decoded until no mask is left, else for its share of the steps."""
    x, num_blocks, steps = _plan(prompt, gen_length, block_length, steps, mask_id)
    P, nfe = prompt.size(1), 0
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        schedule = linear_schedule(int((x[:, s:e] == mask_id).sum()), steps)
        i = 0
        while True:
            nfe += 1
            mask_index = x == mask_id
            logits, _ = forward(x)
            mask_index[:, e:] = False
            x0, transfer = transfer_index(logits, mask_index, x, None if threshold else schedule[i], threshold)
            x[transfer] = x0[transfer]
            i += 1
            if not (x[:, s:e] == mask_id).any():
                break
    return x, nfe


def fast_dllm_generate_with_prefix_cache(forward, prompt, steps, gen_length, block_length, mask_id, threshold=None):
    """generate_with_prefix_cache(): per block, a full forward (the block's first step) whose K/V, cut
    to the positions before the block, are the cache; then each step runs the block and everything
    after it, x[:, s:], against that cache, committing inside the block only."""
    x, num_blocks, steps = _plan(prompt, gen_length, block_length, steps, mask_id)
    P, nfe = prompt.size(1), 0
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        schedule = linear_schedule(int((x[:, s:e] == mask_id).sum()), steps)
        logits, kv = forward(x)
        mask_index = x == mask_id
        mask_index[:, e:] = False
        x0, transfer = transfer_index(logits, mask_index, x, None if threshold else schedule[0], threshold)
        x[transfer] = x0[transfer]
        cache = [(k[:, :, :s], v[:, :, :s]) for k, v in kv]  # the prefix: positions before the block
        nfe += 1
        i = 1
        while (x[:, s:e] == mask_id).any():
            nfe += 1
            mask_index = x[:, s:] == mask_id
            mask_index[:, block_length:] = False
            logits, _ = forward(x[:, s:], start=s, cache=cache)
            x0, transfer = transfer_index(logits, mask_index, x[:, s:], None if threshold else schedule[i], threshold)
            x[:, s:][transfer] = x0[transfer]
            i += 1
    return x, nfe


def fast_dllm_generate_with_dual_cache(forward, prompt, steps, gen_length, block_length, mask_id, threshold=None):
    """generate_with_dual_cache(): per block, a full forward (the block's first step) whose K/V at every
    position are the cache; then each step runs the block alone, x[:, s:e], its fresh K/V in place of
    the cached ones at the block's positions, attending over all positions."""
    x, num_blocks, steps = _plan(prompt, gen_length, block_length, steps, mask_id)
    P, nfe = prompt.size(1), 0
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        schedule = linear_schedule(int((x[:, s:e] == mask_id).sum()), steps)
        logits, cache = forward(x)
        mask_index = x == mask_id
        mask_index[:, e:] = False
        x0, transfer = transfer_index(logits, mask_index, x, None if threshold else schedule[0], threshold)
        x[transfer] = x0[transfer]
        nfe += 1
        i = 1
        while (x[:, s:e] == mask_id).any():
            nfe += 1
            mask_index = x[:, s:e] == mask_id
            logits, _ = forward(x[:, s:e], start=s, cache=cache)
            x0, transfer = transfer_index(logits, mask_index, x[:, s:e], None if threshold else schedule[i], threshold)
            x[:, s:e][transfer] = x0[transfer]
            i += 1
    return x, nfe


FAST_DLLM = {"none": fast_dllm_generate, "prefix": fast_dllm_generate_with_prefix_cache,
             "dual": fast_dllm_generate_with_dual_cache}
