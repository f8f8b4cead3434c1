"""``--kind-pooling mean|min`` (issue 16): the neuron priority taken per kind of question to decline and then
combined, so selection rewards neurons shared by kinds instead of one pooled score over D_hon."""

from __future__ import annotations

import json

import pytest
import torch

from surgery.errors import OptionError
from surgery.hcnr.calibration import CalibExample, CalibrationSets, make_batches, read_calibration_jsonl
from surgery.hcnr.fisher import SHARED, LayerFisher
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch, resolve_kind_pooling
from surgery.hcnr.selection import honesty_priority, kind_priority, top_share
from surgery.linear_layers import LinearLayer
from surgery.patchfile import read_manifest, read_patch
from tests.support.faults import cli


def test_min_pooling_prefers_the_neuron_every_kind_needs():
    # neuron 0 matters hugely for kind a only; neuron 1 matters moderately for both; task scores are equal
    by_kind = {"a": torch.tensor([100.0, 10.0, 1.0]), "b": torch.tensor([1.0, 10.0, 1.0])}
    examples = {"a": 1, "b": 1, "task": 1}
    task = torch.ones(3)
    pooled = honesty_priority(by_kind["a"] + by_kind["b"], task * 2)
    assert top_share(pooled, 1 / 3).tolist() == [0]  # one pooled score: kind a's neuron wins
    assert top_share(kind_priority(by_kind, examples, task, "min"), 1 / 3).tolist() == [1]
    mean = kind_priority(by_kind, examples, task, "mean")
    want = (honesty_priority(by_kind["a"], task) + honesty_priority(by_kind["b"], task)) / 2
    assert torch.allclose(mean, want)


def test_kinds_weigh_the_same_whatever_their_size_and_share_the_shared_examples():
    # kind a has 4 examples summing to 4x kind b's single one: per example they are the same
    by_kind = {"a": torch.tensor([4.0, 8.0]), "b": torch.tensor([1.0, 2.0]), SHARED: torch.tensor([2.0, 2.0])}
    examples = {"a": 4, "b": 1, SHARED: 2, "task": 3}
    task = torch.tensor([3.0, 3.0])
    got = kind_priority(by_kind, examples, task, "min")
    a = honesty_priority(torch.tensor([6.0, 10.0]) / 6, task / 3)
    b = honesty_priority(torch.tensor([3.0, 4.0]) / 3, task / 3)
    assert torch.allclose(got, torch.minimum(a, b))


def test_per_group_fisher_sums_add_up_to_the_pooled_ones():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 6)
    layers = [LinearLayer("0", "0.weight", "", 6, 12, False)]  # the Sequential's one layer
    acc = LayerFisher(layers, dict(torch.nn.Sequential(lin).named_modules()), rows=True, kinds=["a", "b", SHARED])
    acc.live = torch.ones(4, 5, dtype=torch.bool)
    acc.groups = ("a", SHARED, "a", "b")
    mod = torch.nn.Sequential(lin)
    with acc.hooks():
        mod(torch.randn(4, 5, 12).requires_grad_(True)).pow(2).sum().backward()
    parts = acc.tensors()
    w = layers[0].weight
    for what in ("cols", "rows"):
        total = sum(parts[f"{w}::{what}::{g}"] for g in ("a", "b", SHARED))
        assert torch.allclose(total, parts[f"{w}::{what}"])
    assert parts[f"{w}::cols::b"].abs().sum() > 0


