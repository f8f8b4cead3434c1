"""One LoRA training step with the plain causal-LM loss vs the response-only loss (same value).

    PYTHONPATH=. python benchmarks/train_step.py --model .cache/pair/gemma3_270m/m0 --threads 1

Uses real SFT examples of the bundled recipe (NQ-open + qa_wikidata, chat-formatted), so the share
of labelled tokens is the one training sees. Prints a table: loss, seconds per step (median of
``--repeats`` after one warm-up), and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    from surgery.pair import data as D
    from surgery.pair.build import _load
    from surgery.pair.train import collate, default_target_modules, encode_examples, response_only_loss

    model, tok = _load(Path(args.model))
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                          target_modules=default_target_modules(model)))
    examples = D.as_pairs(D.sft_set(n_open=args.batch_size, n_task=args.batch_size))[: args.batch_size]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
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
