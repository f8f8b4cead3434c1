"""The "onnx" evaluation back-end: ``surgery eval EXPORTED_DIR --backend onnx``.

Importing this module registers the back-end with :mod:`surgery.evaluation.runner`. The exported
folder is run by optimum's ``ORTModelForCausalLM`` through the very same :class:`HFGenerator` as the
PyTorch back-end (same prompt rendering, batching, left padding and stop tokens), so a difference in
the honesty table can only come from the artefact, not from the harness.
"""

from __future__ import annotations

from surgery.evaluation.runner import HFGenerator, register_backend
from surgery.modelio import load_tokenizer, locate

from . import require_onnx


def ort_generator(model: str, *, batch_size: int = 16, trust_remote_code: bool = False, threads: int | None = None,
                  dtype=None, allow_pickle: bool = False) -> HFGenerator:
    """A folder written by ``surgery export`` as a generator; ``dtype``/``allow_pickle`` do not apply to ONNX."""
    require_onnx("The 'onnx' evaluation back-end")
    from .onnx_export import load_ort_model

    source = locate(model)
    ort_model = load_ort_model(source.path, threads=threads)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    return HFGenerator(ort_model, tokenizer, batch_size=batch_size, name="onnx")


register_backend("onnx", ort_generator)
