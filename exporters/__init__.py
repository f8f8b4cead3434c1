"""On-device deployment: ONNX export through Optimum, int8 quantization, verification, ORT evaluation.

Everything here needs the optional ``[onnx]`` extra (optimum-onnx, onnx, onnxruntime). Importing this
package and its command module must work without it, so the heavy imports happen inside functions and
:func:`require_onnx` turns a missing package into one clear sentence instead of a traceback.
"""

from __future__ import annotations

import importlib

from surgery.errors import SurgeryError

INSTALL_HINT = "pip install 'surgery[onnx]'"
#: the modules the extra provides; each is imported for real, so a broken install is caught too
ONNX_MODULES = ("onnx", "onnxruntime", "onnxruntime.quantization", "optimum.exporters.onnx", "optimum.onnxruntime")


def require_onnx(what: str = "ONNX export") -> None:
    """Raise :class:`SurgeryError` naming the extra when any module of ``[onnx]`` cannot be imported."""
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise SurgeryError(
                f"{what} needs the optional ONNX extra ({missing} could not be imported): install it with  "
                f"{INSTALL_HINT}"
            ) from None
