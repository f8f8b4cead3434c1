"""Batched vs one-at-a-time greedy generation for ``surgery eval``: items/s of both, identical outputs.

    python -m benchmarks.eval_speed [--model DIR] [--n 64] [--batch-size 16] [--max-new-tokens 32]

Both runs use the same model object, the same questions (SelfAware "eval" split, balanced sample) and
the same thread count, one after the other in one process, so a shared CPU affects both alike.
Exits 1 when the outputs differ or batching is less than --min-speedup times faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from surgery.evaluation.benchmarks import load_items
from surgery.evaluation.runner import torch_generator
from surgery.pair.gguf import ensure_converted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct, converted from PyPI)")
    ap.add_argument("--benchmark", default="selfaware")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-speedup", type=float, default=3.0)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.model is None:
        args.model = str(ensure_converted())
    torch.set_num_threads(args.threads)
    items = load_items(args.benchmark, limit=args.n, seed=args.seed)
    prompts = [it.question for it in items]
    gen = torch_generator(args.model, batch_size=args.batch_size)
    gen.generate(prompts[:2], 4)  # warm-up: first-call allocations are not part of either timing

    timings = {}
    outputs = {}
    for mode, bs in (("one_at_a_time", 1), ("batched", args.batch_size)):
        gen.batch_size = bs
        t0 = time.perf_counter()
        outputs[mode] = gen.generate(prompts, args.max_new_tokens)
        timings[mode] = time.perf_counter() - t0
    differ = [i for i, (a, b) in enumerate(zip(outputs["one_at_a_time"], outputs["batched"])) if a != b]
    rate = {m: len(prompts) / s for m, s in timings.items()}
    speedup = rate["batched"] / rate["one_at_a_time"]
    result = {
        "model": args.model,
        "benchmark": args.benchmark,
        "n": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "torch": torch.__version__,
        "seconds": {m: round(s, 2) for m, s in timings.items()},
        "items_per_second": {m: round(r, 3) for m, r in rate.items()},
        "speedup": round(speedup, 2),
        "identical_outputs": not differ,
        "differing_items": differ,
    }
    print(json.dumps(result, indent=1))
    for i in differ[:5]:
        print(f"--- item {i}: {prompts[i]!r}\n  one: {outputs['one_at_a_time'][i]!r}\n  bat: {outputs['batched'][i]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not differ and speedup >= args.min_speedup else 1


if __name__ == "__main__":
    sys.exit(main())
