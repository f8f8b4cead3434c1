"""Property-based fuzzing of the patch reader (hypothesis): whatever a stranger does to a valid patch, ``apply``
either refuses it with a :class:`SurgeryError` (nothing written) or writes a model whose patched tensors match
the patch's fingerprints and hold no NaN/Inf; ``inspect`` exits 0 or 2 with one line, never a traceback or a
control character.

Four kinds of damage to one valid tiny patch: raw byte changes and truncation anywhere in the file; changes to the
tensor data with the payload digest recomputed (so the tensor checks, not the digest, must catch them); edits of
any manifest field to any JSON value; and new values (NaN and Inf included) written into a touched weight with
every digest and fingerprint forged to match. Bounded (``max_examples``, ``derandomize``) so it runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from surgery.apply import apply_patch
from surgery.errors import SurgeryError
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.modelio import tensor_sha256
from surgery.patchfile import PAYLOAD_KEY, _serialize_safetensors, _tensor_bytes, payload_sha256, read_patch
from tests.conftest import write_calibration
from tests.support.faults import cli

pytestmark = pytest.mark.fault("patch")

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Valid:
    raw: bytes
    meta: dict[str, str]
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    sft: Path
    sft_tensors: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def valid(tiny_pair, tmp_path_factory) -> Valid:
    base, sft, _ = tiny_pair
    root = tmp_path_factory.mktemp("fuzz")
    hon, task = write_calibration(root / "calib")
    path = root / "valid.safetensors"
    make_patch(str(sft), str(base), str(hon), str(task), str(path), PatchOptions(max_samples=8))
    with safe_open(str(path), framework="pt") as h:
        meta = dict(h.metadata())
        tensors = {k: h.get_tensor(k).clone() for k in h.keys()}
    return Valid(
        path.read_bytes(), meta, json.loads(meta["manifest"]), tensors, sft, load_file(str(sft / "model.safetensors"))
    )


@contextmanager
def _scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="surgery-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _assert_contract(valid: Valid, patch: Path, scratch: Path) -> str:
    """The property: refused cleanly, or applied with verified fingerprints and finite values."""
    shown = cli("inspect", str(patch))
    assert shown.exit_code in (0, 2), (shown.exit_code, shown.output, shown.exception)
    assert isinstance(shown.exception, (SystemExit, type(None))), shown.exception
    for text in (shown.stdout, shown.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    if shown.exit_code == 2:
        assert len(shown.stderr.splitlines()) == 1 and shown.stderr.startswith("error: "), shown.stderr
    out = scratch / "out"
    try:
        apply_patch(str(valid.sft), patch, out)
    except SurgeryError as exc:
        assert not out.exists() and [p.name for p in scratch.iterdir()] == [patch.name]
        event(f"refused: {type(exc).__name__}")
        return "refused"
    _, entries = read_patch(patch)
    written = load_file(str(out / "model.safetensors"))
    for name, t in written.items():
        assert bool(torch.isfinite(t).all()), f"{name} has NaN/Inf after apply"
    for e in entries:
        assert tensor_sha256(written[e.weight]) == e.patched_sha256
    event("applied")
    return "applied"


def _digest_of(data: bytes, header_len: int) -> str:
    """The payload digest of a file whose tensors are laid out in sorted-name order (as the writer does)."""
    return hashlib.sha256(data[8 + header_len :]).hexdigest()


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_byte_mutations_are_refused_or_harmless(valid, data):
    raw = bytearray(valid.raw)
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        del raw[data.draw(st.integers(0, len(raw) - 1), label="keep") :]
    with _scratch() as d:
        patch = d / "p.safetensors"
        patch.write_bytes(bytes(raw))
        _assert_contract(valid, patch, d)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_data_mutations_with_a_recomputed_digest_are_refused_or_harmless(valid, data):
    """The digest forged to match: the tensor checks and fingerprints must catch what it no longer does."""
    raw = bytearray(valid.raw)
    header_len = int.from_bytes(raw[:8], "little")
    start = 8 + header_len
    for _ in range(data.draw(st.integers(1, 8), label="changes")):
        at = data.draw(st.integers(start, len(raw) - 1), label="at")
        raw[at] = data.draw(st.integers(0, 255), label="byte")
    old, new = valid.meta[PAYLOAD_KEY], _digest_of(bytes(raw), header_len)
    raw[:start] = bytes(raw[:start]).replace(old.encode(), new.encode())  # same length: offsets unchanged
    with _scratch() as d:
        patch = d / "p.safetensors"
        patch.write_bytes(bytes(raw))
        _assert_contract(valid, patch, d)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) into a JSON tree, the root's children first."""
    out: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_manifest_edits_are_refused_or_harmless(valid, data):
    manifest = json.loads(json.dumps(valid.manifest))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = _paths(manifest)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = manifest
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON, label="value")
    meta = {**valid.meta, "manifest": json.dumps(manifest, sort_keys=True)}  # NaN/Infinity as Python writes them
    with _scratch() as d:
        patch = d / "p.safetensors"
        patch.write_bytes(_serialize_safetensors(valid.tensors, meta))
        _assert_contract(valid, patch, d)


def _forged(valid: Valid, weight: str, values: torch.Tensor) -> bytes:
    """The valid patch with ``weight``'s values replaced and its fingerprint and the payload digest forged."""
    manifest = json.loads(json.dumps(valid.manifest))
    record = manifest["tensors"][weight]
    tensors = dict(valid.tensors)
    tensors[f"{weight}::values"] = values
    index = tensors[f"{weight}::{record['unit']}"].long()
    w = valid.sft_tensors[weight].clone()
    canon = w.t() if record["transposed"] else w
    if record["unit"] == "cols":
        canon[:, index] = values.to(w.dtype)
    else:
        canon[index, :] = values.to(w.dtype)
    record["patched_sha256"] = tensor_sha256(w)
    meta = {
        **valid.meta,
        "manifest": json.dumps(manifest, sort_keys=True, separators=(",", ":")),
        PAYLOAD_KEY: payload_sha256(_tensor_bytes(tensors[n]) for n in sorted(tensors)),
    }
    return _serialize_safetensors(tensors, meta)


#: new values: finite float32s (huge and subnormal ones included) or NaN/Inf
_VALUE = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from([math.nan, math.inf, -math.inf])
)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_forged_values_apply_only_when_finite(valid, data):
    """Values chosen by an attacker, every fingerprint forged: applied exactly when all are finite, never NaN out."""
    weight = data.draw(st.sampled_from(sorted(valid.manifest["tensors"])), label="weight")
    values = valid.tensors[f"{weight}::values"].clone()
    flat = values.view(-1)
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, flat.numel() - 1), label="at")
        flat[at] = data.draw(_VALUE, label="value")
    with _scratch() as d:
        patch = d / "p.safetensors"
        patch.write_bytes(_forged(valid, weight, values))
        outcome = _assert_contract(valid, patch, d)
    assert outcome == ("applied" if bool(torch.isfinite(values).all()) else "refused")
