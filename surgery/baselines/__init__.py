"""Baselines HCNR is measured against, on the same pair, data and evaluation.

- :mod:`.rait` — refusal-aware re-tuning: fine-tune the SFT model on IDK-relabelled data (LoRA or full).
- :mod:`.dpo` — DPO on honest-vs-fabricated answer pairs (``trl``).
- :mod:`.interpolate` — whole-model roll-back ``W0 + α·(W1 − W0)``.
- :mod:`.variants` — the HCNR ablation grid as :class:`~surgery.hcnr.options.PatchOptions`.
- :mod:`.options` — :class:`~.options.TrainOptions`, the options base of RAIT and DPO.
- :mod:`.methods` — method specs (``KIND[:ARG]``) and the registry of kinds: how each parses and runs.
- :mod:`.tiers` — THE list of comparison tiers (named groups of specs) and the default one.
- :mod:`.comparison` — run methods side by side (one subprocess each, :mod:`.worker`) and compare them
  (:mod:`.report`): ``surgery bench``.
"""
