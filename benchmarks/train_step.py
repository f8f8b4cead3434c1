"""One LoRA training step with the plain causal-LM loss vs the response-only loss (same value).

    python -m benchmarks.train_step --model ~/.cache/surgery/pair/gemma3_270m/m0 --threads 1

Uses real SFT examples of the bundled recipe (NQ-open + qa_wikidata, chat-formatted), so the share
of labelled tokens is the one training sees. Prints a table: loss, seconds per step (median of
``--repeats`` after one warm-up), and the speed-up.
"""

from __future__ import annotations

import argparse
import sys

import torch

from surgery.modelio import load_model, load_tokenizer, locate
from surgery.pair.data import sft_set
from surgery.training.lora import as_pairs
from surgery.training.speed import loss_step_timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    source = locate(args.model)
    model, tok = load_model(source, dtype=torch.float32), load_tokenizer(source)
    examples = as_pairs(sft_set(n_open=args.batch_size, n_task=args.batch_size))[: args.batch_size]
    t = loss_step_timings(model, tok, examples, repeats=args.repeats)
    print(
        f"model {args.model}: vocabulary {t.vocabulary}, batch {args.batch_size}, {t.tokens} tokens, "
        f"{t.labelled} labelled, {args.threads} thread(s)\n"
    )
    print("| loss | value | s / step (median) | speed-up |\n|---|---|---|---|")
    for row in t.rows:
        print(f"| {row.name} | {row.loss:.6f} | {row.seconds:.2f} | {t.rows[0].seconds / row.seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
