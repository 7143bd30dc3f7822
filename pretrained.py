"""
Real checkpoints in the Hugging Face layout: LLaDA (GSAI-ML/LLaDA-8B-Base, LLaDA-8B-Instruct, LLaDA-1.5),
read into model.py's GPT and written back (from_pretrained, save_pretrained).

LLaDA is model.py's transformer at scale: RMSNorm, RoPE (the same half-split rotation), SwiGLU, no
biases, bidirectional attention. What differs is a setting (GPTConfig's n_hidden, tie, norm_eps,
rope_theta) or a name: LLaDA keeps q/k/v and the SwiGLU's gate (ff_proj, under SiLU) and up projections
apart, which model.py concatenates, one layer at a time (the peak is the model plus one layer's weights).
A folder is checked before the model is built: config.json's architecture and settings, the weight
files and their tensors; anything else is refused in one line. families.pretrained gives the model its
family (masked diffusion), tokenizer and chat template.

    python sample.py --init_from=GSAI-ML/LLaDA-8B-Instruct --chat --prompt="Hi" --fast
"""

import json
import os
import re

import torch

from configurator import check_memory, need, read_json
from model import GPT, GPTConfig, rope_tables
from tokenizer import write_files


LLADA = dict(block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True, alibi=False,
             include_bias=False, include_qkv_bias=False, attention_layer_norm=False, scale_logits=False,
             input_emb_norm=False, clip_qkv=None, rope_scaling=None)  # config.json settings model.py computes
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # 'GSAI-ML/LLaDA-8B-Instruct'


def pretrained_dir(path):
    """The local folder of a Hugging Face checkpoint: path itself, or a hub id downloaded (config, weights
    and tokenizer files only) when huggingface_hub is installed."""
    if os.path.isdir(path) or not HUB_ID.fullmatch(path):
        if not os.path.isdir(path):
            raise ValueError(f"{path} {'is not a folder' if os.path.exists(path) else 'not found'}: give a folder "
                             f"with config.json and *.safetensors, or a hub id")
        return path
    hub = need("huggingface_hub", f"{path}, a Hugging Face hub id,")
    try:
        return hub.snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    except Exception as e:
        raise ValueError(f"{path} is no folder here and could not be fetched from the hub ({type(e).__name__})")


def llada_config(cj, path):
    """GPTConfig of a LLaDA config.json (the dict cj); ValueError for another architecture."""
    kind = cj.get("model_type"), cj.get("architectures")
    if kind[0] != "llada" and "LLaDAModelLM" not in (kind[1] or []):
        raise ValueError(f"{path}: config.json describes {kind[1] or kind[0]}, not LLaDA (model_type 'llada', "
                         f"LLaDAModelLM): no other layout maps onto model.py")
    for k, v in LLADA.items():
        if cj.get(k, v) != v:
            raise ValueError(f"{path}: config.json has {k}={cj[k]!r}; model.py computes {k}={v!r} only")
    if cj.get("n_kv_heads") not in (None, cj["n_heads"]) or cj.get("multi_query_attention"):
        raise ValueError(f"{path}: grouped-query attention (n_kv_heads={cj['n_kv_heads']}) is not model.py's")
    return GPTConfig(block_size=cj["max_sequence_length"], vocab_size=cj.get("embedding_size") or cj["vocab_size"],
                     mask_id=cj.get("mask_token_id", 126336), n_layer=cj["n_layers"], n_head=cj["n_heads"],
                     n_embd=cj["d_model"], n_hidden=cj.get("mlp_hidden_size") or cj["mlp_ratio"] * cj["d_model"],
                     tie=bool(cj.get("weight_tying", False)), norm_eps=cj.get("rms_norm_eps", 1e-5),
                     rope_theta=float(cj.get("rope_theta", 10000.0)))


def llada_names(n_layer, tie):
    """model.py's parameter name -> the LLaDA tensors it concatenates (along dim 0, in this order)."""
    t = "model.transformer."
    names = {"wte.weight": [t + "wte.weight"], "norm_f.weight": [t + "ln_f.weight"]}
    if not tie:
        names["lm_head.weight"] = [t + "ff_out.weight"]
    for i in range(n_layer):
        h, o = f"{t}blocks.{i}.", f"layers.{i}."  # theirs, ours
        names.update({o + "norm1.weight": [h + "attn_norm.weight"], o + "norm2.weight": [h + "ff_norm.weight"],
                      o + "attn.qkv.weight": [h + "q_proj.weight", h + "k_proj.weight", h + "v_proj.weight"],
                      o + "attn.proj.weight": [h + "attn_out.weight"],
                      o + "mlp.gate_up.weight": [h + "ff_proj.weight", h + "up_proj.weight"],
                      o + "mlp.down.weight": [h + "ff_out.weight"]})
    return names


