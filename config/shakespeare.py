# The quick start: character-level masked diffusion on Tiny Shakespeare, 6-8 minutes on a 2-core CPU.
#   python train.py config/shakespeare.py                 # MDLM
#   python train.py config/shakespeare.py --objective=ar --out_dir=out-shakespeare-char-ar   # AR, same recipe
# The recipe of config/shakespeare_3k.py (0.86M parameters, 3,000 steps of 16 x 128 characters), the
# reference of RESULTS.md, evaluated at the start and the end only.
from config.shakespeare_3k import *  # noqa: F401,F403
eval_interval = 3000    # evaluation costs time, not quality
