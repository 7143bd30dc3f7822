"""
Real checkpoints in the Hugging Face layout, read into model.py's GPT (from_pretrained) from their
config.json and *.safetensors alone: no remote code runs, also where a layout ships trust_remote_code
files. LLaDA is also written back (save_pretrained). The layouts, by config.json's model_type:

  LLaDA      GSAI-ML/LLaDA-8B-Base/-Instruct, LLaDA-1.5        masked diffusion, whole canvas
  Dream      Dream-org/Dream-v0-Base/Instruct-7B (Qwen2)      masked diffusion, shifted logits
  Fast_dLLM_Qwen  Efficient-Large-Model/Fast_dLLM_v2_1.5B/_7B (Qwen2.5)   block diffusion (bd_size), shifted
  sdar       JetLM/SDAR-1.7B/4B/8B-Chat (Qwen3)               block diffusion (block_size), not shifted
  a2d-qwen3  dllm-hub/Qwen3-0.6B-diffusion-mdlm-v0.1 (Qwen3)  masked diffusion (with a block_size key: bd3)

Each is model.py's transformer with some settings (GPTConfig): LLaDA keeps q/k/v and the SwiGLU's gate
(ff_proj, under SiLU) and up projections apart, which model.py concatenates, one layer at a time (the
peak is the model plus one layer's weights); the Qwen layouts add grouped-query attention (n_kv_head),
q/k/v biases (Qwen2), q/k RMSNorm and a head width of their own (Qwen3), a tied or untied head, and
Dream's and Fast-dLLM v2's shift (trained from an AR model, position i's output predicts token i + 1;
the samplers' seam, sample.padded_forward, realigns it). The config keys are those of the checkpoints'
own config.json files (Dream: modeling_dream.py and configuration_dream.py, mask_token_id 151666;
Fast-dLLM v2: bd_size 32, its [MASK] "|<MASK>|" = 151665 only in the tokenizer (added_tokens.json);
SDAR: configuration_sdar.py, block_size 4, mask_token_id 151669; the A2D conversions: model_type
a2d-qwen3, their "<|mask|>" only in the tokenizer). A folder is checked before the model is built:
config.json's architecture and settings, the weight files and their tensors; anything else is refused
in one line that names it. families.pretrained gives the model its family, tokenizer and chat template.

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
    """GPTConfig of a LLaDA config.json (the dict cj)."""
    for k, v in LLADA.items():
        if cj.get(k, v) != v:
            raise ValueError(f"{path}: config.json has {k}={cj[k]!r}; model.py computes {k}={v!r} only")
    if cj.get("n_kv_heads") not in (None, cj["n_heads"]) or cj.get("multi_query_attention"):
        raise ValueError(f"{path}: LLaDA with grouped-query attention (n_kv_heads={cj['n_kv_heads']}) is not a layout "
                         f"read here")
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


# The Qwen layouts: what each is over a plain Qwen2/Qwen3 decoder. bias: the q/k/v biases (Qwen2 always
# has them; Qwen3 reads attention_bias); block: the config key of its block size and the default where
# config.json lacks it (0: masked diffusion), from: its blocks counted from position 0 (else from the prompt's
# end: dllm's BD3LM sampler left-pads prompts to whole blocks); mask: its [MASK] where config.json has no
# mask_token_id.
QWEN = {"Dream": dict(bias=True, qk_norm=False, shift=True, block=(None, 0), start=False, mask="<|mask|>"),
        "Fast_dLLM_Qwen": dict(bias=True, qk_norm=False, shift=True, block=("bd_size", 32), start=True, mask="|<MASK>|"),
        "sdar": dict(bias="attention_bias", qk_norm=True, shift=False, block=("block_size", 4), start=True,
                     mask="<|MASK|>"),
        "a2d-qwen3": dict(bias="attention_bias", qk_norm=True, shift=False, block=("block_size", 0), start=False,
                          mask="<|mask|>")}
QWEN_FIXED = dict(hidden_act="silu", rope_scaling=None, use_sliding_window=False, use_mrope=False)  # what model.py computes


def token_id(folder, content):
    """The id of an added token of the folder's tokenizer.json by its text, or None."""
    path = os.path.join(folder, "tokenizer.json")
    added = read_json(path, "the checkpoint's tokenizer").get("added_tokens", []) if os.path.isfile(path) else []
    return next((t.get("id") for t in added if isinstance(t, dict) and t.get("content") == content), None)


