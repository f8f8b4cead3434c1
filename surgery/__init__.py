"""surgery: honesty-critical neuron restoration (HCNR) as sparse safetensors patches."""

__version__ = "0.1.0"

#: the name to ``pip install``: ``surgery`` on the package index is an unrelated project, so the distribution
#: has its own name while the import package and the command stay ``surgery`` (docs/install.md)
DISTRIBUTION = "surgery-hcnr"


def install_hint(extra: str) -> str:
    """The command that installs an optional extra, as messages quote it: ``pip install 'surgery-hcnr[onnx]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
