# Block diffusion (BD3-LM, bd3.py) on Tiny Shakespeare characters, at the compute of config/shakespeare_3k.py:
# the same model, batches and steps.
#   python train.py config/shakespeare_bd3.py          # then: python sample.py --out_dir=out-shakespeare-bd3
#   python train.py config/shakespeare_bd3.py --init_from=out-shakespeare-char-ar --out_dir=out-shakespeare-bd3-ar
#       the same, continued from an AR checkpoint (its weights, the block-causal mask)
from config.shakespeare_3k import *  # noqa: F401,F403  (train_loss = "flat": the masked-token mean within blocks)
out_dir = "out-shakespeare-bd3"
objective = "bd3"
bd3_block = 4           # tokens per block: the model writes 4 characters at a time by masked diffusion, each
                        # block given the clean ones before it (1: autoregression, block_size: MDLM)
