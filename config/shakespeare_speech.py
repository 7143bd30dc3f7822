# LLaDA-style SFT of the long-context model on Shakespeare's speeches: prompt = the 32 characters before
# a speech, response = the speech, padded with EOS to a random length up to the context (train.py's
# sft_rows, data/shakespeare_speech). The model learns to stop on any canvas; the Fast-dLLM
# benchmark's EOS task (python bench.py --what=fast --out_dir=out-shakespeare-speech).
#   python train.py config/shakespeare_long.py     # first: the pretrained model
#   python train.py config/shakespeare_speech.py   # then this fine-tune
out_dir = "out-shakespeare-speech"
dataset = "shakespeare_speech"
init_from = "out-shakespeare-long"  # its weights, plus an embedding row for the new EOS token
block_size = 1088       # 32-character prompt + response + EOS padding: rows of up to 1088
batch_size = 4
train_loss = "flat"
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 1000
lr_decay_iters = 1000
warmup_iters = 50
eval_interval = 500
eval_iters = 25
