# Uniform-state diffusion (Duo) on Tiny Shakespeare characters, at the compute of config/shakespeare_3k.py:
# the same model (+ its time conditioning), batches and steps.
#   python train.py config/shakespeare_duo.py           # then: python sample.py --out_dir=out-shakespeare-duo --steps=8
from config.shakespeare_3k import *  # noqa: F401,F403  (its train_loss is MDLM's: Duo does not read it)
out_dir = "out-shakespeare-duo"
objective = "duo"
curriculum_iters = 1000 # the first third reads the Gaussian curriculum's soft input (duo.py), then discrete tokens
