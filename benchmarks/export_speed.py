"""File sizes and greedy-decoding speed: PyTorch fp32 vs onnxruntime fp32 vs onnxruntime int8.

\b
    python -m benchmarks.export_speed --model MODEL_DIR --onnx-fp32 OUT_FP32 --onnx-int8 OUT_INT8 \\
        --threads 1 --tokens 64 --json speed.json

Each back-end decodes the same chat prompts greedily, batch 1, exactly ``--tokens`` new tokens (EOS
suppressed), after one warm-up generation. Throughput = generated tokens / wall time (prefill of the
short prompt included); each prompt is timed ``--repeat`` times and the fastest run is kept, which
filters out the noise of a shared machine. Torch and onnxruntime get the same thread count.
The measurement is :func:`surgery.export.speed.export_speed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from surgery.commands.options import add_options, options_from, required
from surgery.export.speed import PROMPTS, export_speed
from surgery.options import opt
from surgery.provenance import script_command


@dataclass(frozen=True)
class ExportSpeedRun:
    """The model, its exports, and how each is timed."""

    model: str = required("The PyTorch model folder the exports came from.")
    onnx_fp32: Path | None = opt(None, "Folder written by 'surgery export'.")
    onnx_int8: Path | None = opt(None, "Folder written by 'surgery export --quantize int8'.")
    tokens: int = opt(64, "New tokens per prompt.")
    repeat: int = opt(3, "Timed runs per prompt (the fastest is kept).")
    threads: int = opt(1, "Threads of torch and onnxruntime.")
    json: Path | None = opt(None, "Write the results here.")


@click.command(help=__doc__)
@add_options(ExportSpeedRun)
def main(**kwargs: Any) -> None:
    """Time every back-end, print the markdown table and optionally write the JSON record."""
    run = options_from(ExportSpeedRun, kwargs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(run.threads)
    exports = (("onnxruntime fp32", run.onnx_fp32), ("onnxruntime int8", run.onnx_int8))
    rows = export_speed(run.model, exports, tokens=run.tokens, repeat=run.repeat, threads=run.threads)
    result = {
        "threads": run.threads,
        "tokens_per_prompt": run.tokens,
        "prompts": list(PROMPTS),
        "repeat": run.repeat,
        "command": script_command("benchmarks.export_speed"),
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    print(f"| back-end | weights (MB) | load (s) | tokens/s ({run.threads} thread{'s' if run.threads > 1 else ''}) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r.backend} | {r.bytes / 1e6:.1f} | {r.load_seconds:.1f} | {r.tokens_per_second:.1f} |")
    if run.json:
        run.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
