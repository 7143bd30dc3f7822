# Sorting 43 two-digit numbers (data/sort: the list as the prompt, the sorted list as the response, an
# answer of 128 characters), masked diffusion; the context holds the prompt + a 256-token canvas, the
# Fast-dLLM benchmark's length (python bench.py --what=fast --out_dir=out-sort --lengths=128,256).
#   python data/sort/prepare.py                   # 100,000 lists, 13 s
#   python train.py config/sort.py                # then: python eval.py --mode=accuracy --ckpts=out-sort
#   python train.py config/sort.py --objective=ar --block_size=258 --out_dir=out-sort-ar   # the AR baseline
out_dir = "out-sort"
dataset = "sort"
block_size = 385        # 129-character prompt + 256
batch_size = 32
n_layer = 4
n_head = 4
n_embd = 128
train_loss = "flat"
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
eval_interval = 500
eval_iters = 20
