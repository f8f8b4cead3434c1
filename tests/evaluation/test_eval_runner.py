"""The generation seam: left padding, order, stop tokens, batched == one at a time, back-end lookup."""

from __future__ import annotations

import pytest
import torch

from surgery.errors import SurgeryError
from surgery.evaluation.benchmarks import load_items
from surgery.evaluation.runner import HFGenerator, make_generator, register_backend, torch_generator
from surgery.pair.gguf import ensure_converted


class CharTokenizer:
    """One token per character (ids 10+ord), EOS 2, pad 0, no chat template."""

    chat_template = None
    bos_token = ""
    eos_token_id = 2
    pad_token_id = 0
    all_special_ids = [0, 2]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 10) for i in ids if i >= 10)


class EchoModel:
    """An HF-style ``generate`` that answers each row with its prompt's length, then EOS, then pads."""

    def __init__(self):
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        assert do_sample is False
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=False):
            n = int(mask.sum())
            assert mask[-n:].all() and not mask[: len(mask) - n].any()  # left padding
            assert (ids[: len(ids) - n] == pad_token_id).all()
            answer = [10 + ord(c) for c in str(n)] + [2]
            answer = (answer + [pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(torch.cat([ids, torch.tensor(answer)]))
        return torch.stack(rows)


def test_hf_generator_pads_left_keeps_order_and_stops_at_eos():
    model = EchoModel()
    gen = HFGenerator(model, CharTokenizer(), batch_size=2, name="echo")
    prompts = ["a" * 7, "b", "c" * 30, "d" * 3, "e" * 12]
    out = gen.generate(prompts, max_new_tokens=4)
    question_len = [len(f"Question: {p}\nAnswer:") for p in prompts]  # the no-template prompt format
    assert out == [str(n) for n in question_len]
    assert len(model.calls) == 3
    # batches are formed from length-sorted prompts, so the shortest two share the first batch
    first_ids, first_mask = model.calls[0]
    assert first_mask.sum(dim=1).tolist() == sorted(question_len)[:2]


def test_batch_size_must_be_positive():
    with pytest.raises(SurgeryError, match="batch-size"):
        HFGenerator(EchoModel(), CharTokenizer(), batch_size=0)


def test_batched_equals_unbatched_on_a_tiny_model(tiny_models):
    gen = torch_generator(str(tiny_models("llama")), batch_size=4)
    prompts = [
        "What is the capital of France?",
        "Who wrote it?",
        "How many legs does a spider have? Tell me.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}],
        "x",
        "Paris",
    ]
    batched = gen.generate(prompts, max_new_tokens=6)
    gen.batch_size = 1
    single = gen.generate(prompts, max_new_tokens=6)
    assert batched == single
    assert len(batched) == len(prompts) and all(isinstance(t, str) for t in batched)


def test_backend_registry(tiny_models):
    with pytest.raises(SurgeryError, match="Unknown back-end 'tpu'"):
        make_generator("tpu", "whatever")
    seen = {}

    def factory(model, **kw):
        seen.update(model=model, **kw)
        return HFGenerator(EchoModel(), CharTokenizer(), name="fake")

    register_backend("fake-test", factory)
    g = make_generator("fake-test", "m", batch_size=3)
    assert g.name == "fake" and seen == {"model": "m", "batch_size": 3}
    assert make_generator("torch", str(tiny_models("llama")), batch_size=2).name == "torch"


@pytest.mark.slow
def test_batched_equals_unbatched_on_smollm2(shared_data):
    """Left padding must not change a single greedy token on the real model (benchmarks/eval_speed.py at scale)."""
    gen = torch_generator(str(ensure_converted()), batch_size=6)  # SmolLM2-135M-Instruct from its PyPI GGUF
    prompts = [it.question for it in load_items("selfaware", data_dir=shared_data, limit=6, seed=5)]
    batched = gen.generate(prompts, max_new_tokens=12)
    gen.batch_size = 1
    assert gen.generate(prompts, max_new_tokens=12) == batched
    assert all(batched)
