"""One LoRA training step with the plain causal-LM loss vs the response-only loss (same value).

    python -m benchmarks.train_step --model ~/.cache/surgery/pair/gemma3_270m/m0 --threads 1

Uses real SFT examples of the bundled recipe (NQ-open + qa_wikidata, chat-formatted), so the share
of labelled tokens is the one training sees. Prints a table: loss, seconds per step (median of
``--repeats`` after one warm-up), and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from surgery.modelio import load_model, load_tokenizer, locate
from surgery.pair.data import sft_set
from surgery.training.lora import (
    as_pairs,
    collate,
    default_target_modules,
    encode_examples,
    pad_token_id,
    response_only_loss,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    source = locate(args.model)
    model, tok = load_model(source, dtype=torch.float32), load_tokenizer(source)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                          target_modules=default_target_modules(model)))
    examples = as_pairs(sft_set(n_open=args.batch_size, n_task=args.batch_size))[: args.batch_size]
    pad = pad_token_id(tok)
    batch = collate(encode_examples(tok, examples, 96), pad)
    n_tok = int(batch["attention_mask"].sum())
    n_lab = int((batch["labels"][:, 1:] != -100).sum())
    rows = []
    for name, fn in (("plain (model(**batch).loss)", lambda: pm(**batch).loss),
                     ("response-only logits", lambda: response_only_loss(pm, batch))):
        times, loss = [], None
        for i in range(args.repeats + 1):
            t = time.perf_counter()
            loss = fn()
            loss.backward()
            pm.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t)
        rows.append((name, float(loss), statistics.median(times)))
    vocab = model.get_output_embeddings().weight.shape[0]
    print(f"model {args.model}: vocabulary {vocab}, batch {args.batch_size}, {n_tok} tokens, {n_lab} labelled, "
          f"{args.threads} thread(s)\n")
    print("| loss | value | s / step (median) | speed-up |\n|---|---|---|---|")
    for name, loss, sec in rows:
        print(f"| {name} | {loss:.6f} | {sec:.2f} | {rows[0][2] / sec:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
