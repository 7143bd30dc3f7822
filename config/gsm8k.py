# GSM8K with the GPT-2 BPE (data/gsm8k: "Question: ...\nAnswer: " as the prompt, the worked solution
# ending "#### <number>" as the response), masked diffusion SFT from scratch: the real-data path, sized
# for a CPU (most of its parameters are the 50k-token embedding); on a GPU, start from a pretrained model
# (init_from) and a far larger one.
#   TIKTOKEN_CACHE_DIR=... python data/gsm8k/prepare.py path/to/gsm8k    # or no path: download
#   python train.py config/gsm8k.py               # then:
#   python eval.py --mode=accuracy --ckpts=out-gsm8k --gen_length=192 --steps=48 --block_length=32 --max_records=100 --batch_size=20
#   python train.py config/gsm8k.py --objective=ar --out_dir=out-gsm8k-ar   # the AR baseline, then:
#   python eval.py --mode=accuracy --ckpts=out-gsm8k-ar --max_records=100
out_dir = "out-gsm8k"
dataset = "gsm8k"
block_size = 384        # prompt + solution; a longer one is cut
batch_size = 4
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 600
lr_decay_iters = 600
warmup_iters = 100
eval_interval = 200
eval_iters = 10
