"""
GSM8K (grade-school math word problems, Cobbe et al. 2021) as SFT records with the GPT-2 BPE: the
real-data task a user with a GPU would fine-tune on. prompt = "Question: <question>\nAnswer: ", response
= the reference solution, whose last line is "#### <number>"; eval.py --mode=accuracy compares the
numbers after '####' (eval.extract_answer).
    python data/gsm8k/prepare.py                      # downloads train.jsonl / test.jsonl
    python data/gsm8k/prepare.py path/to/folder       # or reads them from a local folder
Writes train_sft.pkl (the train file but its last 500 problems), val_sft.pkl (those 500),
test_sft.pkl (the 1,319 test problems) and meta.pkl (GPT-2 BPE + [MASK] 50257; EOS is <|endoftext|>).
Offline, point TIKTOKEN_CACHE_DIR at a folder that holds the GPT-2 BPE.
"""

import json
import os
import pickle
import sys
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", ".."))
from tokenizer import check_input, write_files  # noqa: E402  (the project's input check and all-or-nothing writer)

URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{}.jsonl"
N_VAL = 500


def read_split(folder, name):
    """The problems of one file, [(question, answer)], from folder/name.jsonl or downloaded."""
    path = os.path.join(folder, f"{name}.jsonl")
    try:
        if os.path.exists(path):
            check_input(path)  # a device or a FIFO named train.jsonl, or a file too large, stops here
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            with urllib.request.urlopen(URL.format(name), timeout=30) as r:
                lines = r.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: could not read {path} or download it ({type(e).__name__}); pass a folder that holds "
                 f"train.jsonl and test.jsonl")
    out = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                rec = json.loads(line)
                q, a = rec["question"], rec["answer"]
                if not isinstance(q, str) or not isinstance(a, str):  # a number would fail in the tokenizer
                    raise TypeError
                out.append((q, a))
            except (ValueError, KeyError, TypeError):
                sys.exit(f"error: {path}:{i} is not a GSM8K line (JSON with 'question' and 'answer' strings)")
    if not out:
        sys.exit(f"error: {path} holds no problem")
    return out


if __name__ == "__main__":
    from configurator import one_line_errors  # Ctrl-C, a full disk: one line, not a traceback
    one_line_errors()
    if len(sys.argv) > 2:
        sys.exit("error: expected at most one argument, the folder that holds train.jsonl and test.jsonl")
    folder = sys.argv[1] if len(sys.argv) > 1 else here
    if not os.path.isdir(folder):
        sys.exit(f"error: {folder} is not a folder")
    train, test = read_split(folder, "train"), read_split(folder, "test")
    if len(train) <= N_VAL:
        sys.exit(f"error: {len(train)} training problems are too few to hold {N_VAL} out for val")
    import tiktoken
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        sys.exit(f"error: tiktoken could not load the gpt2 BPE ({type(e).__name__}); offline, set "
                 f"TIKTOKEN_CACHE_DIR to a folder that holds it")

    def records(problems):
        return [(enc.encode_ordinary(f"Question: {q}\nAnswer: "), enc.encode_ordinary(a)) for q, a in problems]
    splits = {"train": records(train[:-N_VAL]), "val": records(train[-N_VAL:]), "test": records(test)}
    meta = dict(tokenizer="gpt2", vocab_size=enc.n_vocab + 1, mask_id=enc.n_vocab, eos_id=enc.eot_token, task="gsm8k")
    write_files(here, {**{f"{s}_sft.pkl": pickle.dumps(r) for s, r in splits.items()}, "meta.pkl": pickle.dumps(meta)})
    lens = sorted(len(p) + len(r) for p, r in splits["train"])
    print(f"GSM8K: train {len(splits['train']):,}, val {len(splits['val']):,}, test {len(splits['test']):,} problems; "
          f"prompt + answer {lens[len(lens) // 2]} tokens (median), {lens[-1]} at most; vocab {meta['vocab_size']}")
