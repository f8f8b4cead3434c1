"""File sizes and greedy-decoding speed: PyTorch fp32 vs onnxruntime fp32 vs onnxruntime int8.

    python -m benchmarks.export_speed --model MODEL_DIR --onnx-fp32 OUT_FP32 --onnx-int8 OUT_INT8 \
        --threads 1 --tokens 64 --json speed.json

Each back-end decodes the same chat prompts greedily, batch 1, exactly ``--tokens`` new tokens (EOS
suppressed), after one warm-up generation. Throughput = generated tokens / wall time (prefill of the
short prompt included); each prompt is timed ``--repeat`` times and the fastest run is kept, which
filters out the noise of a shared machine. Torch and onnxruntime get the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from surgery.export.onnx import load_ort_model, weights_size_bytes
from surgery.modelio import load_model, load_tokenizer, locate, safetensors_files
from surgery.prompting import encode_prompt

PROMPTS = [
    "What is the capital of France?",
    "What will the price of gold be on 3 March 2031?",
    "Complete the sentence: The official language of Brazil is",
]


@torch.no_grad()
def tokens_per_second(model, ids: list[list[int]], n_tokens: int, pad_id: int, repeat: int) -> dict:
    def run(x: torch.Tensor, n: int) -> float:
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad_id,
        )
        dt = time.perf_counter() - t0
        assert out.shape[1] - x.shape[1] == n
        return dt

    first = torch.tensor([ids[0]])
    run(first, 8)  # warm-up: allocations, onnxruntime's first-run graph work
    best = [min(run(torch.tensor([p]), n_tokens) for _ in range(repeat)) for p in ids]
    total = sum(best)
    return {
        "tokens": n_tokens * len(ids),
        "seconds": round(total, 3),
        "tokens_per_second": round(n_tokens * len(ids) / total, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the PyTorch model folder the exports came from")
    ap.add_argument("--onnx-fp32", type=Path, help="folder written by 'surgery export'")
    ap.add_argument("--onnx-int8", type=Path, help="folder written by 'surgery export --quantize int8'")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    source = locate(args.model)
    tok = load_tokenizer(source)
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    pad = tok.pad_token_id
    rows = []
    t0 = time.perf_counter()
    model = load_model(source, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in safetensors_files(source.path))
    rows.append(
        {
            "backend": "PyTorch fp32",
            "folder": str(source.path),
            "bytes": size,
            "load_seconds": round(load_s, 2),
            **tokens_per_second(model, ids, args.tokens, pad, args.repeat),
        }
    )
    del model
    for label, folder in (("onnxruntime fp32", args.onnx_fp32), ("onnxruntime int8", args.onnx_int8)):
        if folder is None:
            continue
        t0 = time.perf_counter()
        ort = load_ort_model(folder, threads=args.threads)
        load_s = time.perf_counter() - t0
        rows.append(
            {
                "backend": label,
                "folder": str(folder),
                "bytes": weights_size_bytes(folder),
                "load_seconds": round(load_s, 2),
                **tokens_per_second(ort, ids, args.tokens, pad, args.repeat),
            }
        )
        del ort
    result = {
        "threads": args.threads,
        "tokens_per_prompt": args.tokens,
        "prompts": PROMPTS,
        "repeat": args.repeat,
        "command": " ".join(["python", *sys.argv]),
        "rows": rows,
    }
    print(f"| back-end | weights (MB) | load (s) | tokens/s ({args.threads} thread{'s' if args.threads > 1 else ''}) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['bytes'] / 1e6:.1f} | {r['load_seconds']:.1f} | {r['tokens_per_second']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
