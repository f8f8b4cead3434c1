"""PEFT LoRA adapters merged tensor by tensor (surgery/adapter_merge.py) equal PEFT's own merge_and_unload.

Every case builds a real adapter with peft (random, non-zero B: ``init_lora_weights=False``) on a tiny
model and compares every tensor of ``open_checkpoint(adapter)`` with PEFT's merged state dict. The
tolerance is zero: the merge follows PEFT's arithmetic (float32 factors and product, one rounding to
the weight's dtype), so the tensors are bit-identical (``torch.equal``), in float32, bfloat16 and
float16 bases alike.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from surgery.errors import ModelFolderError
from surgery.modelio import AdapterCheckpoint, LazyCheckpoint, locate, open_checkpoint
from surgery.patchfile import PatchManifest, make_entry, write_patch
from tests.support.faults import assert_refused, cli, digest
from tests.support.tiny import build_tiny_model


def make_adapter(base: Path, out: Path, *, peft_type: str = "lora", seed: int = 0, **kwargs) -> Path:
    """A saved PEFT adapter on ``base`` (random non-zero factors), its config naming ``base``."""
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    if peft_type == "lora":
        config = peft.LoraConfig(init_lora_weights=False, **kwargs)
    else:
        config = peft.IA3Config(init_ia3_weights=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(model, config).save_pretrained(out)
    edit_config(out, base_model_name_or_path=str(base))
    return out


def train_full_copies(adapter: Path, seed: int = 0) -> None:
    """Move the full tensors an adapter carries (modules_to_save, biases, saved embeddings), as training would."""
    f = adapter / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(seed)
    state = load_file(f)
    for k, v in state.items():
        if "lora_" not in k:
            state[k] = (v.float() + 0.1 * torch.randn(v.shape, generator=g)).to(v.dtype)
    save_file(state, f, metadata={"format": "pt"})


def edit_config(adapter: Path, **fields) -> None:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload state dict (base in its own dtype), a tied tensor kept once as on disk."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out, seen = {}, set()
    for k, v in merged.state_dict().items():
        if (v.data_ptr(), tuple(v.shape)) not in seen:
            seen.add((v.data_ptr(), tuple(v.shape)))
            out[k] = v.detach().clone()
    return out


def cast_adapter(adapter: Path, dtype: torch.dtype) -> None:
    f = adapter / "adapter_model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})


def assert_merges_like_peft(base: Path, adapter: Path) -> AdapterCheckpoint:
    """Every tensor bit-identical to PEFT's merge; every tensor the adapter changes differs from the base."""
    ckpt = open_checkpoint(locate(str(adapter)))
    assert isinstance(ckpt, AdapterCheckpoint)
    ref = peft_merged(base, adapter)
    assert sorted(ckpt.keys()) == sorted(ref)
    for name, want in ref.items():
        got = ckpt.get(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), (name, (got.float() - want.float()).abs().max())
    plain = LazyCheckpoint.from_dir(base)
    assert ckpt.adapter.changed, "the adapter changed nothing"
    for name in ckpt.adapter.changed:
        assert not torch.equal(ckpt.get(name), plain.get(name)), f"{name} was planned but not changed"
    return ckpt


CASES = {
    "llama-plain": ("llama", torch.float32, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    "llama-rslora-embedding-modules_to_save": (
        "llama",
        torch.float32,
        dict(
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "o_proj", "gate_proj", "embed_tokens"],
            modules_to_save=["lm_head"],
        ),
    ),
    "llama-rank_pattern-alpha_pattern": (
        "llama",
        torch.float32,
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj", "up_proj"],
            rank_pattern={"v_proj": 2, "model.layers.1.mlp.down_proj": 6},
            alpha_pattern={"down_proj": 3, "up_proj": 32},
        ),
    ),
    # GPT-2's Conv1D stores (in, out): PEFT's fan_in_fan_out
    "gpt2-conv1d-fan_in_fan_out": (
        "gpt2",
        torch.float32,
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    ),
    # tied embeddings: LoRA on the (shared) input embedding, stored once
    "gemma-tied-embedding": (
        "gemma",
        torch.float32,
        dict(r=4, lora_alpha=16, target_modules=["q_proj", "embed_tokens"]),
    ),
    "qwen2-lora_bias": (
        "qwen2",
        torch.float32,
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], lora_bias=True),
    ),
    "qwen2-bias-all": ("qwen2", torch.float32, dict(r=4, lora_alpha=8, target_modules=["q_proj"], bias="all")),
    "llama-bf16-base": ("llama", torch.bfloat16, dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])),
    "llama-fp16-base": ("llama", torch.float16, dict(r=8, lora_alpha=8, target_modules=["k_proj", "up_proj"])),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """(family, dtype) -> a tiny base model folder, built once for the module."""
    root = tmp_path_factory.mktemp("bases")
    cache: dict[tuple[str, torch.dtype], Path] = {}

    def get(family: str, dtype: torch.dtype = torch.float32) -> Path:
        if (family, dtype) not in cache:
            cache[family, dtype] = build_tiny_model(family, root / f"{family}-{str(dtype)[6:]}", dtype=dtype)
        return cache[family, dtype]

    return get


