"""`surgery patch` as a library call: calibration -> Fisher -> selection -> Hessians -> compensation -> file.

Each stage is a typed function in its own module
(``CalibrationSets -> FisherScores -> Selection -> Hessians -> CompensatedPatch -> PatchManifest``);
this one only moves data between them, times them and writes the patch plus ``<patch>.report.json``.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import __version__
from ..architecture import require_same_architecture
from ..atomic import write_json_atomic
from ..errors import SurgeryError
from ..linear_layers import LinearLayer, find_linear_layers
from ..modelio import ModelSource, load_model, load_tokenizer, locate, open_checkpoint
from ..patchfile import PatchManifest, PatchStats, write_patch
from ..progress import StageTimer, peak_rss_mb
from .calibration import CalibrationSets, dataset_fingerprint, load_calibration_sets
from .compensation import CompensatedPatch, compensate_selection
from .fisher import FisherScores, score_neurons
from .hessian import Hessians, hessians_for, needs_hessians
from .options import PatchOptions
from .selection import Selection, WeightPair, select_neurons

if TYPE_CHECKING:
    from transformers import PreTrainedModel


DEFAULT_OPTIONS = PatchOptions()  # frozen: one shared default is safe


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class PatchReport:
    """What ``make_patch`` did: written as ``<patch>.report.json`` and returned to the caller."""

    patch: str
    patch_bytes: int
    seconds: dict[str, float]  # per stage
    seconds_total: float
    peak_rss_mb: float
    device: str
    threads: int
    calibration_examples: dict[str, int]  # "honesty", "task"
    parameters_changed: int
    share_of_linear: float
    share_of_model: float
    linear_parameters: int
    model_parameters: int
    matrices_total: int
    matrices_touched: int
    fallbacks: list[str]
    hessian_tokens: int
    hessian_groups: int
    residual_ratio: float | None
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The report as ``<patch>.report.json`` stores it."""
        return dataclasses.asdict(self)


def make_patch(
    sft: str,
    base: str | None,
    honesty_data: str | Path,
    task_data: str | Path,
    out: str | Path,
    options: PatchOptions = DEFAULT_OPTIONS,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
) -> PatchReport:
    """Compute an HCNR patch for ``sft`` against ``base``; writes ``out`` and ``out.report.json``."""
    out, timer = Path(out), StageTimer()
    models = _Models(sft, base, trust_remote_code, allow_pickle, pick_device(device))
    torch.manual_seed(options.seed)
    with timer.stage("load"):
        sets = load_calibration_sets(models.tokenizer(), honesty_data, task_data, options)
        layers = models.linear_layers(models.model(options.fisher_at))
    scores = _fisher_stage(timer, models.model(options.fisher_at), layers, sets, options)
    with timer.stage("selection"):
        weights = models.weights(layers)
        selection = select_neurons(layers, scores, weights, options)
    hessians = None
    if needs_hessians(options):
        with timer.stage("hessians"):
            hessians = hessians_for(models.model("sft"), selection.layers, sets, options)
    models.release()
    with timer.stage("compensation"):
        patched = compensate_selection(selection, hessians, weights, options)
    with timer.stage("write"):
        stats = patch_stats(layers, selection, hessians, patched, weights)
        manifest = write_patch(out, patched.entries, models.manifest(options, stats, honesty_data, task_data))
    report = _report(out, timer, models.device, sets, manifest, stats)
    write_json_atomic(out.with_name(out.name + ".report.json"), report.to_dict(), sort_keys=True)
    return report


def _fisher_stage(
    timer: StageTimer, model: PreTrainedModel, layers: list[LinearLayer], sets: CalibrationSets, options: PatchOptions
) -> FisherScores:
    """Stage 1a, timed as "fisher"; random selection needs no scores (and gets no such stage)."""
    if options.selection != "fisher":
        return FisherScores()
    with timer.stage("fisher"):
        return score_neurons(model, layers, sets, options.neuron)


