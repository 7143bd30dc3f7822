# LLaDA-style SFT of the long-context model on Shakespeare's speeches: prompt = the 32 characters before
# a speech, response = the speech, padded with EOS to the context (data/shakespeare_speech). The model
# learns to stop; the Fast-dLLM benchmark's EOS task (python bench.py --what=fast --out_dir=out-shakespeare-speech).
#   python train.py config/shakespeare_long.py     # first: the pretrained model
#   python train.py config/shakespeare_speech.py   # then this fine-tune, ~10 minutes on a 2-core CPU
out_dir = "out-shakespeare-speech"
dataset = "shakespeare_speech"
init_from = "out-shakespeare-long"  # its weights, plus an embedding row for the new EOS token
block_size = 1088       # 32-character prompt + response padded with EOS to 1056
batch_size = 4
train_loss = "flat"
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 600
lr_decay_iters = 600
warmup_iters = 50
eval_interval = 300
eval_iters = 25
