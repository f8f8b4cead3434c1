"""The "onnx" evaluation back-end: ``surgery eval EXPORTED_DIR --backend onnx``.

The exported folder is run by optimum's ``ORTModelForCausalLM`` through the very same
:class:`~surgery.evaluation.runner.HFGenerator` as the PyTorch back-end (same prompt rendering,
batching, left padding and stop tokens), so a difference in the honesty table can only come from the
artefact, not from the harness. Importing this module registers nothing and imports no onnxruntime:
a command that offers the back-end calls :func:`register`.
"""

from __future__ import annotations

from typing import Any

from ..evaluation.runner import HFGenerator, register_backend
from ..modelio import load_tokenizer, locate
from .onnx import load_ort_model, require_onnx

BACKEND = "onnx"


def ort_generator(
    model: str,
    *,
    batch_size: int = 16,
    trust_remote_code: bool = False,
    threads: int | None = None,
    dtype: Any = None,
    allow_pickle: bool = False,
) -> HFGenerator:
    """A folder written by ``surgery export`` as a generator; ``dtype``/``allow_pickle`` do not apply to ONNX."""
    require_onnx("The 'onnx' evaluation back-end")
    source = locate(model)
    ort_model = load_ort_model(source.path, threads=threads)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    return HFGenerator(ort_model, tokenizer, batch_size=batch_size, name=BACKEND)


def register() -> None:
    """Make ``make_generator("onnx", folder, ...)`` run an exported folder on onnxruntime (idempotent)."""
    register_backend(BACKEND, ort_generator)
