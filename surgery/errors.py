"""Errors a user can cause. The CLI turns any :class:`SurgeryError` into one sentence and exit code 2.

Subclasses exist so that callers and tests can tell the kinds apart by type, not by message text.
"""


class SurgeryError(Exception):
    """A problem with the user's input (paths, files, options): reported without a traceback."""


class OptionError(SurgeryError):
    """An option value is out of range or does not fit the other options."""


class ModelFolderError(SurgeryError):
    """A model folder (config, index, shards, adapter) is missing, unreadable or malformed."""


class ArchitectureMismatch(SurgeryError):
    """Two models that must share an architecture (base and SFT, patch and model) do not."""


class PatchFormatError(SurgeryError):
    """A patch file is not a valid surgery patch (wrong type, shape, index or manifest field)."""


class FingerprintMismatch(SurgeryError):
    """A tensor's fingerprint differs from the one a patch was made for: wrong or modified model."""


class CalibrationDataError(SurgeryError):
    """A calibration or evaluation data file is missing, unreadable or has no usable lines."""


class MissingExtraError(SurgeryError):
    """An optional dependency (an extra such as ``[onnx]``) is not installed."""


class HubError(SurgeryError):
    """The Hugging Face hub could not give or take what was asked: offline, not found, gated, not logged in."""
