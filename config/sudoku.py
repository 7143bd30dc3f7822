# Sudoku by infilling (data/sudoku: the grid in place, its 45 blanks masked), masked diffusion.
#   python data/sudoku/prepare.py                 # 100,000 puzzles
#   python train.py config/sudoku.py              # then: python eval.py --mode=accuracy --ckpts=out-sudoku
#   python train.py config/sudoku.py --objective=ar --block_size=164 --batch_size=32 --out_dir=out-sudoku-ar
#       the AR baseline: the puzzle (blanks as [MASK]) as its prompt, the whole solution as its answer
#       (tokenizer.as_pair): 163-token rows, so 32 of them match the 64 x 82 tokens of a diffusion step
out_dir = "out-sudoku"
dataset = "sudoku"
block_size = 82         # the 81 cells + one EOS (the answer has no length to learn)
batch_size = 64
n_layer = 6
n_head = 4
n_embd = 128
train_loss = "flat"
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 2500
lr_decay_iters = 2500
warmup_iters = 100
eval_interval = 500
eval_iters = 20
