"""`surgery apply` streams: its peak memory is about one shard, not the model, for a full model and an adapter.

A random Llama-architecture model (hidden 1024, intermediate 4096, 16 heads / 4 KV heads, 8 blocks,
vocabulary 4096: one 58 MiB shard per block plus one for the embeddings and head, 496 MiB of float32 on
disk, written block by block) and a rank-16 LoRA adapter on all its projections are generated in
``tmp_path``. A small valid patch is applied to each in a child process with a 32 MB
``--max-shard-size``; the child's peak RSS (``ru_maxrss`` from ``os.wait4``) minus a baseline child that
only imports what apply imports must stay under ``2 x largest input shard + patch + 150 MiB`` (266 MiB),
about half the model, which any whole-model path (transformers + PEFT's merge: the model at least once)
exceeds.

Why that bound: the writer holds one output shard (32 MB) and, while saving it, its serialised copy;
the reader one tensor (at most 16 MiB) and its mapped file pages; the adapter merge a float32 product and
sum of that tensor; require_finite a mask of it: together well under two input shards. The 150 MiB
margin covers allocator slack and what the first read pulls in beyond the imports (safetensors buffers,
the meta-device skeleton of the adapter's base). Measured on the 2-core development machine
(``pytest -s -m slow tests/models/test_apply_memory.py``): 67 MiB for the full model, 108 MiB for the
adapter, over a 498 MiB import baseline; the test takes about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from surgery.modelio import locate, open_checkpoint
from surgery.patchfile import PatchManifest, make_entry, write_patch

REPO = Path(__file__).resolve().parents[2]
HIDDEN, INTER, HEADS, KV_HEADS, BLOCKS, VOCAB, RANK = 1024, 4096, 16, 4, 8, 4096, 16
MB = 1024**2
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN * KV_HEADS // HEADS, HIDDEN),
    "self_attn.v_proj": (HIDDEN * KV_HEADS // HEADS, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}


def _write_model(folder: Path) -> int:
    """The random model, one shard per block (and one for embeddings and head); returns the largest shard's bytes."""
    from transformers import LlamaConfig

    folder.mkdir()
    LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        num_hidden_layers=BLOCKS,
        vocab_size=VOCAB,
        tie_word_embeddings=False,
    ).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    total = 0
    ends = {
        "model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
        "model.norm.weight": torch.ones(HIDDEN),
        "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
    }
    largest = 0
    for i in range(BLOCKS + 1):
        if i < BLOCKS:
            shard = {f"model.layers.{i}.{m}.weight": torch.randn(s, generator=g) * 0.02 for m, s in SHAPES.items()}
            shard[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HIDDEN)
            shard[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(HIDDEN)
        else:
            shard = ends
        name = f"model-{i + 1:05d}-of-{BLOCKS + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        largest = max(largest, (folder / name).stat().st_size)
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return largest


def _write_adapter(folder: Path, base: Path) -> None:
    """A rank-16 LoRA on every projection of every block, with PEFT's own config and key names."""
    from peft import LoraConfig

    folder.mkdir()
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(BLOCKS):
        for m, (out, inp) in SHAPES.items():
            key = f"base_model.model.model.layers.{i}.{m}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, inp, generator=g) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, RANK, generator=g) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=RANK, lora_alpha=32, target_modules=[m.split(".")[1] for m in SHAPES]).save_pretrained(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))


def _write_patch(sft: Path, path: Path) -> int:
    """A valid patch (fingerprints of ``sft``'s tensors, merged for an adapter) moving 64 columns of 4 matrices."""
    ckpt = open_checkpoint(locate(str(sft)))
    entries = []
    cols = torch.arange(0, 256, 4)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.6.self_attn.q_proj.weight"):
        w = ckpt.get(name)
        new = w.clone()
        new[:, cols] += 0.01
        entries.append(make_entry(name, w, new, cols, "cols", False))
    write_patch(path, entries, PatchManifest("surgery", "test", "HCNR", "base", str(sft), {}, {}))
    return path.stat().st_size


def _peak_rss(args: list[str]) -> int:
    """Peak resident set (bytes) of a child ``python args...``, from the kernel's own accounting."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    child.stdout.close()  # type: ignore[union-attr]
    child.stderr.close()  # type: ignore[union-attr]
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, (args, out.decode()[-2000:], err.decode()[-2000:])
    return usage.ru_maxrss * 1024  # kilobytes on Linux


#: what `surgery apply` imports before it reads a tensor (transformers' Llama code: the adapter's skeleton)
BASELINE = (
    "import torch, transformers, surgery.cli, surgery.apply, surgery.modelio; "
    "import transformers.models.llama.modeling_llama"
)


@pytest.mark.slow
def test_apply_peak_memory_is_about_one_shard(tmp_path):
    base = tmp_path / "model"
    largest = _write_model(base)
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    adapter = tmp_path / "adapter"
    _write_adapter(adapter, base)
    baseline = _peak_rss(["-c", BASELINE])
    rows = []
    for label, sft in (("full model", base), ("LoRA adapter", adapter)):
        patch = tmp_path / f"{label[:4]}.patch.safetensors"
        patch_bytes = _write_patch(sft, patch)
        out = tmp_path / f"out-{label[:4]}"
        peak = _peak_rss(
            [
                "-m",
                "surgery.cli",
                "-q",
                "--threads",
                "1",
                "apply",
                str(sft),
                str(patch),
                "-o",
                str(out),
                "--max-shard-size",
                "32MB",
            ]
        )
        shards = sorted(out.glob("model-*.safetensors"))
        assert len(shards) > 10 and (out / "model.safetensors.index.json").is_file(), "output not sharded"
        bound = 2 * largest + patch_bytes + 150 * MB
        rows.append((label, (peak - baseline) / MB, bound / MB))
        assert model_bytes > 4 * (peak - baseline), rows  # "several times larger" than what apply holds
        assert peak - baseline < bound, (rows, baseline / MB, model_bytes / MB)
    print(f"\nmodel {model_bytes / MB:.0f} MB, largest shard {largest / MB:.0f} MB, baseline {baseline / MB:.0f} MB")
    for label, used, bound in rows:
        print(f"{label:13s} peak over baseline {used:6.0f} MB (bound {bound:.0f} MB)")
