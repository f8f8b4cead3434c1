"""`surgery probe`: probe maths on synthetic states, hidden-state extraction, and the command end to end."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.modelio import load_model, load_tokenizer
from surgery.probe import hidden_states
from surgery.probe.hidden_states import last_token_index, pad_batch, prompt_states, shared_prefix_length
from surgery.probe.probes import (
    ProbeCurves,
    auroc_stderr,
    layer_aurocs,
    near_duplicate_groups,
    stratified_split,
    surface_auroc,
    verdict,
)
from surgery.probe.report import curves_from_record, format_table, plot_curves
from surgery.prompting import prompt_text

# --- synthetic hidden states ------------------------------------------------------------------------


def synthetic(n: int = 400, layers: int = 3, dim: int = 32, seed: int = 0):
    """States where layer 2 (index 1) carries the label along one direction and the others are noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, layers, dim)).astype(np.float32)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    x[:, 1, :] += 3.0 * np.outer(2 * y - 1, u)
    ids = [f"item:{i}" for i in range(n)]
    return ids, y, x, u


def test_separable_direction_gives_auroc_near_one_and_noise_near_half():
    ids, y, base, _ = synthetic()
    sft = base + np.random.default_rng(1).normal(scale=0.1, size=base.shape).astype(np.float32)
    train, test = stratified_split(ids, y, 0.3, seed=0)
    curves = layer_aurocs(base, sft, y, train, test)
    for kind in ("base", "sft", "transfer"):
        values = getattr(curves, kind)
        assert values[1] > 0.98, (kind, values)
        assert abs(values[0] - 0.5) < 0.15 and abs(values[2] - 0.5) < 0.15, (kind, values)
        assert curves.best(kind)[0] == 2
    assert curves.n_test == len(test) and curves.n_test_pos + curves.n_test_neg == len(test)
    assert verdict(curves).status == "preserved"
    assert "best transfer AUROC" in verdict(curves).line and "layer 2" in verdict(curves).line


def test_transfer_survives_a_uniform_shift_but_not_a_rotated_direction():
    ids, y, base, u = synthetic()
    train, test = stratified_split(ids, y, 0.3, seed=0)
    shifted = base.copy()
    shifted[:, 1, :] += 5.0 * u  # SFT moved every state along the probe direction: ranks unchanged
    assert layer_aurocs(base, shifted, y, train, test).transfer[1] > 0.98

    rotated = np.random.default_rng(2).normal(size=base.shape).astype(np.float32)
    v = np.random.default_rng(3).normal(size=base.shape[-1])
    v -= v @ u * u
    v /= np.linalg.norm(v)
    rotated[:, 1, :] += 3.0 * np.outer(2 * y - 1, v)  # same information, orthogonal direction
    curves = layer_aurocs(base, rotated, y, train, test)
    assert curves.sft[1] > 0.98
    assert abs(curves.transfer[1] - 0.5) < 0.15
    assert verdict(curves).status == "re-encoded"


def test_verdict_categories_follow_documented_thresholds():
    def curves(base, sft, transfer):
        return ProbeCurves([base], [sft], [transfer], 10, 10, 5, 5)

    assert verdict(curves(0.9, 0.9, 0.87)).line == (
        "recognition preserved (best transfer AUROC 0.87 at layer 1): patching is likely to help"
    )
    assert verdict(curves(0.9, 0.8, 0.6)).status == "re-encoded"
    lost = verdict(curves(0.9, 0.6, 0.55))
    assert lost.status == "lost" and lost.line.startswith("recognition lost") and "re-tuning" in lost.line
    assert verdict(curves(0.55, 0.9, 0.9)).status == "inconclusive"
    weak = verdict(curves(0.7, 0.6, 0.6))  # the base barely separates: no loss can be claimed
    assert weak.status == "inconclusive" and "only weakly" in weak.line
    assert verdict(curves(0.9, 0.9, 0.74)).status == "re-encoded"  # 0.75 is the bar
    assert verdict(curves(0.9, 0.9, 0.75)).status == "preserved"


def test_split_is_stratified_disjoint_and_independent_of_order():
    ids = [f"q{i}" for i in range(100)]
    y = np.array([1] * 30 + [0] * 70)
    train, test = stratified_split(ids, y, 0.3, seed=0)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 100
    assert y[test].sum() == 9 and (y[test] == 0).sum() == 21
    perm = np.random.default_rng(0).permutation(100)
    train_p, test_p = stratified_split([ids[i] for i in perm], y[perm], 0.3, seed=0)
    assert {ids[perm[i]] for i in test_p} == {ids[i] for i in test}
    _, other = stratified_split(ids, y, 0.3, seed=1)
    assert set(other) != set(test)


