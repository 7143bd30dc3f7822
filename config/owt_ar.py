# The autoregressive baseline of config/owt_mdlm.py: the same GPT-2 small, data, batch, schedule and EMA;
# only the objective differs (its FLOPs, throughput and hours are those of owt_mdlm.py).
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_ar.py
from config.owt_mdlm import *  # noqa: F401,F403
out_dir = "out-owt-ar"
objective = "ar"
