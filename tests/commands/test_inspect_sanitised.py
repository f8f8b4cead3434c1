"""`surgery inspect` prints only sanitised text: a manifest's strings cannot drive the terminal.

Without a model: the patches are written by ``write_patch`` from a small synthetic matrix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors import safe_open

from surgery.cli import main
from surgery.patchfile import PatchManifest, PatchStats, _serialize_safetensors, make_entry, write_patch
from surgery.safetext import printable

OSC_TITLE = "\x1b]0;owned\x07"
CLEAR = "\x1b[2J"
#: every way a string could reach the terminal's control functions
HOSTILE = [OSC_TITLE, CLEAR, "\x9b2J", "\x9d0;owned\x9c", "\x1b]52;c;Y2xpcA==\x1b\\", "\x1bP+q\x1b\\", "\x07", "\x1bc"]


def _stats() -> PatchStats:
    return PatchStats(
        parameters_changed=8,
        share_of_linear=0.25,
        share_of_model=0.1,
        linear_parameters=32,
        model_parameters=80,
        matrices_total=1,
        matrices_touched=1,
        fallbacks=[],
        hessian_tokens=4,
        hessian_groups=1,
        residual_ratio=0.5,
        per_matrix={},
        unit_scores={},
    )


def _patch(path: Path, evil: str) -> Path:
    sft = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    entry = make_entry("layers.0.w", sft, torch.zeros(4, 8), torch.tensor([1, 5]), "cols", False)
    manifest = PatchManifest(
        tool="surgery",
        tool_version=f"0.1{evil}",
        method=f"HCNR{evil}",
        base=f"{evil}base",
        sft=f"sft{evil}",
        options={f"key{evil}": f"value{evil}", "nested": {"x": [evil]}},
        calibration={f"honesty{evil}": {"file": f"hon{evil}.jsonl", "sha256": f"{evil}abc", "bytes": 3}},
        stats=dataclasses.replace(_stats(), fallbacks=[f"fallback{evil}"]),
    )
    write_patch(path, [entry], manifest)
    return path


def _inspect(*args: str, terminal: bool = True) -> Result:
    """``surgery inspect``; ``terminal``: as on a terminal (click keeps ANSI styles), else as into a pipe."""
    return CliRunner().invoke(main, ["-q", "--threads", "1", "inspect", *args], color=terminal)


def _assert_clean(text: str) -> None:
    assert not any(0 <= ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize("evil", HOSTILE, ids=[repr(h) for h in HOSTILE])
def test_inspect_prints_no_control_character(tmp_path, evil, terminal):
    patch = _patch(tmp_path / "p.safetensors", evil)
    res = _inspect(str(patch), terminal=terminal)
    assert res.exit_code == 0, res.output
    _assert_clean(res.output)
    assert "base" in res.output and "value" in res.output and "fallback" in res.output
    as_json = _inspect("--json", str(patch), terminal=terminal)
    assert as_json.exit_code == 0, as_json.output
    _assert_clean(as_json.output)
    assert json.loads(as_json.stdout)["base"] == f"{evil}base"  # JSON keeps the text, escaped


def _with_manifest(src: Path, dst: Path, edit) -> Path:
    with safe_open(str(src), framework="pt") as h:
        meta, tensors = dict(h.metadata()), {k: h.get_tensor(k) for k in h.keys()}
    manifest = json.loads(meta["manifest"])
    edit(manifest)
    dst.write_bytes(_serialize_safetensors(tensors, {**meta, "manifest": json.dumps(manifest)}))
    return dst


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["stats"].update(share_of_linear=OSC_TITLE + "lots"),
        lambda m: m["stats"].update(parameters_changed=10**400),
        lambda m: m["stats"].update(fallbacks=[{OSC_TITLE: 1}]),
        lambda m: m.update(calibration={"honesty": OSC_TITLE}),
        lambda m: m.update(calibration={"honesty": {"file": 3, "sha256": "x", "bytes": 1}}),
        lambda m: m.update(tensors={OSC_TITLE + CLEAR: {"unit": "cols"}}),
    ],
    ids=["share_text", "huge_int", "fallback_object", "calibration_text", "calibration_file_int", "tensor_name"],
)
def test_a_bad_field_is_one_clean_error_line(tmp_path, edit):
    patch = _with_manifest(_patch(tmp_path / "p.safetensors", ""), tmp_path / "bad.safetensors", edit)
    res = _inspect(str(patch))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    _assert_clean(res.output)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (OSC_TITLE + "title", "title"),
        ("a" + CLEAR + "b", "ab"),
        ("x\x9b31mred", "xred"),
        ("\x1b]52;c;Y2xpcA==\x1b\\ok", "ok"),
        ("unterminated\x1b]0;to the end", "unterminated"),
        ("tab\tnew\nline\r", "tab new line "),
        ("\u202eevil\u2066", "evil"),
        ("plain/path-1.5 héllo ✓", "plain/path-1.5 héllo ✓"),
    ],
)
def test_printable(text, shown):
    assert printable(text) == shown
