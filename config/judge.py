# The AR judge for Tiny Shakespeare (characters): a causal model bigger than the models it scores
# (eval.py), stopped before it overfits (RESULTS.md).
#   python train.py config/judge.py
out_dir = "out-judge-char"
dataset = "shakespeare_char"
objective = "ar"
block_size = 256
batch_size = 16
n_layer = 6
n_head = 6
n_embd = 192            # 2.7M parameters
dropout = 0.0
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
eval_interval = 500
eval_iters = 50
