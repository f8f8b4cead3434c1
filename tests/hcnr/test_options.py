"""PatchOptions refuses what the method cannot run with, as OptionError, and needs no CLI library."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from surgery.errors import OptionError
from surgery.hcnr.options import PatchOptions


@pytest.mark.parametrize("name", ["damp", "epsilon", "task_weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(OptionError, match=f"--{name.replace('_', '-')} must be a finite number"):
        PatchOptions(**{name: value})


@pytest.mark.parametrize(
    "changes",
    [
        {"r_iw": 0.0},
        {"r_cw": 1.5},
        {"damp": 0.0},
        {"task_weight": -1.0},
        {"batch_size": 0},
        {"neuron": "diagonal"},
        {"compensation": "magic"},
    ],
)
def test_out_of_range_values_are_option_errors(changes):
    with pytest.raises(OptionError):
        PatchOptions(**changes)


def test_fields_carry_help_and_choices():
    fields = {f.name: f for f in dataclasses.fields(PatchOptions)}
    assert fields["compensation"].metadata["choices"] == ("exact", "summed", "none", "protect")
    assert all(f.metadata["help"] for f in fields.values())


def test_options_module_does_not_import_click():
    code = "import sys, surgery.hcnr.options; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
