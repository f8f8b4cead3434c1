"""What `surgery patch` needs at the sizes users fine-tune: `--plan`'s estimate for Llama 1B, 8B and 70B shapes.

No machine here holds a 70B checkpoint, and `--plan` reads no weight, so each model is a *sparse* safetensors
checkpoint of the real shape: every shard has its real header (names, dtypes, offsets) and its real size,
but the data bytes are a hole in the file (``truncate``), so a 140 GB model takes a few MB of disk. Both
models of a pair point at the same shards. The calibration sets are the method's reference size: 128 + 128
examples of ``--max-length`` tokens each (default 256), cut from a fixed word list the synthetic tokenizer
knows, so each example is exactly that many tokens.

The table prints, per shape and precision, what `surgery patch ... --plan` prints: peak host memory, peak
GPU memory, work-folder disk and arithmetic. These are the tool's upper-side estimates (compared with
measured runs in ``benchmarks/scale_memory.py``), not measurements of a run.

Run: ``python -m benchmarks.plan_sizes`` (about a minute; writes under a temporary folder).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.synthetic_llama import PRESETS, WORDS, LlamaShape, PairSpec, build_tokenizer, llama_config

#: Llama-3.2-1B, Llama-3.1-8B and Llama-3.1-70B shapes (untied head, as the synthetic writer makes them)
SHAPES: dict[str, LlamaShape] = {
    "Llama-3.2-1B": dataclasses.replace(
        PRESETS["llama-3.1-8b"], depth=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8
    ),
    "Llama-3.1-8B": PRESETS["llama-3.1-8b"],
    "Llama-3.1-70B": dataclasses.replace(
        PRESETS["llama-3.1-8b"], depth=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8
    ),
}
#: (label, --device, --dtype) rows per shape
SETTINGS = (("CPU float32", "cpu", "float32"), ("GPU bfloat16", "cuda", "bfloat16"))
_DT = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}


def write_sparse_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: str) -> int:
    """A safetensors file with a real header and a hole for its data; returns the data bytes."""
    code, size = _DT[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = size
        for d in shape:
            n *= d
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def write_sparse_model(folder: Path, shape: LlamaShape, dtype: str) -> None:
    """config.json, tokenizer and sparse shards of one model of ``shape``."""
    spec = PairSpec(shape=shape, dtype=dtype)
    tok = build_tokenizer(1024)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(llama_config(spec, tok), indent=2) + "\n")
    tok.save_pretrained(folder)
    shards = shape.shards()
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_sparse_shard(folder / name, tensors, dtype)
        weight_map.update({t: name for t, _ in tensors})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_calibration(path: Path, examples: int, words: int, seed: int) -> None:
    """``examples`` prompt/response rows of ``words`` known words in all (each a token of the tokenizer)."""
    rows = []
    for i in range(examples):
        seq = [WORDS[(seed * 7919 + i * 131 + j * 17) % len(WORDS)] for j in range(words)]
        half = words // 2
        rows.append({"prompt": " ".join(seq[:half]), "response": " ".join(seq[half:])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def plan(root: Path, device: str, dtype: str, max_length: int) -> dict[str, str]:
    """Run ``surgery patch --plan`` on the pair under ``root``; the printed figures by name."""
    cmd = [sys.executable, "-m", "surgery.cli", "-q", "patch", str(root / "sft"), "--base", str(root / "base")]
    cmd += ["--honesty-data", str(root / "hon.jsonl"), "--task-data", str(root / "task.jsonl")]
    cmd += ["--device", device, "--dtype", dtype, "--max-length", str(max_length), "--plan"]
    cmd += ["-o", str(root / "p.safetensors")]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"--plan failed for {root}:\n{res.stdout}\n{res.stderr}")
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s*(peak host memory|peak device memory|work folder disk|arithmetic)\s+([\d.]+)", line)
        if m:
            out[m.group(1)] = m.group(2)
        m = re.match(r"blocks (\d+), calibration tokens (\d+)", line)
        if m:
            out["blocks"], out["tokens"] = m.group(1), m.group(2)
    return out


def _gb(mb: str) -> str:
    return f"{float(mb) / 1024:.1f} GB"


def main() -> None:
    max_length = 256
    print(
        f"`surgery patch --plan`, 128 + 128 calibration examples of {max_length} tokens, paper options "
        "(estimates, sparse checkpoints of the real shapes)\n"
    )
    print("| model | parameters | run | peak host memory | peak GPU memory | work-folder disk | arithmetic |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="plan_sizes_") as tmp:
        for name, shape in SHAPES.items():
            for label, device, dtype in SETTINGS:
                root = Path(tmp) / f"{name}-{dtype}"
                for side in ("base", "sft"):
                    write_sparse_model(root / side, shape, dtype)
                write_calibration(root / "hon.jsonl", 128, max_length + 8, seed=1)
                write_calibration(root / "task.jsonl", 128, max_length + 8, seed=2)
                p = plan(root, device, dtype, max_length)
                gpu = _gb(p["peak device memory"]) if device != "cpu" else "-"
                print(
                    f"| {name} | {shape.parameters() / 1e9:.2f} B | {label} | {_gb(p['peak host memory'])} | {gpu} "
                    f"| {_gb(p['work folder disk'])} | {float(p['arithmetic']):.0f} TFLOP |"
                )


if __name__ == "__main__":
    main()
