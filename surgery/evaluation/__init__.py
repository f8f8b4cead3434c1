"""Honesty evaluation: benchmarks as items, batched generation, refusal detection, metrics, reports.

The pieces are separate so other commands can reuse them: ``benchmarks`` (items and the shared
train/eval split), ``runner`` (the model seam: torch built in, other back-ends register themselves),
``refusal`` and ``scoring`` (per-response judgements), ``metrics`` (pure maths), ``evaluate`` (the
loop, the JSON result and the one reader of result files), ``harness`` (the lm-evaluation-harness
result layout; the task pack in ``surgery/lm_eval_tasks/`` shares its per-item values), ``report``
(tables, Markdown, chart).
"""
