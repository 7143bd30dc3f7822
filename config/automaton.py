# Rule 110 (data/automaton: a row of 15 cells as the prompt, its next 8 generations as the 128-character
# response), masked diffusion; the context holds the prompt + a 256-token canvas, the Fast-dLLM
# benchmark's longest length here (python bench.py --what=fast --out_dir=out-automaton --lengths=128,256).
#   python data/automaton/prepare.py              # the records
#   python train.py config/automaton.py           # then: python eval.py --mode=accuracy --ckpts=out-automaton
#   python train.py config/automaton.py --objective=ar --block_size=145 --batch_size=30 --out_dir=out-automaton-ar
#       the AR baseline: 145-token rows (prompt, answer, EOS), 30 of them match the 16 x 272 tokens of a step
out_dir = "out-automaton"
dataset = "automaton"
block_size = 272        # 16-character prompt + 256
batch_size = 16
n_layer = 4
n_head = 4
n_embd = 128
train_loss = "flat"
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
eval_interval = 250
eval_iters = 20