def from_pretrained(path, device="cpu"):
    """(GPT in eval mode, its local folder, config.json as a dict) of a LLaDA checkpoint: a folder (or a hub id) with
    config.json and model.safetensors, or shards listed by model.safetensors.index.json. The weights go
    to the device in their stored dtype (bf16: 2 bytes a weight, 16 GB for 8B), straight from the files:
    the model is built on the meta device, so no float32 copy is ever made. ValueError, in one line, for
    a missing or corrupt file, a missing package or another architecture."""
    folder = pretrained_dir(path)
    cj = read_json(os.path.join(folder, "config.json"), "not a Hugging Face checkpoint folder")
    try:
        cfg = llada_config(cj, folder)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder}: config.json lacks LLaDA's {e} (or has a wrong type there)")
    st = need("safetensors", "loading *.safetensors weights")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        where = read_json(index, "").get("weight_map")
        if not isinstance(where, dict):
            raise ValueError(f"{index} has no weight_map")
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        where = None  # every tensor in the one file
    else:
        raise ValueError(f"{folder} has config.json but no model.safetensors (nor model.safetensors.index.json)")
    shards = sorted(set(where.values())) if where else ["model.safetensors"]
    check_memory(sum(os.path.getsize(os.path.join(folder, f)) for f in shards if os.path.isfile(os.path.join(folder, f))),
                 f"the weights of {folder}", device)
    files, dev = {}, str(torch.device(device))

    def tensor(name):  # one stored tensor, read onto the device as it is stored
        file = os.path.join(folder, where[name] if where else "model.safetensors")
        if where is not None and name not in where:
            raise ValueError(f"{index} lists no tensor {name}")
        if file not in files:
            if not os.path.isfile(file):
                raise ValueError(f"{file} not found (named by {os.path.basename(index)})")
            try:
                files[file] = st.safe_open(file, framework="pt", device=dev)
            except Exception as e:  # cut short, not a safetensors file: the one to download again
                raise ValueError(f"{file} is not a readable .safetensors file ({type(e).__name__})")
        if name not in files[file].keys():
            raise ValueError(f"{file} has no tensor {name}")
        return files[file].get_tensor(name)
    with torch.device("meta"):
        model = GPT(cfg)
    names = llada_names(cfg.n_layer, cfg.tie)
    try:
        for ours, theirs in names.items():  # one weight at a time: a concatenation is the only copy
            parts = [tensor(n) for n in theirs]
            w = parts[0] if len(parts) == 1 else torch.cat(parts)
            model.load_state_dict({ours: w}, strict=False, assign=True)
        unread = sorted(set(where or files[next(iter(files))].keys()) - {n for v in names.values() for n in v})
    except ValueError:
        raise
    except Exception as e:  # a corrupt file, a tensor of the wrong shape
        raise ValueError(f"{folder}: the weights do not load ({type(e).__name__}: {str(e).strip()[:150]})")
    if unread:
        raise ValueError(f"{folder} holds tensors LLaDA's layout does not have, such as {unread[0]}")
    if cfg.tie:
        model.lm_head.weight = model.wte.weight
    cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_theta)
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model.eval(), folder, cj


def save_pretrained(model, folder, **extra):
    """Write a model in LLaDA's layout, config.json (with the extra keys given, e.g. eos_token_id) and
    model.safetensors: LLaDA's tensor names and config keys, what from_pretrained reads. The tokenizer
    files are the original checkpoint's, to be copied beside them."""
    cfg = model.config
    if cfg.causal or cfg.time_cond or cfg.bd3_block:
        raise ValueError("LLaDA's layout holds a plain bidirectional masked diffusion model only")
    st = need("safetensors.torch", "writing *.safetensors weights")
    sd, out = model.state_dict(), {}
    for ours, theirs in llada_names(cfg.n_layer, cfg.tie).items():
        for name, part in zip(theirs, sd[ours].chunk(len(theirs))):
            out[name] = part.detach().contiguous().clone()
    cj = dict(LLADA, architectures=["LLaDAModelLM"], model_type="llada", d_model=cfg.n_embd, n_heads=cfg.n_head,
             n_kv_heads=cfg.n_head, n_layers=cfg.n_layer, mlp_hidden_size=cfg.n_hidden or sd["layers.0.mlp.down.weight"].size(1),
             mlp_ratio=4, vocab_size=cfg.vocab_size, embedding_size=cfg.vocab_size, mask_token_id=cfg.mask_id,
             max_sequence_length=cfg.block_size, weight_tying=cfg.tie, rms_norm_eps=cfg.norm_eps,
             rope_theta=cfg.rope_theta, **extra)
    os.makedirs(folder, exist_ok=True)
    write_files(folder, {"model.safetensors": lambda p: st.save_file(out, p),
                         "config.json": json.dumps(cj, indent=2).encode()})
