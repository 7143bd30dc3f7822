# Character-level masked diffusion with a long context: a 64-character prompt + up to 1024 generated
# characters, for the Fast-dLLM benchmark (python bench.py --what=fast). ~40 minutes on a 2-core CPU.
#   python train.py config/shakespeare_long.py
out_dir = "out-shakespeare-long"
dataset = "shakespeare_char"
block_size = 1088
batch_size = 4          # 4 x 1088 tokens per step, like the quick start's 16 x 128 x 2
n_layer = 4
n_head = 4
n_embd = 128
train_loss = "flat"     # as config/shakespeare.py
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
eval_interval = 1000
eval_iters = 25
