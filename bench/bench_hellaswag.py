"""What a HellaSwag pass costs per 100 examples, next to one training step of the same model.

    python bench/bench_hellaswag.py [--model tiny] [--micro-batch 8 --seq-len 64 --accum 2] [--rounds 3]
                                    [--hellaswag_path FILE] [--device cpu]

Choose ``--hellaswag_interval`` and ``--hellaswag_limit`` from it: a pass of N examples costs about
``N / 100 x ratio`` training steps, every interval. Without ``--hellaswag_path`` the examples are
made up with the official file's shape (a ~40-token context, four ~20-token endings), which is
what the cost depends on, not the words. Rounds interleave the two measurements so a noisy
machine slows both alike; the ratio is the figure, the seconds are for orientation only.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from shared.tokenizer import get_gpt2_encoding
from worker import hellaswag
from worker.model import GPT, build_config

PER = 100


def made_up_examples(count: int, seed: int = 0) -> list[hellaswag.Example]:
    rng = random.Random(seed)
    words = ["a", "man", "is", "seen", "standing", "in", "a", "kitchen", "and", "talking", "to", "the", "camera", "about", "how", "to", "make", "a", "cake", "he", "then", "mixes", "the", "flour", "with", "eggs", "and", "sugar", "before", "pouring", "it", "into", "a", "pan"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    return [hellaswag.Example(text(32), tuple(text(16) for _ in range(4)), rng.randrange(4)) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--accum", type=int, default=1, help="micro-steps per training step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hellaswag_path", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT(build_config(args.model)).to(args.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, "cuda" if args.device.startswith("cuda") else "cpu")
    encode = get_gpt2_encoding().encode_ordinary
    examples = (hellaswag.load_examples(Path(args.hellaswag_path), PER) if args.hellaswag_path
                else made_up_examples(PER))
    x = torch.randint(0, 50257, (args.micro_batch, args.seq_len), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(args.accum):
            _, loss = model(x, x)
            (loss / args.accum).backward()
        optimizer.step()
        sync()

    def hellaswag_pass() -> None:
        hellaswag.evaluate(model, examples, encode, device=args.device)
        sync()

    train_step()  # warm-up: allocator, kernels
    step_times, pass_times = [], []
    for _ in range(args.rounds):
        for run, times in ((train_step, step_times), (hellaswag_pass, pass_times)):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    step_s, pass_s = statistics.median(step_times), statistics.median(pass_times)
    print(f"model {args.model}, {args.device}; training step = {args.accum} x {args.micro_batch} x {args.seq_len} tokens")
    print(f"{'training step':<28} {step_s:8.3f} s (median of {args.rounds})")
    print(f"{'HellaSwag, 100 examples':<28} {pass_s:8.3f} s (median of {args.rounds}; {len(examples)} examples)")
    print(f"ratio: a pass of 100 examples costs {pass_s / step_s:.1f} training steps")


if __name__ == "__main__":
    main()
