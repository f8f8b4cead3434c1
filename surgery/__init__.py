"""surgery: honesty-critical neuron restoration (HCNR) as sparse safetensors patches."""

__version__ = "0.1.0"
