"""The model card (``README.md``) that ``apply`` and ``deploy`` write beside a repaired model.

A folder pushed to the Hugging Face hub is described by its ``README.md``: a YAML metadata header the hub
reads (``base_model``, ``library_name``, ``tags``, and ``model-index`` for measured numbers) and a body for
people. :func:`build_card` makes that text from what is known for certain: the patch's manifest (models,
revisions, options, size), the SFT model's revision, the measured numbers of a ``surgery eval --json`` file
when one is given (:func:`load_eval_results`), and the exact command. It is a pure function: same facts,
same bytes.

Strings from the manifest may come from a stranger, so every one is made printable
(:func:`surgery.safetext.printable`) and written into YAML as a JSON string (a valid YAML double-quoted
scalar) and into Markdown with its table and code delimiters escaped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SurgeryError
from .patchfile import PatchManifest
from .revision import describe
from .safetext import printable

CARD_NAME = "README.md"
#: tags every card carries; the artefact adds its format
TAGS = ("surgery", "hcnr", "honesty", "model-surgery")
#: the metrics a card quotes, in this order: the key in a ``surgery eval`` result -> the column's name
METRICS = {
    "honesty_f1": "honesty F1",
    "refusal_unanswerable": "refusal on unanswerable",
    "refusal_answerable": "refusal on answerable",
    "accuracy": "accuracy",
}
_MAX_ROWS = 64
_PROJECT = "https://arxiv.org/abs/2511.12991"


@dataclass(frozen=True)
class EvalRow:
    """One benchmark's measured numbers (rates and F1 in 0..1; None where the benchmark has none)."""

    benchmark: str
    kind: str  # "honesty" | "task"
    n: int | None
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class Evaluation:
    """What a ``surgery eval --json`` file measured, on which model."""

    model: str
    rows: list[EvalRow]


def load_eval_results(path: str | Path) -> Evaluation:
    """The per-benchmark numbers of a ``surgery eval --json`` file (or an lm-evaluation-harness ``results``).

    Only numbers are taken; anything else in the file is ignored. A file with no usable numbers is one sentence.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SurgeryError(f"Could not read --eval-results {path}: {exc.strerror or exc}.") from None
    except (ValueError, RecursionError):
        raise SurgeryError(f"--eval-results {path} is not valid JSON.") from None
    rows = _rows(data) if isinstance(data, dict) else []
    if not rows:
        raise SurgeryError(f"--eval-results {path} holds no benchmark numbers (expected a 'surgery eval --json' file).")
    model = data.get("model") if isinstance(data.get("model"), str) else None
    if model is None and isinstance(data.get("config"), dict):  # lm-evaluation-harness
        model = data["config"].get("model_args") if isinstance(data["config"].get("model_args"), str) else None
    return Evaluation(printable(model or path.name)[:200], rows[:_MAX_ROWS])


def _rows(data: dict[str, Any]) -> list[EvalRow]:
    metrics = data.get("metrics")
    per = metrics.get("per_benchmark") if isinstance(metrics, dict) else None
    if isinstance(per, dict):  # surgery eval --json
        return [row for name, m in per.items() if isinstance(m, dict) and (row := _row(name, m)) is not None]
    results = data.get("results")
    if isinstance(results, dict):  # lm-evaluation-harness: {"task": {"metric,filter": value}}
        out = []
        for name, m in results.items():
            if isinstance(m, dict):
                flat = {str(k).split(",")[0]: v for k, v in m.items()}
                row = _row(name, flat)
                if row is not None:
                    out.append(row)
        return out
    return []


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _row(name: Any, m: dict[str, Any]) -> EvalRow | None:
    values = {k: _number(m.get(k)) for k in METRICS}
    if all(v is None for v in values.values()):
        return None
    kind = "task" if m.get("kind") == "task" else "honesty"
    n = m.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
    return EvalRow(printable(name)[:80], kind, count, values)


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's), of printable text."""
    return json.dumps(printable(text), ensure_ascii=False)


def _cell(text: object) -> str:
    """Printable text for a Markdown table cell or line: pipes, backticks and HTML brackets escaped."""
    return re.sub(r"([|`<>*_\[\]\\])", r"\\\1", printable(text))


def _fence(lines: list[str], language: str = "bash") -> str:
    """A fenced code block of ``lines``, each made one printable line, that they cannot close early (the fence
    is longer than any backtick run in them)."""
    text = "\n".join(printable(line) for line in lines)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def hub_ids(manifest: PatchManifest, sft_revision: dict[str, Any] | None) -> list[str]:
    """The hub ids the repaired model derives from (SFT first, then base): only models that came from the hub."""
    revisions = manifest.revisions or {}
    out = []
    for rev in (sft_revision or revisions.get("sft"), revisions.get("base")):
        if rev and rev.get("kind") == "hub" and rev["repo"] not in out:
            out.append(rev["repo"])
    return out


