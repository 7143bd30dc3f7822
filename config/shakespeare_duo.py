# Uniform-state diffusion (Duo) on Tiny Shakespeare characters, at the quick start's compute: the
# same model (+ its time conditioning), batches and steps as config/shakespeare.py.
#   python train.py config/shakespeare_duo.py           # then: python sample.py --out_dir=out-shakespeare-duo --steps=8
out_dir = "out-shakespeare-duo"
dataset = "shakespeare_char"
objective = "duo"
curriculum_iters = 1000 # the first third reads the Gaussian curriculum's soft input (duo.py), then discrete tokens
block_size = 128
batch_size = 16
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
eval_interval = 1000
eval_iters = 100
