"""Where a command runs and in what precision: ``--device`` and ``--dtype``, declared once, resolved once.

Every command that loads a model (``patch``, ``eval``, ``probe``, ``calib``, ``bench``) adds
:class:`DeviceOptions` to its options, so the two flags have one name, one default and one help text.
The resolvers turn the flag values into torch objects and refuse what this machine cannot do with one
:class:`~surgery.errors.OptionError` sentence (``--device cuda`` without CUDA), before any work.

The API, for library code and commands alike:

- :func:`resolve_device` ``("auto" | "cpu" | "cuda" | "cuda:N" | "mps") -> torch.device``
- :func:`resolve_dtype` ``("float32" | "bfloat16") -> torch.dtype``
- :func:`resolve` ``(DeviceOptions) -> Placement``: both, plus :meth:`Placement.record` (what results store)
- :func:`autocast` ``(Placement)``: the context for training steps in bf16 (float32 master weights)

Precision policy: ``bfloat16`` means bf16 weights for inference and bf16 *matmuls* under autocast for
training, never fp16 (its range overflows gradients), and reductions the caller cares about (losses,
Fisher scores, Hessians) stay float32 or float64. torch is imported inside the functions so that
command modules can declare these options without importing it (``surgery --help`` stays instant).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import OptionError
from .options import opt

if TYPE_CHECKING:
    import torch

#: the ``--dtype`` choices, and the torch dtype each names
DTYPES = ("float32", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::\d+)?)$")


@dataclass(frozen=True)
class DeviceOptions:
    """``--device`` and ``--dtype``: the same two options on every command that runs a model."""

    device: str = opt(
        "auto",
        "Where the model runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps.",
        metavar="auto|cpu|cuda[:N]|mps",
    )
    dtype: str = opt(
        "float32",
        "Weights and matmuls in float32, or bfloat16 (accumulations stay float32; never float16).",
        choices=DTYPES,
    )


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        """``"float32"`` or ``"bfloat16"``: the spelling of ``--dtype``."""
        return str(self.dtype).removeprefix("torch.")

    def record(self) -> dict[str, str]:
        """What a results file stores: ``{"device": "cuda:0", "dtype": "bfloat16"}``."""
        return {"device": str(self.device), "dtype": self.dtype_name}


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``--device NAME`` means; refuses a malformed name or one this machine lacks.

    ``auto`` is ``cuda`` (device 0) when CUDA is available, else ``cpu``; ``mps`` is never chosen by
    ``auto`` (its bf16 and generation support vary by macOS version), only when asked for.
    """
    import torch

    name = str(name).strip().lower()
    if not _DEVICE.match(name):
        raise OptionError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}.")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name} was asked for, but CUDA is not available on this machine.")
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise OptionError(f"--device {name} was asked for, but this machine has {count} CUDA device(s).")
        return torch.device("cuda", index)
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise OptionError("--device mps was asked for, but MPS is not available on this machine.")
    return torch.device(name)


def resolve_dtype(name: str = "float32") -> torch.dtype:
    """The torch dtype ``--dtype NAME`` means (float32 or bfloat16); anything else is refused."""
    import torch

    if name not in DTYPES:
        raise OptionError(f"--dtype must be {' or '.join(DTYPES)}, got {name!r}.")
    return torch.float32 if name == "float32" else torch.bfloat16


def resolve(options: DeviceOptions | None = None) -> Placement:
    """Both options resolved (the defaults when ``options`` is None): call it before any work."""
    options = options or DeviceOptions()
    return Placement(resolve_device(options.device), resolve_dtype(options.dtype))


def autocast(placement: Placement) -> contextlib.AbstractContextManager[Any]:
    """The context a training step runs in: bf16 autocast for ``bfloat16``, nothing for ``float32``.

    Parameters (and so gradients and optimizer state) stay float32, the master weights; only matmuls
    run in bf16, and autocast keeps losses and softmax in float32.
    """
    import torch

    if placement.dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=placement.device.type, dtype=placement.dtype)
