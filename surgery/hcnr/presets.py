"""Named starting points for :class:`~surgery.hcnr.options.PatchOptions`, and how they combine with a
config file and explicit options.

A preset is only data: the option values that differ from the method's defaults. ``paper`` is the
method as published (the :class:`PatchOptions` defaults, docs/method.md), ``recommended`` what the
comparison on the bundled SmolLM2 pair found best for keeping the task (docs/results/comparison.md), with
the priority pooled by kind of question where D_hon names kinds (``kind_pooling="auto"``: the leave-one-kind-out
protocol found it carries honesty to unseen kinds at no task cost, docs/results/transfer.md; the demo's
``recipes/smollm2/recipe.json`` "patch" holds the same values, a test checks), and
``compact`` the smallest shape that kept most of the honesty there: about 5% of the linear weights.
The library's defaults stay ``paper``, so a patch made through :func:`make_patch` without options is
the one it always was; the ``surgery patch`` command starts from :data:`CLI_PRESET`.

Precedence, highest first: explicit options, the config file, the preset, the defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from .options import PatchOptions

#: preset name -> the PatchOptions values it sets (everything else keeps the method's defaults)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "recommended": {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8, "kind_pooling": "auto"},
    "compact": {"compensation": "protect", "r_iw": 0.05, "r_cw": 1.0},
}

#: one line per preset for ``--help`` and the docs: what it is for and where its values come from
PRESET_NOTES: dict[str, str] = {
    "paper": "the method's defaults (exact compensation, R_IW 0.5 x R_CW 0.4; ~16% of the linear weights)",
    "recommended": "protect at R_IW 0.125 x R_CW 0.8, priority by kind of question where D_hon names kinds: keeps the "
    "task, ~9% of the linear weights",
    "compact": "protect at R_IW 0.05 x R_CW 1: ~5% of the linear weights, a little less honesty back",
}

#: the preset ``surgery patch`` uses when neither ``--preset`` nor the config file names one
CLI_PRESET = "recommended"

#: the key of a config file that names a preset (every other key is a PatchOptions field)
PRESET_KEY = "preset"


@dataclass(frozen=True)
class ResolvedOptions:
    """The options a run uses and the preset they started from (both recorded beside the patch)."""

    preset: str
    options: PatchOptions

    def to_config(self) -> dict[str, Any]:
        """The config-file form: the preset name, then every option, so a rerun needs no preset table."""
        return {PRESET_KEY: self.preset, **self.options.to_dict()}


def preset_values(name: Any) -> dict[str, Any]:
    """The option values preset ``name`` sets; an unknown name (or a config file's non-string) is one
    sentence listing the known ones."""
    if not isinstance(name, str) or name not in PRESETS:
        raise OptionError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}.")
    return dict(PRESETS[name])


def resolve_options(
    preset: str | None = None,
    config: Mapping[str, Any] | None = None,
    explicit: Mapping[str, Any] | None = None,
    *,
    default_preset: str = CLI_PRESET,
) -> ResolvedOptions:
    """The options of a run: ``explicit`` over ``config`` over the preset over the PatchOptions defaults.

    ``preset`` is the name given explicitly (``--preset``); without it the config file's ``preset`` key,
    else ``default_preset``. ``config`` and ``explicit`` map field names to values; a None value in
    ``explicit`` means "not given". Bad values are refused by :class:`PatchOptions` with one sentence.
    """
    config = dict(config or {})
    named_in_file = config.pop(PRESET_KEY, None)
    name = preset or named_in_file or default_preset
    fields = {f.name for f in dataclasses.fields(PatchOptions)}
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = sorted((set(config) | set(given)) - fields)
    if unknown:
        raise OptionError(f"unknown patch option {unknown[0]!r}; known: {', '.join(sorted(fields))}.")
    values = {**preset_values(name), **config, **given}
    return ResolvedOptions(name, PatchOptions(**values))


def differing_values(field: str) -> dict[str, Any]:
    """``preset -> value`` of one option, for ``--help``: empty when every preset leaves it at its default."""
    default = getattr(PatchOptions(), field)
    values = {name: PRESETS[name].get(field, default) for name in PRESETS}
    return values if len(set(map(repr, values.values()))) > 1 else {}
