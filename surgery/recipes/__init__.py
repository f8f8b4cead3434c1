"""The bundled pair recipes: one folder per model family, each holding a ``recipe.json``.

Shipped as package data, so the folder is found from this package wherever it is installed.
"""

from __future__ import annotations

from pathlib import Path

#: the folder holding one sub-folder per recipe (``smollm2/recipe.json``, ``gemma3_270m/recipe.json``)
ROOT = Path(__file__).resolve().parent
