"""batching_speed on a fake generator: both modes run, in order, and differing outputs are reported."""

from __future__ import annotations

import pytest

from surgery.evaluation.speed import BATCHED, ONE_AT_A_TIME, batching_speed


class FakeGenerator:
    """Echoes each prompt; with ``corrupt`` set, batched runs (batch size > 1) change those prompts' outputs."""

    def __init__(self, batch_size: int = 7, corrupt: frozenset[str] = frozenset()) -> None:
        self.batch_size = batch_size
        self.corrupt = corrupt
        self.calls: list[tuple[int, int, int]] = []  # (batch size, prompts, max_new_tokens)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.calls.append((self.batch_size, len(prompts), max_new_tokens))
        batched = self.batch_size > 1
        return [f"{p}!" + ("?" if batched and p in self.corrupt else "") for p in prompts]


PROMPTS = ["a", "b", "c", "d", "e"]


def test_identical_outputs_give_two_rows_and_no_differences():
    gen = FakeGenerator()
    speed = batching_speed(gen, PROMPTS, batch_size=4, max_new_tokens=9)
    assert speed.n == 5
    assert [(r.mode, r.batch_size) for r in speed.rows] == [(ONE_AT_A_TIME, 1), (BATCHED, 4)]
    assert speed.row(ONE_AT_A_TIME).outputs == ["a!", "b!", "c!", "d!", "e!"]
    assert speed.row(BATCHED).outputs == speed.row(ONE_AT_A_TIME).outputs
    assert speed.identical_outputs is True
    assert speed.differing_items == []
    assert all(r.seconds > 0 for r in speed.rows)
    assert speed.row(BATCHED).items_per_second == pytest.approx(5 / speed.row(BATCHED).seconds)
    ratio = speed.row(ONE_AT_A_TIME).seconds / speed.row(BATCHED).seconds
    assert speed.speedup == pytest.approx(ratio)
    # warm-up on two prompts with 4 tokens (at the generator's own batch size), then the two timed runs
    assert gen.calls == [(7, 2, 4), (1, 5, 9), (4, 5, 9)]
    assert gen.batch_size == 7, "the generator's batch size is restored"


def test_differing_items_are_listed_by_index():
    gen = FakeGenerator(corrupt=frozenset({"b", "e"}))
    speed = batching_speed(gen, PROMPTS, batch_size=2, max_new_tokens=3)
    assert speed.identical_outputs is False
    assert speed.differing_items == [1, 4]
    assert speed.row(BATCHED).outputs[1] == "b!?"
    assert speed.row(ONE_AT_A_TIME).outputs[1] == "b!"


def test_no_prompts_is_refused():
    with pytest.raises(ValueError, match="at least one prompt"):
        batching_speed(FakeGenerator(), [], batch_size=2, max_new_tokens=3)
