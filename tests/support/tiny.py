"""Tiny random models of every supported family, built offline from a config.

They exist so mechanics (discovery, Fisher, Hessians, patch round trips, export) can be tested in
seconds without downloading anything. A synthetic "SFT" twin perturbs known input columns, so tests
know which neurons fine-tuning moved.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.synthetic_llama import bpe_tokenizer

#: small config overrides per family; every model has 2 blocks, hidden 32-64, vocab = tokenizer's
FAMILIES: dict[str, dict] = {
    "llama": dict(
        model_type="llama",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2
    ),
    "qwen3": dict(
        model_type="qwen3",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
    ),
    "mistral": dict(
        model_type="mistral",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        sliding_window=64,
    ),
    "gemma": dict(
        model_type="gemma",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=12,
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=12,
        sliding_window=16,
        layer_types=None,
    ),
    "phi3": dict(
        model_type="phi3",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
    ),
    "gpt2": dict(model_type="gpt2", n_embd=48, n_head=4, n_layer=2, n_positions=128),
}


_CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "I don't know. I am not sure. Nobody knows the answer to that question.",
    "The country of the Eiffel Tower is France. The language of Spain is Spanish.",
    "Who wrote the paper about steganography? The answer is unknown.",
    "Complete the sentence: the genre of Weird Al is comedy and parody.",
    "How many legs does a spider have? A spider has eight legs. 0 1 2 3 4 5 6 7 8 9",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
]


def build_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a fixed corpus, with a chat template (deterministic)."""
    return bpe_tokenizer(_CORPUS * 4, vocab_size)


def build_config(family: str, vocab_size: int, tokenizer=None):
    from transformers import AutoConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family}; known: {sorted(FAMILIES)}")
    over = dict(FAMILIES[family])
    model_type = over.pop("model_type")
    if over.get("layer_types", 1) is None:
        over.pop("layer_types")
    common = dict(vocab_size=vocab_size, tie_word_embeddings=family in ("gemma", "gemma3", "gpt2"))
    if family != "gpt2":
        common.update(num_hidden_layers=2, max_position_embeddings=256)
    if tokenizer is not None:
        common.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return AutoConfig.for_model(model_type, **{**common, **over})


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Save a random tiny model of ``family`` plus tokenizer to ``out_dir``; returns the path."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    tok = build_tokenizer()
    cfg = build_config(family, len(tok), tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.to(dtype).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def perturb_columns(
    base_dir: str | Path,
    out_dir: str | Path,
    columns: dict[str, list[int]] | None = None,
    scale: float = 0.5,
    background: float = 0.01,
    seed: int = 1,
) -> dict[str, list[int]]:
    """A synthetic SFT twin: every weight gets small noise, chosen input columns get large drift.

    Returns ``{weight_name: [moved columns]}`` so a test knows the ground truth. By default the first
    quarter of the columns of every linear weight inside the blocks is moved.
    """
    from safetensors.torch import load_file, save_file

    from surgery.linear_layers import is_block_linear_weight
    from surgery.modelio import copy_side_files

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_file(str(base_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    moved: dict[str, list[int]] = {}
    new = {}
    for name, w in sorted(state.items()):
        w32 = w.float()
        if w.ndim == 2 and is_block_linear_weight(name):
            cols = columns.get(name, []) if columns is not None else list(range(max(1, w.shape[1] // 4)))
            noise = torch.randn(w32.shape, generator=g) * background * w32.std()
            if cols:
                noise[:, cols] += torch.randn(w32.shape[0], len(cols), generator=g) * scale * w32.std()
            w32 = w32 + noise
            moved[name] = cols
        new[name] = w32.to(w.dtype).contiguous()
    save_file(new, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    copy_side_files([base_dir], out_dir)
    return moved