def qwen_config(cj, folder, kind):
    """(GPTConfig, family name) of a Qwen-layout config.json (the dict cj) of the given model_type."""
    q = QWEN[kind]
    for k, v in QWEN_FIXED.items():
        if cj.get(k, v) != v:
            raise ValueError(f"{folder}: config.json has {k}={cj[k]!r}; model.py computes {k}={v!r} only")
    H, C = cj["num_attention_heads"], cj["hidden_size"]
    H_kv, D = cj.get("num_key_value_heads") or H, cj.get("head_dim") or 0
    if not (isinstance(H, int) and isinstance(H_kv, int) and H > 0 and H_kv > 0 and H % H_kv == 0 and (D or C % H == 0)):
        raise ValueError(f"{folder}: config.json's head counts do not fit: num_attention_heads={H}, "
                         f"num_key_value_heads={H_kv}, hidden_size={C}, head_dim={D or 'none'}")
    mask = cj.get("mask_token_id")
    mask = mask if isinstance(mask, int) else token_id(folder, q["mask"])
    if not isinstance(mask, int) or not 0 <= mask < cj["vocab_size"]:
        raise ValueError(f"{folder}: no [MASK] token below vocab_size {cj['vocab_size']}: neither config.json's "
                         f"mask_token_id nor {q['mask']!r} in tokenizer.json")
    key, block = q["block"]
    block = cj.get(key, block) if key else block
    if not isinstance(block, int) or block < 0:
        raise ValueError(f"{folder}: config.json's {key}={block!r} is not a block size")
    cfg = GPTConfig(block_size=cj["max_position_embeddings"], vocab_size=cj["vocab_size"], mask_id=mask,
                    n_layer=cj["num_hidden_layers"], n_head=H, n_embd=C, n_hidden=cj["intermediate_size"],
                    tie=bool(cj.get("tie_word_embeddings", False)), norm_eps=cj.get("rms_norm_eps", 1e-6),
                    rope_theta=float(cj.get("rope_theta", 10000.0)), n_kv_head=H_kv, head_dim=D,
                    qkv_bias=q["bias"] is True or bool(cj.get(q["bias"] or "", False)), qk_norm=q["qk_norm"],
                    shift=q["shift"], bd3_block=block, bd3_from_start=q["start"] and block > 0)
    return cfg, "bd3" if block else "mdlm"


def qwen_names(cfg):
    """model.py's parameter name -> the Qwen tensors it concatenates (along dim 0, in this order)."""
    names = {"wte.weight": ["model.embed_tokens.weight"], "norm_f.weight": ["model.norm.weight"]}
    if not cfg.tie:
        names["lm_head.weight"] = ["lm_head.weight"]
    for i in range(cfg.n_layer):
        h, o = f"model.layers.{i}.", f"layers.{i}."  # theirs, ours
        a = h + "self_attn."
        names.update({o + "norm1.weight": [h + "input_layernorm.weight"],
                      o + "norm2.weight": [h + "post_attention_layernorm.weight"],
                      o + "attn.qkv.weight": [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"],
                      o + "attn.proj.weight": [a + "o_proj.weight"],
                      o + "mlp.gate_up.weight": [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"],
                      o + "mlp.down.weight": [h + "mlp.down_proj.weight"]})
        if cfg.qkv_bias:
            names[o + "attn.qkv.bias"] = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"]
        if cfg.qk_norm:
            names.update({o + "attn.q_norm.weight": [a + "q_norm.weight"], o + "attn.k_norm.weight": [a + "k_norm.weight"]})
    return names


LIMITS = dict(block_size=(1, 2**20), vocab_size=(2, 2**22), n_layer=(1, 1024), n_head=(1, 4096), n_embd=(2, 2**17),
              n_hidden=(0, 2**20), n_kv_head=(0, 4096), head_dim=(0, 2**14), bd3_block=(0, 2**20))  # what builds


def check_config(cfg, folder):
    """Every setting of a model's config (a mapped config.json, a ckpt.pt's model_args) checked (type, range,
    consistency) before anything is built: ValueError in one line naming it."""
    for k, (lo, hi) in LIMITS.items():
        v = getattr(cfg, k)
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"{folder}: its config gives {k}={v!r}; model.py needs an integer in [{lo}, {hi}]")
    for k in ("norm_eps", "rope_theta"):
        v = getattr(cfg, k)
        if type(v) not in (int, float) or not 0 < v < float("inf"):
            raise ValueError(f"{folder}: its config gives {k}={v!r}; model.py needs a finite positive number")
    if type(cfg.mask_id) is not int or not 0 <= cfg.mask_id < cfg.vocab_size:
        raise ValueError(f"{folder}: its [MASK] id {cfg.mask_id!r} is not an id below vocab_size {cfg.vocab_size}")
    if (not cfg.head_dim and cfg.n_embd % cfg.n_head) or cfg.d_head % 2 or cfg.n_head % (cfg.n_kv_head or cfg.n_head):
        raise ValueError(f"{folder}: its head counts do not fit: {cfg.n_head} heads of width {cfg.d_head} "
                         f"(hidden {cfg.n_embd}), {cfg.n_kv_head or cfg.n_head} key/value heads; RoPE needs an even width")
    return cfg


def read_config(folder):
    """(GPTConfig, family name, tensor names, EOS id) of a checkpoint folder's config.json; ValueError in one
    line for a layout not read here."""
    cj = read_json(os.path.join(folder, "config.json"), "not a Hugging Face checkpoint folder")
    kind, arch = cj.get("model_type"), cj.get("architectures")
    try:
        if kind == "llada" or "LLaDAModelLM" in (arch or []):
            cfg, fam = check_config(llada_config(cj, folder), folder), "mdlm"
            names = llada_names(cfg.n_layer, cfg.tie)
        elif kind in QWEN:
            cfg, fam = qwen_config(cj, folder, kind)
            names = qwen_names(check_config(cfg, folder))
        else:
            raise ValueError(f"{folder}: config.json describes model_type={kind!r} ({', '.join(arch or []) or 'no '}"
                             f"architectures), not a layout read here: llada, {', '.join(QWEN)}")
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"{folder}: config.json lacks {kind}'s {e} (or has a wrong type there)")
    gen = os.path.join(folder, "generation_config.json")  # its stop token, where it has one (SDAR: <|im_end|> first)
    eos = read_json(gen, "").get("eos_token_id") if os.path.isfile(gen) else None
    eos = cj.get("eos_token_id") if eos is None else eos
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return cfg, fam, names, eos if isinstance(eos, int) else -1