def test_near_duplicates_stay_on_one_side_of_the_split():
    # FalseQA-style pairs: the same question with a false and a true premise, opposite labels
    texts, y = [], []
    for i in range(40):
        texts += [
            f"what does the alpha{i} beta{i} of gamma{i} eat",  # the false premise
            f"what does the alpha{i} beta{i} of delta{i} eat",
        ]
        y += [1, 0]
    texts.append("an unrelated question")
    y.append(0)
    groups = near_duplicate_groups(texts)
    assert len(set(groups)) == 41 and all(groups[2 * i] == groups[2 * i + 1] for i in range(40))
    ids = [f"q{i}" for i in range(len(texts))]
    y = np.array(y)
    train, test = stratified_split(ids, y, 0.3, seed=0, groups=groups)
    assert all((2 * i in test) == (2 * i + 1 in test) for i in range(40))
    assert y[test].sum() == 12 and (y[test] == 0).sum() == 12
    # split apart, the pairs push a wording probe below chance; kept together, it is at chance
    train_u, test_u = stratified_split(ids, y, 0.3, seed=0)
    assert surface_auroc(texts, y, train_u, test_u) < 0.4
    assert surface_auroc(texts, y, train, test) == pytest.approx(0.5, abs=0.1)


def test_auroc_stderr_matches_hanley_mcneil():
    # A = 0.5, n = m = 50: var = (0.25 + 2 * 49 * (1/3 - 1/4)) / 2500
    assert auroc_stderr(0.5, 50, 50) == pytest.approx(np.sqrt((0.25 + 98 / 12) / 2500))
    assert auroc_stderr(0.9, 200, 200) < auroc_stderr(0.9, 20, 20)


def test_surface_baseline_sees_wording_and_only_wording():
    worded = [
        f"why do people dream about thing {i}" if i % 2 else f"what is the capital of country {i}" for i in range(60)
    ]
    y = np.arange(60) % 2
    train, test = stratified_split([str(i) for i in range(60)], y, 0.3)
    assert surface_auroc(worded, y, train, test) > 0.99
    same = [f"what is the capital of country {i}" for i in range(60)]
    assert abs(surface_auroc(same, y, train, test) - 0.5) < 0.25


def test_report_table_plot_and_record_round_trip(tmp_path):
    curves = ProbeCurves([0.6, 0.9], [0.7, 0.8], [0.5, 0.85], 70, 30, 15, 15, surface=0.66)
    table = format_table(curves)
    rows = table.splitlines()
    assert rows[2].split()[1:] == ["0.900*", "0.800*", "0.850*"] and "*" not in rows[1].split()[1]
    png = plot_curves(curves, tmp_path / "sub" / "p.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Wording alone" in table and "0.660" in table
    record = {
        "auroc": {"base": curves.base, "sft": curves.sft, "transfer": curves.transfer, "surface": 0.66},
        "items": {"train": 70, "test": 30, "test_unanswerable": 15, "test_answerable": 15},
    }
    assert curves_from_record(record) == curves


# --- hidden states ----------------------------------------------------------------------------------


def test_pad_batch_and_last_token_for_both_sides():
    ids, mask, pos = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last_token_index(mask).tolist() == [2, 2]
    ids, mask, pos = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and last_token_index(mask).tolist() == [2, 0]


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2]]) == 1  # each keeps a token of its own
    assert shared_prefix_length([[7], [7, 8]]) == 0 and shared_prefix_length([[1, 2], [3, 4]]) == 0


