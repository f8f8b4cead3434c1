"""collect_hessians against an independent computation: inputs captured with plain forward hooks,
H = (2/N) Σ x xᵀ summed explicitly in float64 over the tokens the attention mask keeps, and the
input groups (q/k/v, gate/up) derived from module names, not from tensor identity."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file

from surgery.hcnr.calibration import CalibExample, load_calibration_sets, make_batches, tokenize_examples
from surgery.hcnr.compensation import Problem, compensate_exact
from surgery.hcnr.hessian import collect_hessians
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.linear_layers import find_linear_layers
from surgery.modelio import load_model, load_tokenizer, locate
from surgery.patchfile import read_patch

EXAMPLES = [
    CalibExample("What is the capital of France?", "Paris."),
    CalibExample("Who wrote the paper number 7?", "I don't know."),
    CalibExample("How many legs does a spider have?", "Eight, like every other spider I have ever met."),
]

#: layers that read the same input inside a block
SHARED_INPUT = {
    "q_proj": "attention input",
    "k_proj": "attention input",
    "v_proj": "attention input",
    "gate_proj": "mlp input",
    "up_proj": "mlp input",
}


def _captured_inputs(model, layers, batches):
    """Every linear layer's input per batch, kept with plain forward hooks (no grouping, no masking)."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {layer.weight: [] for layer in layers}
    handles = [
        modules[layer.module].register_forward_hook(
            lambda _m, args, _o, name=layer.weight: seen[name].append(args[0].detach().clone())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _whole_model_hessians(model, layers, batches):
    """collect_hessians fed by whole-model forwards (the pipeline feeds it one block at a time)."""
    passes = [
        (
            b.attention_mask,
            functools.partial(model, input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False),
        )
        for b in batches
    ]
    return collect_hessians(dict(model.named_modules()), layers, passes)


def _expected_groups(layers) -> list[list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for layer in layers:
        leaf = layer.module.rsplit(".", 1)[-1]
        groups.setdefault((layer.block, SHARED_INPUT.get(leaf, layer.weight)), []).append(layer.weight)
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hessians_equal_explicit_sum_over_captured_inputs(family, tiny_models):
    src = locate(str(tiny_models(family)))
    model = load_model(src, dtype=torch.float32)
    tok = load_tokenizer(src)
    batches = make_batches(tokenize_examples(tok, EXAMPLES, 64), 2, tok.pad_token_id)  # padded second batch
    assert any(bool((b.attention_mask == 0).any()) for b in batches), "the test needs padding to be masked"
    layers = find_linear_layers(model)
    got = _whole_model_hessians(model, layers, batches)

    seen = _captured_inputs(model, layers, batches)
    masks = [b.attention_mask.bool() for b in batches]
    n_tokens = int(sum(int(m.sum()) for m in masks))
    assert got.tokens == n_tokens
    for layer in layers:
        x = torch.cat([x_b[m].double() for x_b, m in zip(seen[layer.weight], masks)])
        assert x.shape == (n_tokens, layer.in_features)
        want = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
        for row in x:  # Σ x xᵀ one token at a time
            want += torch.outer(row, row)
        want *= 2.0 / n_tokens
        h = got.by_layer[layer.weight]
        assert h.dtype == torch.float64
        assert torch.allclose(h, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())), layer.weight


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_layers_reading_one_input_share_one_hessian(family, tiny_models):
    src = locate(str(tiny_models(family)))
    model = load_model(src, dtype=torch.float32)
    tok = load_tokenizer(src)
    batches = make_batches(tokenize_examples(tok, EXAMPLES, 64), 2, tok.pad_token_id)
    layers = find_linear_layers(model)
    got = _whole_model_hessians(model, layers, batches)
    expected = _expected_groups(layers)
    assert any(len(g) == 3 for g in expected) and any(len(g) == 2 for g in expected)  # q/k/v and gate/up exist
    assert sorted(got.groups) == expected
    seen = _captured_inputs(model, layers, batches)
    for group in expected:
        first = group[0]
        for other in group[1:]:
            assert got.by_layer[other] is got.by_layer[first]  # one accumulator, not equal copies
            assert all(torch.equal(a, b) for a, b in zip(seen[first], seen[other]))  # really the same input
    singles = [g[0] for g in expected if len(g) == 1]
    assert len({id(got.by_layer[w]) for w in singles}) == len(singles)


def test_patch_values_are_compensated_with_the_explicit_hessian(tiny_pair, calib, tmp_path):
    """End to end: the stored values equal the exact solver run on H from captured inputs (not collect_hessians)."""
    base, sft, _ = tiny_pair
    hon, task = calib
    options = PatchOptions(hessian_data="hon")
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, options)
    _, entries = read_patch(patch)
    src = locate(str(sft))
    model = load_model(src, dtype=torch.float32)
    batches = load_calibration_sets(load_tokenizer(src), hon, task, options).hon
    layers = {layer.weight: layer for layer in find_linear_layers(model)}
    seen = _captured_inputs(model, [layers[e.weight] for e in entries], batches)
    masks = [b.attention_mask.bool() for b in batches]
    w0s, w1s = load_file(str(base / "model.safetensors")), load_file(str(sft / "model.safetensors"))
    for e in entries:
        x = torch.cat([x_b[m].double() for x_b, m in zip(seen[e.weight], masks)])
        h = 2.0 / x.shape[0] * x.T @ x
        w, _ = compensate_exact(Problem(w0s[e.weight], w1s[e.weight], e.index.long(), h, damp=0.01))
        assert torch.allclose(e.values.double(), w[:, e.index.long()], atol=1e-5), e.weight