@pytest.mark.tiny
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tensor_equals_peft_merge(bases, tmp_path, case):
    family, dtype, kwargs = CASES[case]
    base = bases(family, dtype)
    adapter = make_adapter(base, tmp_path / "adapter", **kwargs)
    train_full_copies(adapter)
    assert_merges_like_peft(base, adapter)


@pytest.mark.tiny
@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_adapter_files(bases, tmp_path, stored):
    """Adapters are often saved in fp16/bf16 (surgery's own save_adapter: fp16); PEFT upcasts the factors."""
    base = bases("llama", torch.bfloat16 if stored is torch.float16 else torch.float32)
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    cast_adapter(adapter, stored)
    assert_merges_like_peft(base, adapter)


@pytest.mark.tiny
def test_keys_with_the_adapter_name_merge_the_same(bases, tmp_path):
    """``...lora_A.default.weight`` (adapter name kept, as some tools save it) reads like ``...lora_A.weight``."""
    base = bases("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    want = {k: v for k, v in peft_merged(base, adapter).items()}
    f = adapter / "adapter_model.safetensors"
    state = load_file(f)
    renamed = {
        k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v for k, v in state.items()
    }
    assert renamed.keys() != state.keys()
    save_file(renamed, f, metadata={"format": "pt"})
    got = open_checkpoint(locate(str(adapter)))
    assert len(got.adapter.changed) == 4
    assert all(torch.equal(got.get(k), want[k]) for k in want)


@pytest.mark.tiny
def test_requested_dtype_merges_like_peft_on_a_model_loaded_in_it(bases, tmp_path):
    """``open_checkpoint(dtype=float32)`` on a bf16 base = PEFT merging into the base loaded as float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = bases("llama", torch.bfloat16)
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    ckpt = open_checkpoint(locate(str(adapter)), dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ref = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()
    for name in ckpt.keys():
        assert ckpt.get(name).dtype == torch.float32
        assert torch.equal(ckpt.get(name), ref[name]), name


def _patch_for(ckpt, path: Path, names: list[str]) -> Path:
    """A valid patch moving two columns of each named weight (fingerprints of ``ckpt``'s tensors)."""
    entries = []
    for name in names:
        w = ckpt.get(name)
        new = w.float().clone()
        new[:, [0, 3]] += 0.25
        entries.append(make_entry(name, w, new, torch.tensor([0, 3]), "cols", False))
    manifest = PatchManifest("surgery", "test", "HCNR", "base", "sft", {}, {})
    write_patch(path, entries, manifest)
    return path


@pytest.mark.tiny
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_apply_on_an_adapter_writes_the_peft_merged_model_patched(bases, tmp_path, family):
    """`surgery apply ADAPTER` gives the tensors `surgery apply` gives on the PEFT-merged folder (the old path)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = bases(family)
    targets = ["q_proj", "v_proj", "down_proj"] if family == "llama" else ["c_attn", "c_fc"]
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=targets)
    merged_dir = tmp_path / "peft-merged"
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(merged_dir)
    ckpt = open_checkpoint(locate(str(adapter)))
    patched = [n for n in ckpt.adapter.changed if n.endswith(".weight")][:2]
    patch = _patch_for(ckpt, tmp_path / "p.safetensors", patched)
    inputs = digest([base, adapter])  # the merge adds in place into fresh reads, never into the files
    outs = []
    for sft in (adapter, merged_dir):
        out = tmp_path / f"out-{sft.name}"
        res = cli("apply", str(sft), str(patch), "-o", str(out), "--max-shard-size", "20KB")
        assert res.exit_code == 0, (res.output, res.stderr)
        outs.append(LazyCheckpoint.from_dir(out))
    assert digest([base, adapter]) == inputs, "an input was changed"
    assert len(outs[0].files) > 1, "the output was not sharded"
    assert sorted(outs[0].keys()) == sorted(outs[1].keys())
    for name in outs[1].keys():
        assert torch.equal(outs[0].get(name), outs[1].get(name)), name
    assert not torch.equal(outs[0].get(patched[0]), ckpt.get(patched[0])), "the patch changed nothing"


# -- refusals: one sentence, exit 2, nothing written, inputs unchanged ---------------------------------------


def _refused(adapter: Path, base: Path, words: tuple[str, ...]) -> None:
    assert_refused(["check", str(adapter), "--base", str(base)], [adapter, base], None, words=words)
    with pytest.raises(ModelFolderError):
        open_checkpoint(locate(str(adapter)))


def _add_tensor(adapter: Path, key: str, t: torch.Tensor) -> None:
    f = adapter / "adapter_model.safetensors"
    save_file({**load_file(f), key: t}, f, metadata={"format": "pt"})


def _dora(base, out):
    return make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)


def _ia3(base, out):
    return make_adapter(
        base, out, peft_type="ia3", target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]
    )


def _pissa(base, out):
    a = make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"])
    edit_config(a, init_lora_weights="pissa")
    return a


def _layer_replication(base, out):
    a = make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"])
    edit_config(a, layer_replication=[[0, 2], [1, 2]])
    return a


def _unknown_key(base, out):
    a = make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"])
    _add_tensor(a, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", torch.ones(48))
    return a


def _rank_mismatch(base, out):
    a = make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"])
    edit_config(a, rank_pattern={"q_proj": 8})
    return a


def _pickle_only(base, out):
    a = make_adapter(base, out, r=4, lora_alpha=8, target_modules=["q_proj"])
    torch.save(load_file(a / "adapter_model.safetensors"), a / "adapter_model.bin")
    (a / "adapter_model.safetensors").unlink()
    return a


REFUSALS = {
    "dora": ("llama", _dora, ("DoRA",)),
    "ia3": ("llama", _ia3, ("peft_type", "IA3")),
    "pissa-init": ("llama", _pissa, ("pissa", "rewrites the base")),
    "layer-replication": ("llama", _layer_replication, ("layer replication",)),
    "unknown-tensor": ("llama", _unknown_key, ("lora_magnitude_vector", "neither a LoRA factor")),
    "rank-mismatch": ("llama", _rank_mismatch, ("rank 8",)),
    "pickle-only": ("llama", _pickle_only, ("pickle",)),
    "tied-lm_head-lora": (
        "gemma",
        lambda b, o: make_adapter(b, o, r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]),
        ("lm_head", "ties"),
    ),
    "tied-embedding-modules_to_save": (
        "gemma",
        lambda b, o: make_adapter(b, o, r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
        ("embed_tokens", "ties"),
    ),
}


@pytest.mark.tiny
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unmergeable_adapters_are_refused_in_one_sentence(bases, tmp_path, case):
    family, build, words = REFUSALS[case]
    base = bases(family)
    adapter = build(base, tmp_path / "adapter")
    _refused(adapter, base, words)


@pytest.mark.tiny
def test_pickle_adapter_merges_with_allow_pickle(bases, tmp_path):
    base = bases("llama")
    adapter = _pickle_only(base, tmp_path / "adapter")
    ckpt = AdapterCheckpoint(LazyCheckpoint.from_dir(base).files, adapter, base, allow_pickle=True)
    ref = peft_merged(base, adapter)
    assert all(torch.equal(ckpt.get(k), ref[k]) for k in ref)


@pytest.mark.tiny
def test_the_whole_model_is_never_loaded(bases, tmp_path, monkeypatch):
    """open_checkpoint on an adapter builds no model with weights: from_pretrained is never called."""
    from transformers import AutoModelForCausalLM

    base = bases("llama")
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])

    def forbidden(*args, **kwargs):
        raise AssertionError("the whole model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", forbidden)
    ckpt = open_checkpoint(locate(str(adapter)))
    assert all(ckpt.get(k).device.type == "cpu" for k in ckpt.keys())
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as h:
        assert len(list(h.keys())) == 4  # 2 blocks x q_proj x (A, B)
