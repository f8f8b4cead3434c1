"""LoRA training on a tiny model: loss on the response only, deterministic, saved adapters reload."""

from __future__ import annotations

import pytest
import torch

from surgery.training.lora import (
    collate,
    default_target_modules,
    encode_examples,
    merge_adapter,
    response_only_loss,
    save_adapter,
    train_lora,
)

EXAMPLES = [
    ("What is the capital of France?", "Paris."),
    ("Who wrote the paper about steganography?", "I don't know."),
    ("How many legs does a spider have?", "Eight."),
    ("Complete the sentence: the genre of Weird Al is", "comedy"),
] * 3


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32), AutoTokenizer.from_pretrained(
        str(path)
    )


def test_labels_cover_only_the_response(tiny_models):
    _, tok = _load(tiny_models("llama"))
    ((ids, labels),) = encode_examples(tok, [("What is the capital of France?", "Paris.")], max_length=96)
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer).startswith("Paris.")
    assert labels[: len(labels) - len(answer)] == [-100] * (len(labels) - len(answer))
    batch = collate([(ids, labels), (ids[:3], [-100, -100, 5])], pad_id=0)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * (len(ids) - 3)
    assert (batch["labels"][1, 3:] == -100).all()


def test_training_is_deterministic_and_lowers_the_loss(tiny_models, tmp_path):
    path = tiny_models("llama")
    saved = []
    for run in range(2):
        model, tok = _load(path)
        peft_model = train_lora(model, tok, EXAMPLES, r=4, alpha=8, lr=5e-3, epochs=3, batch_size=4, seed=3)
        losses = peft_model.training_losses
        assert losses[-1] < losses[0]
        saved.append(save_adapter(peft_model, tmp_path / f"a{run}", base_model_name_or_path=str(path)))
    assert (saved[0] / "adapter_model.safetensors").read_bytes() == (
        saved[1] / "adapter_model.safetensors"
    ).read_bytes()
    assert (saved[0] / "adapter_config.json").read_text() == (saved[1] / "adapter_config.json").read_text()


def test_saved_adapter_is_fp16_and_merges_to_a_changed_model(tiny_models, tmp_path):
    from safetensors import safe_open

    path = tiny_models("llama")
    model, tok = _load(path)
    assert set(default_target_modules(model)) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    peft_model = train_lora(model, tok, EXAMPLES[:4], r=4, alpha=8, lr=5e-3, epochs=1, batch_size=2, seed=0)
    out = save_adapter(peft_model, tmp_path / "adapter", base_model_name_or_path=str(path))
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as h:
        names = h.keys()  # a safetensors handle: keys() but no iteration
        assert {h.get_tensor(k).dtype for k in names} == {torch.float16}
        assert any("lora_B" in k for k in names)
    base, _ = _load(path)
    before = base.model.layers[0].self_attn.q_proj.weight.clone()
    merged = merge_adapter(base, out)
    after = merged.model.layers[0].self_attn.q_proj.weight
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not torch.equal(before, after)


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2", "gpt2"])
def test_response_only_loss_equals_the_full_loss(tiny_models, family):
    """Same loss and same LoRA gradients as ``model(**batch).loss``, padding and soft-capping included."""
    from peft import LoraConfig, get_peft_model

    model, tok = _load(tiny_models(family))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = collate(encode_examples(tok, EXAMPLES[:3], max_length=96), pad)
    assert (batch["attention_mask"] == 0).any()  # the rows differ in length: padding is exercised
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=default_target_modules(model), init_lora_weights=False)
    )
    grads = []
    for loss_fn in (lambda: peft_model(**batch).loss, lambda: response_only_loss(peft_model, batch)):
        peft_model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in peft_model.parameters() if p.requires_grad]))
    (full, g_full), (fast, g_fast) = grads
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert len(g_full) == len(g_fast) > 0
    for a, b in zip(g_full, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_response_logits_only_training_learns_like_the_plain_loss(tiny_models):
    path = tiny_models("llama")
    runs = []
    for fast in (False, True):
        model, tok = _load(path)
        runs.append(
            train_lora(
                model, tok, EXAMPLES, r=4, alpha=8, lr=5e-3, epochs=2, batch_size=4, seed=3, response_logits_only=fast
            ).training_losses
        )
    assert runs[1][-1] < runs[1][0]
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=1e-3, atol=1e-4)
