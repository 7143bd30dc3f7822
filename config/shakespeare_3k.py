# The reference recipe of RESULTS.md's comparisons on Tiny Shakespeare characters: 3,000 steps of
# 16 x 128 characters, the compute every "1x" there means (Nx: --max_iters=N*3000 --lr_decay_iters=N*3000).
#   python train.py config/shakespeare_3k.py                  # MDLM
#   python train.py config/shakespeare_3k.py --objective=ar --out_dir=out-shakespeare-char-ar   # AR, same compute
#   python train.py config/shakespeare_duo.py                 # Duo, same compute
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
block_size = 128        # context: the longest canvas (prompt + generation) the sampler can use
batch_size = 16
n_layer = 4
n_head = 4
n_embd = 128
train_loss = "flat"     # MDLM: train on the masked-token mean (diffusion.flat_weight); other families ignore it
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
eval_interval = 1000
eval_iters = 100        # 100 x 16 fixed val windows
