"""Measurement scripts (``python -m benchmarks.NAME``); each prints a table. Shared set-up lives here."""

from __future__ import annotations

import logging
import os


def script_logging() -> None:
    """Offline, INFO to stderr, and the libraries' chatter below WARNING: what every long benchmark run wants."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
