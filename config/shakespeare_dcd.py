# Discrete consistency distillation (Duo section 5) of the Duo model of config/shakespeare_duo.py, for
# few-step sampling: 5 rounds, the teacher's step delta doubling each round (1/64 .. 1/4 of the
# curriculum's window), the teacher the student copied at the start of each round.
#   python train.py config/shakespeare_duo.py    # first: the model to distil
#   python train.py config/shakespeare_dcd.py    # then: python sample.py --out_dir=out-shakespeare-dcd --steps=8
out_dir = "out-shakespeare-dcd"
dataset = "shakespeare_char"
objective = "dcd"
init_from = "out-shakespeare-duo"
block_size = 128
batch_size = 16
dcd_delta = 0.015625
dcd_round_iters = 300
max_iters = 1500
lr_decay_iters = 1500
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 50
eval_interval = 300
eval_iters = 50
