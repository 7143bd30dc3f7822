# Rule 110 (data/automaton) by block diffusion (bd3.py): a block is one row of the automaton (15 cells and
# a newline), so the model writes the 8 generations one row at a time, each row by masked diffusion given
# the rows above it, the order its cells depend on; the context holds the prompt row, 8 rows and a block of EOS.
#   python data/automaton/prepare.py && python train.py config/automaton_bd3.py
#   python eval.py --mode=accuracy --ckpts=out-automaton-bd3 --threshold=0.9
from config.automaton import *  # noqa: F401,F403
out_dir = "out-automaton-bd3"
dataset = "automaton"
objective = "bd3"
bd3_block = 16          # tokens per block: one row (W + 1 = 16 characters, data/automaton/prepare.py)
block_size = 160        # 10 blocks: the 16-character prompt, 128 of response, 16 for its EOS
