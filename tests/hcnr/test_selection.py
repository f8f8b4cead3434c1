"""Fisher scores and neuron selection, against naive per-example autograd and hand-made cases."""

import pytest
import torch

from surgery.hcnr.calibration import CalibExample, make_batches, tokenize_examples
from surgery.hcnr.fisher import batched_column_scores, per_example_losses
from surgery.hcnr.selection import honesty_priority, relative_perturbation, select_units, top_share
from surgery.linear_layers import find_linear_layers
from surgery.modelio import load_tokenizer, locate
from tests.support.streams import streamed_fisher


def test_column_and_row_score_identities():
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(5, 7, generator=g), torch.randn(5, 3, generator=g)
    grad = d.T @ x  # out x in, the per-example weight gradient
    assert torch.allclose(batched_column_scores(x[None], d[None])[0], (grad**2).sum(0), atol=1e-5)
    assert torch.allclose(batched_column_scores(d[None], x[None])[0], (grad**2).sum(1), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_streamed_fisher_matches_naive_per_example_gradients(family, tiny_models, tmp_path):
    """Block-by-block forward and backward streams give the whole model's per-example gradient sums."""
    from transformers import AutoModelForCausalLM

    path = tiny_models(family)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = load_tokenizer(locate(str(path)))
    exs = [
        CalibExample("What is the capital of France?", "Paris."),
        CalibExample("Who wrote it?", "I don't know."),
        CalibExample("How many legs does a spider have?", "eight"),
    ]
    enc = tokenize_examples(tok, exs, 64)
    layers = find_linear_layers(model)
    got = streamed_fisher(path, make_batches(enc, 2, tok.pad_token_id), tmp_path / "work")  # padded batches
    assert got.n_examples == 3
    modules = dict(model.named_modules())
    want_c = {layer.weight: 0.0 for layer in layers}
    want_r = {layer.weight: 0.0 for layer in layers}
    for ids, labels in enc:  # naive: one example at a time, real weight gradients
        model.zero_grad()
        out = model(input_ids=torch.tensor([ids])).logits
        per_example_losses(out, torch.tensor([labels])).sum().backward()
        for layer in layers:
            grad = modules[layer.module].weight.grad.double()
            want_c[layer.weight] = want_c[layer.weight] + (grad**2).sum(0)
            want_r[layer.weight] = want_r[layer.weight] + (grad**2).sum(1)
    for layer in layers:  # float32 gradients: equal to ~1e-5 of the largest score of the matrix
        for got_v, want_v in (
            (got.columns[layer.weight], want_c[layer.weight]),
            (got.rows[layer.weight], want_r[layer.weight]),
        ):
            assert (got_v - want_v).abs().max() <= 1e-5 * float(want_v.abs().max()) + 1e-9, layer.weight


def test_priority_prefers_honesty_only_neurons():
    s_hon = torch.tensor([1.0, 1.0, 0.1, 0.0])
    s_task = torch.tensor([0.01, 1.0, 0.1, 5.0])
    r = honesty_priority(s_hon, s_task)
    assert int(torch.argmax(r)) == 0
    assert r[1] == 0 and r[3] == 0
    assert torch.equal(top_share(r, 0.5), torch.tensor([0, 1]))  # ties broken by lower index
    normed = honesty_priority(s_hon, s_task, normalize=True)
    assert int(torch.argmax(normed)) == 0


def test_top_share_keeps_at_least_one():
    assert top_share(torch.tensor([3.0, 1.0, 2.0]), 0.01).tolist() == [0]


def test_cross_layer_keeps_most_moved_units():
    w0 = torch.ones(4, 4)
    moved = w0.clone()
    moved[:, 1] += 1.0
    num, den = relative_perturbation(w0, moved, torch.tensor([1]))
    assert (num, den) == (4.0, 4.0)
    num2, _ = relative_perturbation(w0, moved, torch.tensor([0]))
    assert num2 == 0.0
    kept = select_units({"a": (4.0, 4.0), "b": (0.0, 4.0), "c": (1.0, 4.0)}, 0.5)
    assert kept == ["a", "c"]
