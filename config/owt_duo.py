# Duo (uniform-state diffusion, duo.py) with the recipe of config/owt_mdlm.py; its time conditioning adds
# 0.9M parameters, and the curriculum's soft inputs (16 x 1024 x 50257 floats) ~7 GB per GPU.
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_duo.py
from config.owt_mdlm import *  # noqa: F401,F403
out_dir = "out-owt-duo"
objective = "duo"
curriculum_iters = 500000  # the first half reads the Gaussian curriculum (tau fixed at 1e-3; the paper anneals it)