def _metadata(
    manifest: PatchManifest,
    sft_revision: dict[str, Any] | None,
    artefact: str,
    name: str,
    evaluation: Evaluation | None,
) -> list[str]:
    lines = ["---"]
    ids = hub_ids(manifest, sft_revision)
    if ids:
        lines += ["base_model:", *(f"- {_yaml_str(i)}" for i in ids)]
        if len(ids) == 2:  # SFT weights with some columns put back to the base's: a merge of the two
            lines.append("base_model_relation: merge")
    lines.append(f"library_name: {'onnx' if artefact == 'onnx' else 'transformers'}")
    lines.append("pipeline_tag: text-generation")
    tags = [*TAGS, "onnx" if artefact == "onnx" else "safetensors"]
    lines += ["tags:", *(f"- {t}" for t in tags)]
    if evaluation is not None:
        lines += ["model-index:", f"- name: {_yaml_str(name)}", "  results:"]
        for row in evaluation.rows:
            metrics = [(k, v) for k, v in row.metrics.items() if k in METRICS and v is not None]
            lines += [
                "  - task:",
                "      type: text-generation",
                "    dataset:",
                f"      name: {_yaml_str(row.benchmark)}",
                f"      type: {_yaml_str(row.benchmark)}",
                "    metrics:",
            ]
            for key, value in metrics:
                lines += [f"    - type: {key}", f"      value: {round(value, 4)}", f"      name: {METRICS[key]}"]
    lines.append("---")
    return lines


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def build_card(
    manifest: PatchManifest,
    *,
    name: str,
    sft: str,
    patch: str,
    artefact: str = "transformers",
    sft_revision: dict[str, Any] | None = None,
    command: str | None = None,
    patch_command: str | None = None,
    evaluation: Evaluation | None = None,
    quantize: str | None = None,
) -> str:
    """The ``README.md`` text of a repaired model: hub metadata, what was done to which models, numbers, command.

    ``artefact`` is ``"transformers"`` (``apply``: a Hugging Face folder) or ``"onnx"`` (``deploy``);
    ``sft_revision`` is the SFT's revision as read now (else the manifest's); ``command`` made this folder and
    ``patch_command`` the patch (the ``<patch>.command.txt`` written beside it); ``evaluation`` comes from
    :func:`load_eval_results`.
    """
    revisions = manifest.revisions or {}
    lines = _metadata(manifest, sft_revision, artefact, name, evaluation)
    lines += ["", f"# {_cell(name)}", ""]
    what = "an ONNX export of " if artefact == "onnx" else ""
    lines.append(
        f"This is {what}the fine-tuned model {_cell(sft)} with an honesty patch applied by "
        f"surgery ({_cell(manifest.method)}, "
        f"[Honesty-Critical Neurons Restoration]({_PROJECT})): the weight columns that matter for saying "
        '"I don\'t know" and little for the fine-tuned task were put back to the values of the model before '
        "fine-tuning, with compensation, so the model declines questions it cannot answer again."
    )
    lines += ["", "## Models", "", "| role | model | revision |", "|---|---|---|"]
    lines.append(f"| before fine-tuning (base) | {_cell(manifest.base)} | {_cell(describe(revisions.get('base')))} |")
    lines.append(f"| fine-tuned (SFT) | {_cell(sft)} | {_cell(describe(sft_revision or revisions.get('sft')))} |")
    for role in ("base_adapter_base", "sft_adapter_base"):
        if role in revisions:
            lines.append(f"| base of the {role.split('_')[0]} adapter | | {_cell(describe(revisions[role]))} |")
    lines.append(f"| patch | {_cell(patch)} | surgery {_cell(manifest.tool_version)} |")
    lines += ["", "## The patch", ""]
    s = manifest.stats
    if s is not None:
        lines.append(
            f"- parameters changed: {s.parameters_changed} ({100 * s.share_of_linear:.2f}% of the linear weights, "
            f"{100 * s.share_of_model:.2f}% of the model), in {s.matrices_touched} of {s.matrices_total} matrices"
        )
    lines.append("- options: " + ", ".join(f"{_cell(k)}={_cell(v)}" for k, v in sorted(manifest.options.items())))
    for role, fp in sorted(manifest.calibration.items()):
        if isinstance(fp, dict):
            lines.append(f"- {_cell(role)} calibration data: {_cell(fp.get('file'))}, sha256 {_cell(fp.get('sha256'))}")
    if quantize:
        lines.append(f"- ONNX weights quantized to {_cell(quantize)} after the patch")
    if evaluation is not None:
        lines += _evaluation_lines(evaluation)
    commands = [c.strip() for c in (patch_command, command) if c and c.strip()]
    if commands:
        lines += ["", "## How it was made", "", _fence(commands)]
    lines += ["", "## Use", ""] + _usage(name, artefact)
    return "\n".join(lines) + "\n"


def _evaluation_lines(evaluation: Evaluation) -> list[str]:
    head = " | ".join(METRICS.values())
    lines = ["", "## Measured", "", f"`surgery eval` on {_cell(evaluation.model)} (rates in %):", ""]
    lines += [f"| benchmark | kind | n | {head} |", "|---|---|---|" + "---|" * len(METRICS)]
    for row in evaluation.rows:
        cells = " | ".join(_percent(row.metrics.get(k)) for k in METRICS)
        lines.append(f"| {_cell(row.benchmark)} | {row.kind} | {'' if row.n is None else row.n} | {cells} |")
    return lines


def _usage(name: str, artefact: str) -> list[str]:
    if artefact == "onnx":
        return [_fence([f"surgery eval {name} --backend onnx -b selfaware"])]
    code = [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model = AutoModelForCausalLM.from_pretrained({json.dumps(printable(name))})",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(printable(name))})",
    ]
    return [_fence(code, "python")]


def card_name(folder: str | Path, push_to: str | None) -> str:
    """What the card calls the model: the hub repository it is pushed to, else the folder's name."""
    return push_to or Path(folder).name