class _Models:
    """The SFT model and its base: where they are, and loading them as each stage needs them.

    At most one model is in memory: asking for the other one frees the first before loading.
    """

    def __init__(
        self, sft: str, base: str | None, trust_remote_code: bool, allow_pickle: bool, device: torch.device
    ) -> None:
        self.sft = locate(sft, base)
        self.base = _resolve_base(self.sft, base)
        require_same_architecture(self.base, self.sft, why="A patch between two different networks is meaningless.")
        self.trust_remote_code, self.allow_pickle, self.device = trust_remote_code, allow_pickle, device
        self._loaded: tuple[str, PreTrainedModel] | None = None

    def tokenizer(self) -> Any:
        return load_tokenizer(self.sft, trust_remote_code=self.trust_remote_code)

    def model(self, which: str) -> PreTrainedModel:
        """The ``sft`` or ``base`` model in float32 on the device (loaded once, kept until another is asked for)."""
        if self._loaded is None or self._loaded[0] != which:
            self.release()
            src = self.sft if which == "sft" else self.base
            model = load_model(
                src, dtype=torch.float32, trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle
            ).to(self.device)
            self._loaded = (which, model)
        return self._loaded[1]

    def release(self) -> None:
        """Free the loaded model (the compensation reads stored weights, not a model)."""
        self._loaded = None
        gc.collect()

    def linear_layers(self, model: nn.Module) -> list[LinearLayer]:
        """The linear layers HCNR may touch; a model without any is not one this method can patch."""
        layers = find_linear_layers(model)
        if not layers:
            raise SurgeryError(f"No linear layers inside numbered blocks were found in {self.sft.spec}.")
        return layers

    def weights(self, layers: list[LinearLayer]) -> WeightPair:
        """Stored base and SFT weights, checked to hold every layer with the same shape."""
        pair = WeightPair(
            open_checkpoint(self.base, allow_pickle=self.allow_pickle),
            open_checkpoint(self.sft, allow_pickle=self.allow_pickle),
        )
        pair.check_same_tensors(layers)
        return pair

    def manifest(
        self, options: PatchOptions, stats: PatchStats, honesty_data: str | Path, task_data: str | Path
    ) -> PatchManifest:
        """Who made the patch, from which models and data, with which options (tensors added on write)."""
        return PatchManifest(
            tool="surgery",
            tool_version=__version__,
            method="HCNR",
            base=self.base.identifier,
            sft=self.sft.identifier,
            options=options.to_dict(),
            calibration={"honesty": dataset_fingerprint(honesty_data), "task": dataset_fingerprint(task_data)},
            stats=stats,
        )


def _resolve_base(sft_src: ModelSource, base: str | None) -> ModelSource:
    """``--base``, else the base an adapter names; a full SFT model without ``--base`` has none."""
    if base is not None:
        return locate(base)
    if sft_src.adapter_base is not None:
        return ModelSource(str(sft_src.adapter_base), sft_src.adapter_base)
    raise SurgeryError("No base model: pass --base (the model before fine-tuning).")


def patch_stats(
    layers: list[LinearLayer],
    selection: Selection,
    hessians: Hessians | None,
    patched: CompensatedPatch,
    weights: WeightPair,
) -> PatchStats:
    """How much the patch changes, of what, and how much output drift it leaves."""
    linear_params = sum(layer.numel for layer in layers)
    total_params = weights.model_parameters()
    changed = sum(m.parameters for m in patched.per_matrix.values())
    return PatchStats(
        parameters_changed=changed,
        share_of_linear=changed / linear_params,
        share_of_model=changed / total_params,
        linear_parameters=linear_params,
        model_parameters=total_params,
        matrices_total=len(layers),
        matrices_touched=len(selection.layers),
        fallbacks=patched.fallbacks,
        hessian_tokens=hessians.objective.tokens if hessians else 0,
        hessian_groups=len(hessians.objective.groups) if hessians else 0,
        residual_ratio=patched.residual_ratio(),
        per_matrix=patched.per_matrix,
        unit_scores=selection.unit_score,
    )


def _report(
    out: Path,
    timer: StageTimer,
    device: torch.device,
    sets: CalibrationSets,
    manifest: PatchManifest,
    stats: PatchStats,
) -> PatchReport:
    """The run summary: the patch statistics without the per-matrix detail, plus time, memory and device."""
    summary = {k: v for k, v in stats.to_dict().items() if k not in ("per_matrix", "unit_scores")}
    return PatchReport(
        patch=str(out),
        patch_bytes=out.stat().st_size,
        seconds={k: round(v, 3) for k, v in timer.seconds.items()},
        seconds_total=round(timer.total, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        device=str(device),
        threads=torch.get_num_threads(),
        calibration_examples=sets.examples(),
        options=dict(manifest.options),
        **summary,
    )
