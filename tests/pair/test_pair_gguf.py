"""GGUF -> HF conversion: the packaged file is found without importing its package, the weights
survive, the special tokens come from the GGUF metadata, and the GGUF copy is not kept."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from surgery.errors import SurgeryError
from surgery.pair import gguf as G


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (the inverse of what transformers undoes on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir, path):
    """A float32 llama GGUF of a tiny HF model, with a gpt2-style tokenizer (as SmolLM2's file has)."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    state = {k: v.float().numpy() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab]
    for content, idx in added.items():
        if idx >= len(tokens):
            tokens += [None] * (idx + 1 - len(tokens))
        tokens[idx] = content
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in added else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(added["<s>"])
    w.add_eos_token_id(added["<|end|>"])
    w.add_pad_token_id(added["<pad>"])
    w.add_chat_template(
        (model_dir / "chat_template.jinja").read_text()
        if (model_dir / "chat_template.jinja").is_file()
        else json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    )
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    w.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in names.items():
            t = state[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, cfg["num_attention_heads"])
            elif gg == "attn_k":
                t = _permute(t, cfg["num_key_value_heads"])
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


@pytest.fixture()
def packaged_gguf(tiny_models, tmp_path, monkeypatch):
    """A fake installed package whose __init__ would fail if imported, carrying a tiny GGUF."""
    pkg = tmp_path / "site" / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must never be imported')\n")
    write_tiny_gguf(tiny_models("llama"), pkg / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return G.PackagedGGUF(name="tiny-llama", module="fake_gguf_pkg", filename="tiny.gguf", requirement="fake")


def test_finds_the_file_without_importing(packaged_gguf):
    path = G.find_packaged_gguf(packaged_gguf)
    assert path.name == "tiny.gguf" and "fake_gguf_pkg" not in sys.modules


def test_missing_package_or_file_is_a_user_error(packaged_gguf):
    with pytest.raises(SurgeryError, match="not installed"):
        G.find_packaged_gguf(G.PackagedGGUF("x", "no_such_pkg_xyz", "a.gguf", "no-such-pkg"))
    with pytest.raises(SurgeryError, match="missing"):
        G.find_packaged_gguf(G.PackagedGGUF("x", "fake_gguf_pkg", "other.gguf", "fake"))


def test_conversion_keeps_weights_and_fixes_special_tokens(packaged_gguf, tiny_models, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    out = G.ensure_converted(packaged_gguf)
    assert out == tmp_path / "cache" / "models" / "tiny-llama"
    assert not (out / "tokenizer.model").exists()
    files = list(out.iterdir())
    assert (out / "config.json").is_file() and files
    assert all(p.read_bytes()[:4] != b"GGUF" for p in files)
    src = tiny_models("llama")
    ref = load_file(str(src / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    for name, t in ref.items():
        assert torch.equal(got[name], t.float()), name
    tok = AutoTokenizer.from_pretrained(str(out))
    ref_tok = AutoTokenizer.from_pretrained(str(src))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "<|end|>", "<pad>")
    text = "What is the capital of France? Paris."
    assert tok(text, add_special_tokens=False)["input_ids"] == ref_tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.eos_token_id == ref_tok.convert_tokens_to_ids("<|end|>")
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert G.ensure_converted(packaged_gguf) == out and (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_multi_part_packages_are_assembled_and_checked(tmp_path, monkeypatch):
    import hashlib

    site = tmp_path / "site"
    blob = b"GGUF" + bytes(range(256)) * 3
    for i, part in enumerate((blob[:300], blob[300:])):
        pkg = site / f"fake_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import me')\n")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(part)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    parts = (("fake_part1", "data/m.gguf.part00"), ("fake_part2", "data/m.gguf.part01"))
    src = G.PackagedGGUF("m", "fake_part1", "m.gguf", "fake", parts=parts, sha256=hashlib.sha256(blob).hexdigest())
    out = G.find_packaged_gguf(src)
    assert out == tmp_path / "cache" / "gguf" / "m.gguf" and out.read_bytes() == blob
    out.unlink()
    bad = G.PackagedGGUF("m", "fake_part1", "m.gguf", "fake", parts=parts, sha256="0" * 64)
    with pytest.raises(SurgeryError, match="sha256"):
        G.find_packaged_gguf(bad)
    assert not out.exists()