def test_calibration_lines_keep_their_kind(tmp_path):
    f = tmp_path / "hon.jsonl"
    rows = [
        {"prompt": "Who is Zorblat?", "response": "I don't know.", "kind": "invented"},
        {"prompt": "2+2?", "response": "4", "kind": "answerable"},
        {"prompt": "Why?", "response": "It is unclear.", "kind": 3},  # not a string: no kind
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "kind": "ambiguous"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_calibration_jsonl(f)
    assert [e.kind for e in got] == ["invented", "answerable", None, "ambiguous"]
    ids = [([1, 2, 3], [-100, 2, 3])] * 4
    batches = make_batches(ids, 3, 0, [e.kind for e in got])
    assert [b.kinds for b in batches] == [("invented", "answerable", None), ("ambiguous",)]
    assert CalibrationSets(batches, []).decline_kinds() == {"ambiguous": 1, "invented": 1}


def _kinded_honesty(folder, kinds=("invented", "false_premise")):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hon.jsonl"
    lines = []
    for i in range(12):
        kind = kinds[i % len(kinds)] if i % 3 else "answerable"
        response = f"{i + 1}" if kind == "answerable" else "I don't know."
        lines.append({"prompt": f"Question number {i} about thing {i * 7}?", "response": response, "kind": kind})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.mark.parametrize("how", ["mean", "min"])
def test_a_patch_with_kind_pooling_records_it_and_selects_otherwise(tiny_pair, calib, tmp_path, how):
    base, sft, _ = tiny_pair
    hon = _kinded_honesty(tmp_path / "d")
    opts = {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8}
    pooled, kinded = tmp_path / "pooled.safetensors", tmp_path / f"{how}.safetensors"
    make_patch(str(sft), str(base), hon, calib[1], pooled, PatchOptions(**opts))
    make_patch(str(sft), str(base), hon, calib[1], kinded, PatchOptions(**opts, kind_pooling=how))
    assert read_manifest(kinded).options["kind_pooling"] == how
    idx = {p: {e.weight: e.index.tolist() for e in read_patch(p)[1]} for p in (pooled, kinded)}
    assert idx[pooled] != idx[kinded]  # the priority changed, so some chosen neurons did


def test_kind_pooling_without_two_decline_kinds_is_one_sentence(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    out = tmp_path / "p.safetensors"
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(calib[0]), "--task-data", str(calib[1])]
    res = cli(*args, "-o", str(out), "--kind-pooling", "min")
    assert res.exit_code == 2, res.output
    assert "--kind-pooling min needs D_hon lines of at least two kinds" in res.output
    assert not out.exists()
    with pytest.raises(OptionError, match="the honesty file has 1"):
        make_patch(
            str(sft),
            str(base),
            _kinded_honesty(tmp_path / "one", kinds=("invented",)),
            calib[1],
            out,
            PatchOptions(kind_pooling="mean"),
        )


def test_an_example_keeps_no_kind_by_default():
    assert CalibExample("q", "a").kind is None


def test_auto_pooling_is_mean_with_two_decline_kinds_and_pooled_without():
    opts = PatchOptions(kind_pooling="auto", compensation="protect")
    assert resolve_kind_pooling(opts, {"invented": 3, "false_premise": 2}).kind_pooling == "mean"
    assert resolve_kind_pooling(opts, {"invented": 3}).kind_pooling == "pooled"
    assert resolve_kind_pooling(opts, {}).kind_pooling == "pooled"
    for explicit in ("pooled", "mean", "min"):  # only auto is resolved; an explicit choice is kept (and checked later)
        assert resolve_kind_pooling(PatchOptions(kind_pooling=explicit), {}).kind_pooling == explicit
    assert resolve_kind_pooling(opts, {"a": 1, "b": 1}).compensation == "protect"  # nothing else changes


def test_auto_pooling_makes_the_patch_the_resolved_choice_makes(tiny_pair, calib, tmp_path):
    """auto never refuses a D_hon: with kinds it is the mean patch, without them the pooled one, byte for byte,
    and the manifest records the choice used (so the recorded options rerun without the auto rule)."""
    base, sft, _ = tiny_pair
    kinded = _kinded_honesty(tmp_path / "d")
    opts = {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8}
    cases = [(kinded, "mean"), (calib[0], "pooled")]  # conftest's D_hon lines carry no kind
    for hon, want in cases:
        auto, explicit = tmp_path / f"auto-{want}.safetensors", tmp_path / f"{want}.safetensors"
        make_patch(str(sft), str(base), hon, calib[1], auto, PatchOptions(**opts, kind_pooling="auto"))
        make_patch(str(sft), str(base), hon, calib[1], explicit, PatchOptions(**opts, kind_pooling=want))
        assert read_manifest(auto).options["kind_pooling"] == want
        assert auto.read_bytes() == explicit.read_bytes()
