"""The synthetic Llama pair generator (benchmarks/synthetic_llama.py): real Llama names and shapes,
an index that covers every tensor, an SFT twin that moves only the recorded columns, same bytes twice."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from benchmarks.synthetic_llama import (
    INDEX,
    MARKER,
    PRESETS,
    PairSpec,
    ensure_pair,
    is_block_linear,
    llama_config,
    spec_for,
    write_pair,
)

TINY = dict(depth=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512)
_IDS = SimpleNamespace(bos_token_id=1, eos_token_id=6, pad_token_id=0)


def _meta_state(spec: PairSpec) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the transformers model built from the spec's config, without any weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = llama_config(spec, _IDS)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_tensors_are_those_of_llama_for_causal_lm(preset):
    spec = PairSpec(shape=PRESETS[preset])
    ours = {name: shape for shard in spec.shape.shards() for name, shape in shard}
    assert ours == _meta_state(spec)


def test_llama_3_1_8b_preset_has_the_real_parameter_count():
    shape = PRESETS["llama-3.1-8b"]
    assert shape.parameters() == 8_030_261_248  # Llama-3.1-8B, untied head
    assert shape.head_dim == 128
    assert dict(shape.config_extra)["rope_scaling"]["rope_type"] == "llama3"


def test_acceptance_pair_is_about_4_gb_at_depth_32():
    spec = spec_for(depth=32)
    assert 3.5e9 < 2 * spec.bytes_per_model() < 4.5e9


def test_spec_key_names_the_shape_and_changes_with_any_field():
    a, b = spec_for(**TINY), spec_for(**TINY, seed=1)
    assert a.key().startswith("llama-d2-h64-i128-a4-kv2-v512-float32-s0-")
    assert a.key() != b.key() and a.key() != spec_for(**TINY, examples=3).key()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    return write_pair(spec_for(**TINY), tmp_path_factory.mktemp("synthetic") / "pair")


@pytest.mark.tiny
def test_written_pair_loads_with_transformers_and_runs(tiny_synthetic):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for side in ("base", "sft"):
        model, info = AutoModelForCausalLM.from_pretrained(tiny_synthetic / side, output_loading_info=True)
        assert not any(info.values()), info  # nothing missing, unexpected or mismatched
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
        tok = AutoTokenizer.from_pretrained(tiny_synthetic / side)
        assert len(tok) <= model.config.vocab_size
        chat = [{"role": "user", "content": "What is the time?"}]
        # return_dict: transformers 5.x returns the encoding (not bare ids) from a tokenizing chat template
        ids = tok.apply_chat_template(chat, return_tensors="pt", return_dict=True)["input_ids"]
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.tiny
def test_index_covers_every_tensor_one_shard_per_block(tiny_synthetic):
    for side in ("base", "sft"):
        folder = tiny_synthetic / side
        index = json.loads((folder / INDEX).read_text())
        seen: dict[str, str] = {}
        total = 0
        for shard in sorted(folder.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for name in f.keys():
                    seen[name] = shard.name
                    t = f.get_tensor(name)
                    total += t.numel() * t.element_size()
        assert seen == index["weight_map"]
        assert set(seen) == set(_meta_state(spec_for(**TINY)))
        assert index["metadata"]["total_size"] == total
        assert len(set(seen.values())) == 2 + 2  # embeddings, 2 blocks, norm + head
        for name, shard in seen.items():
            if name.startswith("model.layers."):
                block = int(name.split(".")[2])
                assert shard == f"model-{block + 2:05d}-of-00004.safetensors"


@pytest.mark.tiny
def test_sft_differs_from_base_only_in_the_recorded_columns(tiny_synthetic):
    moved = json.loads((tiny_synthetic / "pair.json").read_text())["moved_columns"]
    base, sft = {}, {}
    for side, state in (("base", base), ("sft", sft)):
        for shard in (tiny_synthetic / side).glob("*.safetensors"):
            state.update(load_file(str(shard)))
    assert set(moved) == {n for n in base if is_block_linear(n)} and len(moved) == 2 * 7
    for name, w in base.items():
        changed = (sft[name] != w).reshape(w.shape[0], -1).any(dim=0).nonzero().flatten().tolist()
        assert changed == moved.get(name, []), name
    assert all(len(cols) == round(base[n].shape[1] / 8) for n, cols in moved.items())


@pytest.mark.tiny
def test_calibration_files_are_short_and_read_by_the_patch_reader(tiny_synthetic):
    from surgery.hcnr.calibration import read_calibration_jsonl

    for name in ("honesty.jsonl", "task.jsonl"):
        examples = read_calibration_jsonl(tiny_synthetic / name)
        assert len(examples) == 16
        assert all(len((str(e.prompt) + e.response).split()) <= 12 for e in examples)


@pytest.mark.tiny
def test_writing_is_deterministic_and_the_cache_is_reused(tiny_synthetic, tmp_path):
    spec = spec_for(**TINY)
    pair = ensure_pair(spec, tmp_path)
    assert _digests(pair.root) == _digests(tiny_synthetic)
    marker = pair.root / MARKER
    stamp = marker.stat().st_mtime_ns
    assert ensure_pair(spec, tmp_path).root == pair.root and marker.stat().st_mtime_ns == stamp
    marker.unlink()  # an unfinished folder is written again
    assert (ensure_pair(spec, tmp_path).root / MARKER).is_file()
    assert _digests(pair.root) == _digests(tiny_synthetic)


@pytest.mark.tiny
def test_bfloat16_pair_keeps_its_dtype(tmp_path):
    spec = spec_for(**{**TINY, "depth": 1}, dtype="bfloat16", examples=2)
    root = write_pair(spec, tmp_path / "bf16")
    state = load_file(str(root / "sft" / "model-00002-of-00003.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert json.loads((root / "sft" / "config.json").read_text())["torch_dtype"] == "bfloat16"
