"""The RAIT/DPO options base validates both alike, and baseline specs fail in one sentence, not a traceback."""

from __future__ import annotations

import dataclasses

import pytest

from surgery.baselines.dpo import DpoOptions
from surgery.baselines.methods import KINDS, REGISTRY, parse_method
from surgery.baselines.options import TrainOptions
from surgery.baselines.rait import RaitOptions
from surgery.errors import OptionError, SurgeryError

OPTIONS = {"RAIT": RaitOptions, "DPO": DpoOptions}


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize(
    "bad,message",
    [
        ({"mode": "qlora"}, "mode must be one of lora, full"),
        ({"examples": None, "seconds": None}, "needs a budget"),
        ({"examples": 0}, "at least one"),
        ({"seconds": 0}, "time budget must be positive"),
        ({"seconds": -5.0}, "time budget must be positive"),
    ],
)
def test_shared_validation_rejects_the_same_things(name, bad, message):
    with pytest.raises(OptionError, match=f"{name}.*{message}|{message}.*{name}|The {name} {message}"):
        OPTIONS[name](**bad)


def test_both_option_classes_share_one_base():
    shared = [f.name for f in dataclasses.fields(TrainOptions)]
    for cls in OPTIONS.values():
        assert issubclass(cls, TrainOptions)
        assert [f.name for f in dataclasses.fields(cls)][: len(shared)] == shared
    assert [f.name for f in dataclasses.fields(DpoOptions)][len(shared) :] == ["beta"]
    assert all(f.metadata.get("help") for f in dataclasses.fields(DpoOptions))


def test_default_learning_rates_per_method_and_mode():
    assert RaitOptions().learning_rate == 5e-4 and RaitOptions(mode="full").learning_rate == 1e-5
    assert DpoOptions().learning_rate == 2e-4 and DpoOptions(mode="full").learning_rate == 5e-7
    assert DpoOptions(lr=1e-3).to_dict()["lr"] == 1e-3
    assert RaitOptions(mode="full").to_dict()["lr"] == 1e-5


def test_dpo_rejects_a_non_positive_time_budget():
    """The drift this base removed: only RAIT used to reject ``seconds <= 0``."""
    with pytest.raises(OptionError, match="DPO time budget must be positive"):
        DpoOptions(seconds=0)
    with pytest.raises(OptionError):
        parse_method("dpo:s=0")


def test_a_setting_the_method_lacks_is_one_sentence_naming_the_valid_keys():
    """``rait-lora:beta=0.5`` used to crash with a TypeError traceback (RAIT has no beta)."""
    with pytest.raises(OptionError, match=r"unknown setting 'beta'; use n, s, lr, r, seed or batch_size\."):
        parse_method("rait-lora:beta=0.5")
    with pytest.raises(OptionError, match=r"use n, s, lr, r, beta, seed or batch_size\."):
        parse_method("dpo:gamma=1")
    assert parse_method("dpo:beta=0.5,n=8").params == {"beta": 0.5, "examples": 8}
    assert parse_method("rait-full:examples=8,seconds=2").params == {"examples": 8, "seconds": 2.0}


def test_registry_has_one_entry_per_kind():
    assert KINDS == ("base", "sft", "hcnr", "rait-lora", "rait-full", "dpo", "dpo-full", "interp")
    assert {k: REGISTRY[k].family for k in KINDS} == {
        "base": "reference",
        "sft": "reference",
        "hcnr": "HCNR",
        "rait-lora": "RAIT-LoRA",
        "rait-full": "RAIT-full",
        "dpo": "DPO-LoRA",
        "dpo-full": "DPO-full",
        "interp": "interpolation",
    }
    assert parse_method("rait-full:8").family == "RAIT-full"
    with pytest.raises(SurgeryError, match="kinds are base, sft, hcnr"):
        parse_method("lora:5")
    with pytest.raises(SurgeryError, match="takes no argument"):
        parse_method("sft:1")
