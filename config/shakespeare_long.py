# Character-level masked diffusion with a long context: a 64-character prompt + up to 1024 generated
# characters, for the Fast-dLLM benchmark (python bench.py --what=fast).
#   python train.py config/shakespeare_long.py
from config.shakespeare_3k import *  # noqa: F401,F403  (the reference recipe, with longer rows)
out_dir = "out-shakespeare-long"
block_size = 1088
batch_size = 4          # 4 x 1088 tokens per step, like the reference's 16 x 128 x 2
eval_iters = 25
