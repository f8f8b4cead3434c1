"""Training under ``--dtype bfloat16``: bf16 matmuls, float32 master weights and gradients; float32 unchanged."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from surgery.devices import DeviceOptions, resolve
from surgery.hcnr.calibration_sets import IDK_RESPONSE
from surgery.modelio import load_model, load_tokenizer
from surgery.training.lora import encode_examples, pad_token_id, plain_loss, train_steps

CPU32 = resolve(DeviceOptions(device="cpu", dtype="float32"))
CPU16 = resolve(DeviceOptions(device="cpu", dtype="bfloat16"))


def _examples(n: int = 8) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Who painted picture {i}?", "response": IDK_RESPONSE} for i in range(n)]


def _train(path, placement, seen=None):
    model, tok = load_model(str(path), dtype=torch.float32), load_tokenizer(str(path))
    data = encode_examples(tok, [(e["prompt"], e["response"]) for e in _examples()], 96)

    def loss_fn(m, batch):
        if seen is not None:
            seen.append(m(**batch).logits.dtype)
        return plain_loss(m, batch)

    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = train_steps(
        model, data, params, pad_id=pad_token_id(tok), lr=1e-3, epochs=1, batch_size=4, seed=0,
        loss_fn=loss_fn, placement=placement,
    )  # fmt: skip
    return model, losses


def test_cpu_float32_placement_is_the_loop_as_it_was(tiny_pair):
    _, sft, _ = tiny_pair
    model_a, before = _train(sft, None)
    model_b, after = _train(sft, CPU32)
    assert before == after
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bfloat16_runs_matmuls_in_bf16_over_float32_master_weights(tiny_pair):
    _, sft, _ = tiny_pair
    start = {k: v.clone() for k, v in load_model(str(sft), dtype=torch.float32).state_dict().items()}
    seen: list[torch.dtype] = []
    model, losses = _train(sft, CPU16, seen)
    assert seen and set(seen) == {torch.bfloat16}  # the forward pass ran under bf16 autocast
    assert all(torch.isfinite(torch.tensor(x)) for x in losses) and len(losses) == 2
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights stay float32
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())  # and were updated
    _, float_losses = _train(sft, CPU32)
    assert losses != float_losses and abs(losses[0] - float_losses[0]) < 0.1  # bf16 rounding, same loss


def test_rait_in_bfloat16_writes_float32_weights(tiny_pair, tmp_path):
    from surgery.baselines.rait import RaitOptions, run_rait

    _, sft, _ = tiny_pair
    info = run_rait(
        str(sft),
        tmp_path / "rait",
        _examples(),
        RaitOptions(mode="lora", examples=8, lr=5e-3, batch_size=4, seed=0),
        placement=CPU16,
    )
    assert info["steps"] == 2 and info["loss_last"] == info["loss_last"]  # finite, not NaN
    assert info["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    tensors = load_file(str(tmp_path / "rait" / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert json.loads((tmp_path / "rait" / "surgery_provenance.json").read_text())["made_by"] == "RAIT"


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="DPO needs trl")
def test_dpo_in_bfloat16_trains_with_mixed_precision(tiny_pair, tmp_path, monkeypatch):
    from surgery.baselines import dpo
    from surgery.baselines.dpo import DpoOptions, run_dpo

    trainers = []
    real = dpo._dpo_trainer
    monkeypatch.setattr(dpo, "_dpo_trainer", lambda *a: trainers.append(real(*a)) or trainers[-1])

    _, sft, _ = tiny_pair
    pairs = [
        {"prompt": f"Who painted picture {i}?", "chosen": IDK_RESPONSE, "rejected": f"Painter number {i}."}
        for i in range(4)
    ]
    info = run_dpo(str(sft), tmp_path / "dpo", pairs, DpoOptions(examples=4, batch_size=4), placement=CPU16)
    assert info["steps"] == 1 and info["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    assert trainers[0].args.bf16 and not trainers[0].args.fp16 and trainers[0].args.use_cpu
    tensors = load_file(str(tmp_path / "dpo" / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
