# The quick start: character-level masked diffusion on Tiny Shakespeare, 6-8 minutes on a 2-core CPU.
#   python train.py config/shakespeare.py                 # MDLM
#   python train.py config/shakespeare.py --objective=ar --out_dir=out-shakespeare-char-ar   # AR, same recipe
# config/shakespeare_3k.py is the same recipe evaluated every 1,000 steps: the reference of RESULTS.md.
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
block_size = 128        # context: the longest canvas (prompt + generation) the sampler can use
batch_size = 16         # small batches, many steps
n_layer = 4
n_head = 4
n_embd = 128            # 0.86M parameters
train_loss = "flat"     # MDLM: train on the masked-token mean (diffusion.flat_weight); other families ignore it
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
eval_interval = 3000    # evaluate at the start and the end only: evaluation costs time, not quality
eval_iters = 100        # 100 x 16 fixed val windows
