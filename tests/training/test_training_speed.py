"""The train-step timing behind `python -m benchmarks.train_step`, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from surgery.modelio import load_model, load_tokenizer
from surgery.training.speed import loss_step_timings


def test_both_losses_are_timed_and_agree(tiny_models):
    path = tiny_models("llama")
    model, tok = load_model(str(path), dtype=torch.float32), load_tokenizer(str(path))
    examples = [("What is the capital of France?", "Paris."), ("Who wrote the secret paper?", "I don't know.")]
    t = loss_step_timings(model, tok, examples, repeats=1)
    assert [r.name for r in t.rows] == ["plain (model(**batch).loss)", "response-only logits"]
    assert t.rows[0].loss == pytest.approx(t.rows[1].loss, rel=1e-5)
    assert all(r.seconds > 0 for r in t.rows)
    assert 0 < t.labelled < t.tokens and t.vocabulary == model.get_output_embeddings().weight.shape[0]
