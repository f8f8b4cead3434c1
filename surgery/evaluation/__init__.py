"""Honesty evaluation: benchmarks as items, batched generation, refusal detection, metrics, reports.

The pieces are separate so other commands can reuse them: ``benchmarks`` (items and the shared
train/eval split), ``runner`` (the model seam: torch built in, other back-ends register themselves),
``refusal`` and ``scoring`` (per-response judgements), ``metrics`` (pure maths), ``evaluate`` (the
loop and the JSON result), ``report`` (tables, Markdown, chart).
"""
