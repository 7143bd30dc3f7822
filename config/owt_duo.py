# Duo (uniform-state diffusion, duo.py) on OpenWebText with the recipe of config/owt_mdlm.py (+ 0.9M parameters of
# time conditioning), for one node of 8 GPUs; the curriculum adds (B, T, 50257) soft inputs (~7 GB more):
#   python data/openwebtext/prepare.py            # or a local corpus: python data/corpus/prepare.py PATH...
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_duo.py
# Tokens per step: 512 sequences x 1024 = 524,288 (8 GPUs x 4 micro-steps x 16). Training FLOPs per token
# 6N + 12 n_layer n_embd T = 855M (model.flops_per_token): at 40% MFU about 146k tokens/s per A100
# (463k per H100), so the papers' 1M steps (524B tokens) take about 125 h on 8 A100s (39 h on 8 H100s);
# the first val bound worth reading comes after ~50k steps (~6 h). Memory per GPU: ~2.5 GB of weights,
# gradients, AdamW and EMA state + ~15 GB of activations and logits at 16 x 1024 in bf16 (estimates).
# Paper figures (test perplexity bounds on OWT): AR 17.5, MDLM 23.2, Duo 25.2.
out_dir = "out-owt-duo"
dataset = "openwebtext"
objective = "duo"
curriculum_iters = 500000  # the first half reads the Gaussian curriculum (tau fixed at 1e-3; the paper anneals it)
block_size = 1024
batch_size = 16
gradient_accumulation_steps = 32  # in total: 4 per GPU on 8 GPUs, for 512 sequences per step
n_layer = 12
n_head = 12
n_embd = 768
learning_rate = 3e-4
min_lr = 3e-4           # constant after the warmup, as MDLM
warmup_iters = 2500
max_iters = 1000000
lr_decay_iters = 1000000
weight_decay = 0.0
beta2 = 0.999
ema_decay = 0.9999
eval_interval = 5000
eval_iters = 100
dtype = "bfloat16"
compile = True
