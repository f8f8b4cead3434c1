"""``--device`` and ``--dtype``: one declaration for eval, probe, calib and bench; resolved or refused in one line."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.devices import DeviceOptions, Placement, autocast, resolve, resolve_device, resolve_dtype
from surgery.errors import OptionError
from tests.support.faults import assert_refused

COMMANDS = ("eval", "probe", "calib", "bench")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def _option(command: str, flag: str) -> click.Option:
    cmd = main.get_command(click.Context(main), command)
    return next(p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_both_options(command):
    result = CliRunner().invoke(main, [command, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "--device" in result.output and "--dtype" in result.output
    assert "bfloat16" in result.output and "auto|cpu|cuda[:N]|mps" in result.output


def test_the_options_are_the_same_on_every_command():
    for flag in ("--device", "--dtype"):
        seen = {(o.help, o.default, getattr(o.type, "choices", None)) for o in (_option(c, flag) for c in COMMANDS)}
        assert len(seen) == 1, (flag, seen)
    assert _option("eval", "--device").default == "auto" and _option("eval", "--dtype").default == "float32"
    assert list(_option("probe", "--dtype").type.choices) == ["float32", "bfloat16"]


def test_resolvers():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    for bad in ("gpu", "cuda:x", "cuda:", "tpu", ""):
        with pytest.raises(OptionError, match="--device must be auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
    with pytest.raises(OptionError, match="--dtype must be float32 or bfloat16, got 'float16'"):
        resolve_dtype("float16")
    placement = resolve(DeviceOptions(device="cpu", dtype="bfloat16"))
    assert placement == Placement(torch.device("cpu"), torch.bfloat16)
    assert placement.record() == {"device": "cpu", "dtype": "bfloat16"}
    assert resolve().dtype is torch.float32


@NO_CUDA
def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused():
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(OptionError, match=f"--device {name} was asked for, but CUDA is not available"):
            resolve_device(name)


def test_cuda_index_is_checked_against_the_devices_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(OptionError, match=r"--device cuda:2 was asked for, but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_autocast_runs_matmuls_in_bf16_and_nothing_for_float32():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast(resolve(DeviceOptions(device="cpu", dtype="float32"))):
        assert layer(x).dtype is torch.float32
    with autocast(resolve(DeviceOptions(device="cpu", dtype="bfloat16"))):
        y = layer(x)
    assert y.dtype is torch.bfloat16 and layer.weight.dtype is torch.float32  # the weights stay float32


@NO_CUDA
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_without_cuda_is_refused_before_any_work(command, tiny_models, tmp_path):
    model = tiny_models("llama")
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"question": "q?", "answerable": False}) + "\n")
    out = tmp_path / "out"
    args = {
        "eval": ["eval", str(model), "-b", str(bench), "--json", str(out)],
        "probe": ["probe", str(model), "--base", str(model), "--benchmark", str(bench), "--json", str(out)],
        "calib": ["calib", "--model", str(model), "-o", str(out)],
        "bench": ["bench", "--base", str(model), "--sft", str(model), "-m", "base", "-o", str(out)],
    }[command]
    assert_refused([*args, "--device", "cuda"], [model, bench], out, words=("--device cuda", "CUDA is not available"))


def test_a_malformed_device_and_float16_are_refused(tiny_models, tmp_path):
    model = tiny_models("llama")
    out = tmp_path / "r.json"
    assert_refused(["eval", str(model), "--device", "gpu0", "--json", str(out)], [model], out, words=("--device",))
    result = CliRunner().invoke(main, ["eval", str(model), "--dtype", "float16"])
    assert result.exit_code == 2 and "float16" in result.output and not out.exists()
