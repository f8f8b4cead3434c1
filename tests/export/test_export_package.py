"""The export package's shape: an import DAG, no onnxruntime at import time, explicit back-end registration,
and the CLI options of ``surgery export`` / ``surgery deploy`` (no model, no [onnx] extra needed)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from surgery.errors import OptionError, SurgeryError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "surgery" / "export"
MODULES = ("onnx", "options", "quantize", "protect", "verify", "honesty", "pipeline", "ort_backend")


def _internal_imports(tree: ast.Module) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """(project-internal import node, is it at module top?) for every import of surgery code."""
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("surgery")):
            found.append((node, id(node) in top))
        elif isinstance(node, ast.Import) and any(a.name.startswith("surgery") for a in node.names):
            found.append((node, id(node) in top))
    return found


def test_no_project_import_inside_a_function():
    for path in sorted(PACKAGE.glob("*.py")):
        for node, at_top in _internal_imports(ast.parse(path.read_text())):
            assert at_top, f"{path.name}:{node.lineno} imports project code inside a function"


def test_modules_import_each_other_as_a_dag():
    graph = {}
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        graph[name] = {
            n.module.split(".")[0]
            for n, _ in _internal_imports(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module
        }
        assert graph[name] <= set(MODULES), (name, graph[name])
    done: list[str] = []
    while len(done) < len(graph):
        ready = [m for m in graph if m not in done and graph[m] <= set(done)]
        assert ready, f"import cycle among {sorted(set(graph) - set(done))}: {graph}"
        done += sorted(ready)
    # the primitives depend on nothing in the package; orchestration on quantize and verify, never the reverse
    assert graph["onnx"] == set() and {"quantize", "verify"} <= graph["pipeline"]
    assert "pipeline" not in graph["quantize"] | graph["verify"]


def test_the_top_level_exporters_package_is_gone():
    assert not (REPO / "exporters").exists()


def test_importing_the_package_loads_no_onnx_runtime():
    code = (
        "import importlib, json, sys\n"
        f"for m in {[f'surgery.export.{m}' for m in MODULES] + ['surgery.commands.export']!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in ('onnx', 'onnxruntime', 'optimum') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_onnx_backend_needs_explicit_registration(monkeypatch):
    from surgery.evaluation import runner
    from surgery.export import ort_backend

    monkeypatch.setattr(runner, "_BACKENDS", {k: v for k, v in runner._BACKENDS.items() if k != "onnx"})
    with pytest.raises(SurgeryError, match=r"Unknown back-end 'onnx'.*register\(\)"):
        runner.make_generator("onnx", "whatever")
    ort_backend.register()
    assert runner._BACKENDS["onnx"] is ort_backend.ort_generator


def test_export_options_reject_impossible_values():
    from surgery.export.options import ExportOptions

    with pytest.raises(OptionError, match="--min-top1"):
        ExportOptions(min_top1=1.5)
    with pytest.raises(OptionError, match="--greedy-tokens"):
        ExportOptions(greedy_tokens=0)
    with pytest.raises(OptionError, match="int8 or int4"):
        ExportOptions(quantize="int2")


def test_thresholds_follow_precision_with_explicit_options_on_top():
    from surgery.export.options import ExportOptions
    from surgery.export.pipeline import verify_thresholds
    from surgery.export.verify import FP32, INT8

    assert verify_thresholds(ExportOptions(), None) == FP32
    assert verify_thresholds(ExportOptions(), "int8") == INT8
    t = verify_thresholds(ExportOptions(min_top1=0.9, same_greedy=True, greedy_tokens=4), "int8")
    assert (t.min_top1_agreement, t.require_same_greedy, t.greedy_tokens, t.max_abs_diff) == (0.9, True, 4, None)


def _flags(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


VERIFY_FLAGS = {
    "--verify",
    "--no-verify",
    "--max-abs-diff",
    "--mean-abs-diff",
    "--min-top1",
    "--greedy-tokens",
    "--same-greedy",
    "--any-greedy",
    "--prompts",
    "--quantize",
    "--int8-keep-fp32",
    "--int8-method",
    "--int8-per-channel",
    "--no-int8-per-channel",
    "--block-size",
    "--int4-method",
    "--int4-keep-8bit",
    "--accuracy-level",
    "--protect-honesty",
    "--protect-scale",
    "--honesty-prompts",
    "--honesty-benchmark",
    "--max-honesty-drop",
    "--opset",
    "--trust-remote-code",
    "--allow-pickle",
}


def test_cli_keeps_its_option_names_and_parses_into_export_options(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from surgery.commands import export as cmd
    from surgery.export import pipeline

    shared = {"-o", "--output", "--out", "--json", "--threads"}  # --out: the old spelling, a hidden alias
    assert _flags(cmd.export) == VERIFY_FLAGS | shared | {"--base", "--verify-only"}
    hub_flags = {"--eval-results", "--push-to-hub", "--private", "--no-private"}  # the model card and the upload
    assert _flags(cmd.deploy) == VERIFY_FLAGS | shared | {"--base"} | hub_flags
    seen = {}

    def fake_export(model, out, options, **kw):
        seen.update(model=model, out=out, options=options, **kw)
        return {"bytes": 2e6, "quantize": options.quantize, "verify": None}

    monkeypatch.setattr(pipeline, "export_model", fake_export)
    res = CliRunner().invoke(
        cmd.export,
        [
            "m",
            "-o",
            str(tmp_path / "o"),
            "--quantize",
            "int8",
            "--int8-keep-fp32",
            "a",
            "--int8-keep-fp32",
            "b",
            "--any-greedy",
            "--min-top1",
            "0.5",
            "--no-verify",
            "--trust-remote-code",
        ],
    )
    assert res.exit_code == 0, res.output
    o = seen["options"]
    assert (o.quantize, o.int8_keep, o.same_greedy, o.min_top1, o.verify) == ("int8", ("a", "b"), False, 0.5, False)
    assert seen["trust_remote_code"] is True and seen["allow_pickle"] is False and seen["base"] is None
    assert "wrote" in res.output and "2.0 MB of ONNX weights, int8" in res.output
    res = CliRunner().invoke(cmd.export, ["m"])
    assert res.exit_code == 2 and "--out" in res.output