def from_pretrained(path, device="cpu"):
    """(GPT in eval mode, its local folder, family name, EOS id) of a checkpoint in one of the layouts above: a
    folder (or a hub id) with config.json and model.safetensors, or shards listed by model.safetensors.index.json.
    The weights go to the device in their stored dtype (bf16: 2 bytes a weight, 16 GB for 8B), straight from the
    files: the model is built on the meta device, so no float32 copy is ever made. ValueError, in one line, for
    a missing or corrupt file, a missing package or another architecture."""
    folder = pretrained_dir(path)
    cfg, fam, names, eos = read_config(folder)
    if str(device) == "meta":  # its shape alone (train.py --dry_run), in its stored dtype: no weights read
        with torch.device("meta"):
            model = GPT(cfg).to(getattr(torch, str(read_json(os.path.join(folder, "config.json"), "").get(
                "torch_dtype", "float32")), torch.float32))
        return model.eval(), folder, fam, eos
    st = need("safetensors", "loading *.safetensors weights")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        where = read_json(index, "").get("weight_map")
        if not isinstance(where, dict):
            raise ValueError(f"{index} has no weight_map")
        bad = next((f for f in where.values() if not isinstance(f, str) or os.path.basename(f) != f or f in ("", ".", "..")), None)
        if bad is not None:  # shards are files of the folder itself, never a path out of it
            raise ValueError(f"{index} names {bad!r} as a shard: a file name in {folder} only")
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
    try:
        for ours, theirs in names.items():  # one weight at a time: a concatenation is the only copy
            parts = [tensor(n) for n in theirs]
            w = parts[0] if len(parts) == 1 else torch.cat(parts)
            model.load_state_dict({ours: w}, strict=False, assign=True)
        unread = sorted(set(where or files[next(iter(files))].keys()) - {n for v in names.values() for n in v}
                        - ({"lm_head.weight"} if cfg.tie else set()))  # a tied head some savers also store
    except ValueError:
        raise
    except Exception as e:  # a corrupt file, a tensor of the wrong shape
        raise ValueError(f"{folder}: the weights do not load ({type(e).__name__}: {str(e).strip()[:150]})")
    if unread:
        raise ValueError(f"{folder} holds tensors its layout does not have here, such as {unread[0]}")
    if cfg.tie:
        model.lm_head.weight = model.wte.weight
    cos, sin = rope_tables(cfg.d_head, cfg.block_size, cfg.rope_theta)
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model.eval(), folder, fam, eos


def save_pretrained(model, folder, **extra):
    """Write a model in LLaDA's layout, config.json (with the extra keys given, e.g. eos_token_id) and
    model.safetensors: LLaDA's tensor names and config keys, what from_pretrained reads. The tokenizer
    files are the original checkpoint's, to be copied beside them."""
    cfg = model.config
    if (cfg.causal or cfg.time_cond or cfg.bd3_block or cfg.shift or cfg.qkv_bias or cfg.qk_norm or cfg.head_dim
            or cfg.n_kv_head not in (0, cfg.n_head)):
        raise ValueError("LLaDA's layout holds a plain bidirectional masked diffusion model only (no grouped-query "
                         "attention, biases, q/k norm or shift)")
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
