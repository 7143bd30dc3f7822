# Uniform-state diffusion (Duo) on Tiny Shakespeare characters, at the quick start's compute: the
# same model (+ its time conditioning), batches and steps as config/shakespeare.py.
#   python train.py config/shakespeare_duo.py           # then: python sample.py --out_dir=out-shakespeare-duo --steps=8
from config.shakespeare import *  # noqa: F401,F403  (its train_loss is MDLM's and does not apply here)
out_dir = "out-shakespeare-duo"
objective = "duo"
curriculum_iters = 1000 # the first third reads the Gaussian curriculum's soft input (duo.py), then discrete tokens
