"""Baselines HCNR is measured against, on the same pair, data and evaluation.

- :mod:`.rait` — refusal-aware re-tuning: fine-tune the SFT model on IDK-relabelled data (LoRA or full).
- :mod:`.dpo` — DPO on honest-vs-fabricated answer pairs (``trl``).
- :mod:`.interpolate` — whole-model roll-back ``W0 + α·(W1 − W0)``.
- :mod:`.variants` — the HCNR ablation grid as :class:`~surgery.hcnr.options.PatchOptions`.
- :mod:`.bench` — run methods side by side (one subprocess each) and compare them: ``surgery bench``.
"""