SYSTEM = {"role": "system", "content": "You are a careful assistant. Say you do not know when unsure."}
QUESTIONS = ["What is the capital of France?", "Who?", "How many legs does a spider have? Tell me exactly."]


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma3"])
def test_padded_and_prefix_shared_batches_give_the_unpadded_states(tiny_models, family, monkeypatch):
    path = str(tiny_models(family))
    model, tok = load_model(path), load_tokenizer(path)
    prompts = [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS]
    alone = np.concatenate([prompt_states(model, tok, [p], batch_size=1) for p in prompts])
    assert alone.shape == (3, model.config.num_hidden_layers, model.config.hidden_size)

    caches = []
    real = hidden_states._prefix_cache
    monkeypatch.setattr(hidden_states, "_prefix_cache", lambda *a: caches.append(real(*a)) or caches[-1])
    with warnings.catch_warnings(record=True) as caught:  # the cache goes by the name this transformers uses
        warnings.simplefilter("always")
        for side in ("left", "right"):
            for share in (False, True):
                batched = prompt_states(model, tok, prompts, batch_size=2, padding_side=side, share_prefix=share)
                np.testing.assert_allclose(batched, alone, atol=1e-4, err_msg=f"{side} padding, share={share}")
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    if family != "gemma3":  # its tiny sliding window (16) is shorter than the prompts: no sharing
        assert len(caches) == 2 and all(c is not None for c in caches)

    # the states are the block outputs at the last prompt token of a plain forward pass
    ids = tok(prompt_text(tok, prompts[0]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(alone[0, 0], ref[1][0, -1].numpy(), atol=1e-5)


# --- the command --------------------------------------------------------------------------------------


def write_benchmark(path: Path, answerable: int = 20, unanswerable: int = 20, *, lexical: bool = True) -> Path:
    """Answerable and unanswerable questions; ``lexical=False`` gives both classes the same wording."""
    if not lexical:
        n = answerable + unanswerable
        flags = np.random.default_rng(0).permutation([True] * answerable + [False] * unanswerable)
        rows = [
            {"id": f"q{i}", "question": f"What is fact number {i * 7919 % 1000}?", "answerable": bool(f)}
            for i, f in zip(range(n), flags, strict=False)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    rows = [
        {"id": f"a{i}", "question": f"What is the capital of France {i}?", "answerable": True, "answers": ["Paris"]}
        for i in range(answerable)
    ]
    rows += [
        {
            "id": f"u{i}",
            "question": f"Who wrote the unknown paper about steganography in year {i}?",
            "answerable": False,
        }
        for i in range(unanswerable)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_probe_command_end_to_end(tiny_models, tmp_path, monkeypatch):
    base = tiny_models("llama")
    bench = write_benchmark(tmp_path / "user.jsonl")
    out_json, out_png = tmp_path / "probe.json", tmp_path / "probe.png"
    args = [
        "-q",
        "probe",
        str(base),
        "--base",
        str(base),
        "--benchmark",
        str(bench),
        "--limit",
        "40",
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        "--batch-size",
        "7",
        "--padding-side",
        "left",
    ]
    monkeypatch.setattr(sys, "argv", ["surgery", *args])  # as typed in a shell
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out_json.read_text())
    assert record["items"] == {
        "total": 40,
        "answerable": 20,
        "unanswerable": 20,
        "train": 28,
        "test": 12,
        "test_unanswerable": 6,
        "test_answerable": 6,
        "near_duplicate_pairs": 2,
    }
    auroc = record["auroc"]
    assert len(auroc["base"]) == len(auroc["sft"]) == len(auroc["transfer"]) == 2
    # the model against itself: all three probes are the same probe on the same states
    assert auroc["base"] == auroc["sft"] == auroc["transfer"]
    assert all(0.0 <= a <= 1.0 for a in auroc["base"])
    assert auroc["surface"] > 0.9  # the two classes are worded differently
    assert record["command"] == shlex.join(["surgery", *args])  # the provenance recorder's line
    # the two classes differ in wording, which even a random model's states carry
    assert max(auroc["base"]) > 0.9 and record["verdict"]["status"] == "preserved"
    assert record["verdict"]["line"] in result.output
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert "layer" in result.output.splitlines()[0]


def test_probe_command_on_a_perturbed_twin(tiny_pair, tmp_path):
    base, sft, _ = tiny_pair
    bench = write_benchmark(tmp_path / "user.jsonl", 50, 50, lexical=False)
    out_json = tmp_path / "probe.json"
    result = CliRunner().invoke(
        main,
        [
            "-q",
            "probe",
            str(sft),
            "--base",
            str(base),
            "--benchmark",
            str(bench),
            "--json",
            str(out_json),
            "--seed",
            "3",
            "--no-shared-prefix",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out_json.read_text())
    auroc = record["auroc"]
    assert auroc["base"] != auroc["transfer"]  # different weights, different states
    # labels unrelated to the wording: nothing to find, and the verdict must not claim otherwise
    assert record["verdict"]["status"] != "preserved", auroc


@pytest.mark.parametrize("case", ["architecture", "too_few", "unknown_benchmark", "missing_model"])
def test_bad_inputs_exit_2_with_one_sentence(tiny_models, tmp_path, case):
    llama = str(tiny_models("llama"))
    bench = write_benchmark(tmp_path / "user.jsonl")
    args = [llama, "--base", llama, "--benchmark", str(bench)]
    expected = {
        "architecture": "not the same architecture",
        "too_few": "at least 10 answerable and 10 unanswerable",
        "unknown_benchmark": "Unknown benchmark 'nosuch'",
        "missing_model": "neither a local folder nor a hub id",
    }[case]
    if case == "architecture":
        args[0] = str(tiny_models("qwen2"))
    elif case == "too_few":
        args[-1] = str(write_benchmark(tmp_path / "few.jsonl", 20, 4))
    elif case == "unknown_benchmark":
        args[-1] = "nosuch"
    else:
        args[2] = str(tmp_path / "no-such-model")
    result = CliRunner().invoke(main, ["-q", "probe", *args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert expected in message and "Traceback" not in message
    assert message.startswith("error: ") and len(message.splitlines()) == 1
