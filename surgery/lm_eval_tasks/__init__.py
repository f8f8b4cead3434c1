"""The honesty benchmarks and refusal-aware metrics as an lm-evaluation-harness (>= 0.4) task pack.

``lm_eval --model hf --model_args pretrained=MODEL --include_path <this folder> --tasks surgery_honesty
--apply_chat_template`` scores a model with the harness's own back-ends (``hf``, ``vllm``, ...). Items
come from :func:`surgery.evaluation.benchmarks.load_items` (the bundled samples, ``$SURGERY_DATA_DIR``
or ``--metadata '{"data_dir": ...}'``) and each response is judged by the same refusal matcher and
answer matcher as ``surgery eval``, so the numbers agree with it on the same items and responses.
Tasks: ``surgery_<benchmark>`` for every built-in benchmark; groups ``surgery_honesty`` (the bundled
honesty benchmarks) and ``surgery_honesty_full`` (needs the full data folder).
"""

from __future__ import annotations

from pathlib import Path

#: the folder to pass to ``lm_eval --include_path``
PATH = Path(__file__).resolve().parent
