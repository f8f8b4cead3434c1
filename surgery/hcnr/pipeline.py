"""`surgery patch` as a library call: calibration -> Fisher -> selection -> Hessians -> compensation -> file.

Each stage is a typed function in its own module
(``CalibrationSets -> FisherScores -> Selection -> Hessians -> CompensatedPatch -> PatchManifest``);
this one only moves data between them, times them and writes the patch plus ``<patch>.report.json``.
Every model size takes the same streamed path: blocks are read from disk one at a time
(:mod:`.skeleton`, :mod:`.stream`), intermediate results are parts of ``<patch>.work/`` (:mod:`.workdir`),
so memory stays at about one block and a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..architecture import require_same_architecture
from ..atomic import write_json_atomic
from ..convert import convert_patch
from ..devices import resolve_device, resolve_dtype
from ..errors import OptionError, SurgeryError
from ..linear_layers import LinearLayer
from ..memory import map_large_allocations, release_freed_memory
from ..modelio import ModelSource, load_tokenizer, locate, open_checkpoint
from ..patch_encoding import ENCODINGS
from ..patchfile import PatchManifest, PatchStats, write_patch_streamed
from ..progress import StageTimer, peak_rss_mb, progress
from ..revision import source_revisions
from .calibration import CalibrationSets, dataset_fingerprint, load_calibration_sets
from .compensation import compensate_layers
from .distributed import World
from .fisher import SHARED, FisherScores
from .hessian import FusedHessians, block_hessians, fuses_hessians, needs_hessians
from .options import ComputeOptions, PatchOptions
from .parts import PatchParts, part_name, save_part
from .plan import Plan, available, estimate, require_fits
from .selection import Selection, WeightPair, select_neurons
from .skeleton import Checkpoint, ModelSkeleton
from .stream import Stream, fisher_streams, forward_streams
from .workdir import WorkFolder, model_fingerprint, work_folder_of

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = PatchOptions()  # frozen: one shared default is safe
DEFAULT_COMPUTE = ComputeOptions()


@dataclass
class PatchReport:
    """What ``make_patch`` did: written as ``<patch>.report.json`` and returned to the caller."""

    patch: str
    patch_bytes: int
    seconds: dict[str, float]  # per stage
    seconds_total: float
    peak_rss_mb: float
    device: str
    dtype: str
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
    reused: list[str]  # parts taken from an interrupted run's work folder
    encoding: str = "full"  # how the patch stores its values (surgery.patch_encoding)
    encoding_error: dict[str, float | None] | None = None  # bf16/int8: weight error against the full patch

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
    compute: ComputeOptions = DEFAULT_COMPUTE,
    preset: str | None = None,  # only recorded in the manifest: the preset the options came from
    encoding: str = "full",
) -> PatchReport:
    """Compute an HCNR patch for ``sft`` against ``base``; writes ``out`` (in ``encoding``, :func:`_write`) and
    ``out.report.json``."""
    out, timer, _ = Path(out), StageTimer(), _require_encoding(encoding)
    map_large_allocations()
    run = _Run(sft, base, trust_remote_code, allow_pickle, compute)
    torch.manual_seed(options.seed)
    with timer.stage("load"):
        sets, options = _calibration(run, honesty_data, task_data, options)
        require_fits(estimate(run.skeleton("sft"), sets, options, compute), available(out, compute), compute)
        work = run.open_work(work_folder_of(out), run.identity(options, honesty_data, task_data))
        layers = run.skeleton("sft").layers
    scores = _fisher_stage(timer, run, work, sets, options)
    with timer.stage("selection"):
        weights = run.weights(layers)
        selection = select_neurons(layers, scores, weights, options)
    parts = _compensation_stage(timer, run, work, sets, selection, weights, options)
    with timer.stage("write"):
        stats = patch_stats(layers, selection, parts, weights)
        manifest = dataclasses.replace(run.manifest(options, stats, honesty_data, task_data), preset=preset)
        manifest, encoding_error = _write(out, parts, manifest, encoding, run, work)
    report = _report(out, timer, run, sets, manifest, stats, work.reused, encoding_error)
    if run.world.leader:
        write_json_atomic(out.with_name(out.name + ".report.json"), report.to_dict(), sort_keys=True)
        if not compute.keep_work:
            work.remove()
    return report


def _write(
    out: Path, parts: PatchParts, manifest: PatchManifest, encoding: str, run: _Run, work: WorkFolder
) -> tuple[PatchManifest, dict[str, float | None] | None]:
    """Write the patch at ``out`` (rank 0 only): streamed when full; else the full patch in the work folder first,
    then its encoded form (:func:`surgery.convert.convert_patch`). Returns the manifest and, for bf16/int8, the
    weight error the encoding costs against the full patch."""
    error = None
    if run.world.leader and encoding == "full":
        manifest = write_patch_streamed(out, parts.records, parts.tensor, manifest)
    elif run.world.leader:
        full = work.path("full-patch")
        write_patch_streamed(full, parts.records, parts.tensor, manifest)
        converted = convert_patch(full, out, encoding, sft=run.checkpoint("sft"))
        error = {k: getattr(converted, k) for k in ("max_abs_error", "mean_abs_error", "mean_abs_change")}
    run.world.barrier()
    return dataclasses.replace(manifest, encoding=encoding), error


def _require_encoding(encoding: str) -> str:
    """``encoding`` if it is one of :data:`surgery.patch_encoding.ENCODINGS`, checked before any work."""
    if encoding not in ENCODINGS:
        raise OptionError(f"--encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}.")
    return encoding


def plan_patch(
    sft: str,
    base: str | None,
    honesty_data: str | Path,
    task_data: str | Path,
    options: PatchOptions = DEFAULT_OPTIONS,
    *,
    trust_remote_code: bool = False,
    compute: ComputeOptions = DEFAULT_COMPUTE,
) -> Plan:
    """What :func:`make_patch` with these arguments would need, computed without reading a block's weight.

    The estimate is for ``compute``'s device, but nothing runs there: the skeleton is built on the CPU, so a
    run for a GPU machine can be planned on a laptop (``--device cuda --plan`` without CUDA)."""
    run = _Run(sft, base, trust_remote_code, False, dataclasses.replace(compute, device="cpu"))
    sets = load_calibration_sets(run.tokenizer(), honesty_data, task_data, options)
    return estimate(run.skeleton("sft"), sets, options, compute)


def _fisher_stage(
    timer: StageTimer, run: _Run, work: WorkFolder, sets: CalibrationSets, options: PatchOptions
) -> FisherScores:
    """Stage 1a, streamed: forward through every block, then the exact Fisher sums from the top down
    (and, where :func:`~.hessian.fuses_hessians` says so, the narrow-input layers' Hessian sums on the way).

    Random selection needs no scores (and gets no such stage)."""
    if options.selection != "fisher":
        return FisherScores()
    kinds = _kind_groups(sets, options)
    skel = run.skeleton(options.fisher_at)
    streams = run.streams(options.fisher_at, work, sets)
    fused = FusedHessians(work, skel, options) if fuses_hessians(options, skel.blocks, run.world.size) else None
    if fused is not None:
        log.info("summing the narrow-input layers' Hessians during the Fisher pass (no Hessian pass for them)")
    with timer.stage("forward"):
        forward_streams([streams["hon"], streams["task"]])
    with timer.stage("fisher"):
        hon, task = fisher_streams(
            [streams["hon"], streams["task"]], rows=options.neuron == "row", taps=fused, kinds={"hon": list(kinds)}
        )
    examples = {"task": sets.examples()["task"], **kinds}
    return FisherScores.of(run.world.sum_fisher(hon), run.world.sum_fisher(task), options.neuron, examples)


def _calibration(
    run: _Run, honesty_data: str | Path, task_data: str | Path, options: PatchOptions
) -> tuple[CalibrationSets, PatchOptions]:
    """The tokenized calibration sets, and the options made concrete for them (:func:`resolve_kind_pooling`)."""
    sets = load_calibration_sets(run.tokenizer(), honesty_data, task_data, options)
    controls, lines = sets.controls(), sets.examples()["honesty"]
    if options.controls_in == "task" and not 0 < controls < lines:
        raise OptionError(
            "--controls-in task needs D_hon lines of kind 'answerable' and lines to decline (their 'kind' "
            f"field); the honesty file has {controls} answerable of {lines}."
        )
    return sets, resolve_kind_pooling(options, sets.decline_kinds())


#: --kind-pooling mean/min compare kinds, so they need this many decline kinds in D_hon (auto falls back below it)
MIN_DECLINE_KINDS = 2


def resolve_kind_pooling(options: PatchOptions, decline_kinds: dict[str, int]) -> PatchOptions:
    """``--kind-pooling auto`` made concrete for this D_hon: ``mean`` when its lines name at least two kinds of
    questions to decline, else ``pooled``.

    Why: the recommended preset pools by kind (measured to carry honesty to kinds the calibration lacked, at no
    task cost), but a user's own D_hon often has no ``kind`` field, and a preset must not refuse it. An explicit
    ``mean`` or ``min`` still refuses such a file. The patch records the value used, so a rerun with the
    recorded options makes the same patch without this rule."""
    if options.kind_pooling != "auto":
        return options
    used = "mean" if len(decline_kinds) >= MIN_DECLINE_KINDS else "pooled"
    log.info(
        "kind pooling (auto): %s (D_hon names %d kinds of questions to decline%s)",
        used,
        len(decline_kinds),
        ": " + ", ".join(decline_kinds) if decline_kinds else "",
    )
    return dataclasses.replace(options, kind_pooling=used)


def _kind_groups(sets: CalibrationSets, options: PatchOptions) -> dict[str, int]:
    """D_hon's groups of examples for ``--kind-pooling`` (each decline kind, and the shared group) -> their
    sizes; empty when the priority is pooled. Fewer than two decline kinds is refused in one sentence."""
    if options.kind_pooling == "pooled":
        return {}
    kinds = sets.decline_kinds()
    if len(kinds) < MIN_DECLINE_KINDS:
        raise OptionError(
            f"--kind-pooling {options.kind_pooling} needs D_hon lines of at least two kinds of questions to decline "
            f"(their 'kind' field); the honesty file has {len(kinds)}."
        )
    bad = next((k for k in kinds if "::" in k or k == SHARED), None)
    if bad is not None:
        raise OptionError(f"D_hon's kind {bad!r} cannot be used with --kind-pooling: rename it.")
    return {**kinds, SHARED: sets.examples()["honesty"] - sum(kinds.values())}


def _compensation_stage(
    timer: StageTimer,
    run: _Run,
    work: WorkFolder,
    sets: CalibrationSets,
    selection: Selection,
    weights: WeightPair,
    options: PatchOptions,
) -> PatchParts:
    """Stage 2, block by block: the block's Hessians from the SFT's cached inputs, solve, write the part, free."""
    by_block: dict[int, list[LinearLayer]] = {}
    blocks = {b.name: b for b in run.skeleton("sft").blocks}
    for layer in selection.layers:
        by_block.setdefault(blocks[layer.block].index, []).append(layer)
    streams = run.streams("sft", work, sets) if needs_hessians(options) else None
    if streams is not None:
        with timer.stage("forward"):
            forward_streams([streams["hon"], streams["task"]])
    world = run.world
    world.barrier()  # every rank decides from the same parts which blocks are left
    missing = [i for i in sorted(by_block) if not work.has(part_name(i))]
    if len(missing) < len(by_block):
        work.note_reused(f"patch parts of {len(by_block) - len(missing)} blocks")
    for i in progress(missing, desc="hessians + compensation", unit="block"):
        block, owner = run.skeleton("sft").blocks[i], world.owner(i)
        with timer.stage("hessians", log_each=False):
            reduce = functools.partial(world.sum_to, owner=owner) if world.size > 1 else None
            hessians = block_hessians(streams, block, by_block[i], options, reduce) if streams is not None else None
        if owner == world.rank:
            with timer.stage("compensation", log_each=False):
                patched = compensate_layers(by_block[i], selection.neurons, hessians, weights, options)
                save_part(work, i, patched, hessians)
        work.delete(FusedHessians.part_name(block))
        del hessians
        release_freed_memory()
    world.barrier()
    parts = PatchParts.load(work, sorted(by_block))
    if parts.fallbacks:
        log.warning(
            "%d matrices fell back to restore-only (Cholesky failed): %s",
            len(parts.fallbacks),
            ", ".join(parts.fallbacks),
        )
    return parts


class _Run:
    """The SFT model and its base for one patch run: where they are, their skeletons and streams.

    At most one model's skeleton (its embeddings and head) is in memory: asking for the other one frees it.
    """

    def __init__(
        self, sft: str, base: str | None, trust_remote_code: bool, allow_pickle: bool, compute: ComputeOptions
    ) -> None:
        self.sft = locate(sft, base)
        self.base = _resolve_base(self.sft, base)
        require_same_architecture(self.base, self.sft, why="A patch between two different networks is meaningless.")
        self.trust_remote_code, self.allow_pickle = trust_remote_code, allow_pickle
        self.compute, self.device, self.dtype = compute, resolve_device(compute.device), resolve_dtype(compute.dtype)
        self._skeleton: tuple[str, ModelSkeleton] | None = None
        self._streams: dict[str, dict[str, Stream]] = {}
        self.world = World.from_env(self.device)
        self._checkpoints: dict[str, Checkpoint] = {}
        self.local: WorkFolder | None = None  # this rank's block inputs (the shared folder with one process)

    def tokenizer(self) -> Any:
        return load_tokenizer(self.sft, trust_remote_code=self.trust_remote_code)

    def source(self, which: str) -> ModelSource:
        return self.sft if which == "sft" else self.base

    def skeleton(self, which: str) -> ModelSkeleton:
        """The ``sft`` or ``base`` model's skeleton (built once, kept until the other one is asked for)."""
        if self._skeleton is None or self._skeleton[0] != which:
            self._skeleton, self._streams = None, {}
            gc.collect()
            src = self.source(which)
            skel = ModelSkeleton(src, self.checkpoint(which), self.dtype, self.device, self.trust_remote_code)
            self._skeleton = (which, skel)
        return self._skeleton[1]

    def open_work(self, root: Path, identity: dict[str, Any]) -> WorkFolder:
        """The shared work folder (rank 0 clears a stale one first) and this rank's own folder in it."""
        work = WorkFolder(root, identity) if self.world.leader else None
        self.world.barrier()
        work = work or WorkFolder(root, identity)
        self.local = WorkFolder(root / f"rank{self.world.rank}", identity) if self.world.size > 1 else work
        return work

    def streams(self, which: str, work: WorkFolder, sets: CalibrationSets) -> dict[str, Stream]:
        """Both calibration sets streamed through ``which`` (their block calls captured once).

        With several processes each streams its own share of the batches, in its own folder."""
        skel = self.skeleton(which)
        if which not in self._streams:
            local = self.local or work
            self._streams[which] = {
                name: Stream.capture(skel, local, which, name, self.world.shard(batches, f"{name} batches"))
                for name, batches in (("hon", sets.hon), ("task", sets.task))
            }
        return self._streams[which]

    def checkpoint(self, which: str) -> Checkpoint:
        """Tensor-by-tensor access to ``which`` (opened once: an adapter's opening builds a meta model)."""
        if which not in self._checkpoints:
            self._checkpoints[which] = open_checkpoint(self.source(which), allow_pickle=self.allow_pickle)
        return self._checkpoints[which]

    def weights(self, layers: list[LinearLayer]) -> WeightPair:
        """Stored base and SFT weights, checked to hold every layer with the same shape."""
        pair = WeightPair(self.checkpoint("base"), self.checkpoint("sft"))
        pair.check_same_tensors(layers)
        return pair

    def identity(self, options: PatchOptions, honesty_data: str | Path, task_data: str | Path) -> dict[str, Any]:
        """What the work folder's parts depend on: a folder recording anything else is stale."""
        return {
            "tool": "surgery",
            "tool_version": __version__,
            "torch": torch.__version__,
            "options": options.to_dict(),
            "calibration": {"honesty": dataset_fingerprint(honesty_data), "task": dataset_fingerprint(task_data)},
            "models": {"sft": model_fingerprint(self.sft), "base": model_fingerprint(self.base)},
            "compute": self.compute_record(),
        }

    def compute_record(self) -> dict[str, Any]:
        return {"dtype": self.compute.dtype, "device": self.device.type, "world_size": self.world.size}

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
            compute=self.compute_record(),
            # only the writer: a local folder's fingerprint reads every file once
            revisions=source_revisions({"base": self.base, "sft": self.sft}) if self.world.leader else None,
        )


def _resolve_base(sft_src: ModelSource, base: str | None) -> ModelSource:
    """``--base``, else the base an adapter names; a full SFT model without ``--base`` has none."""
    if base is not None:
        return locate(base)
    if sft_src.adapter_base is not None:
        return ModelSource(str(sft_src.adapter_base), sft_src.adapter_base)
    raise SurgeryError("No base model: pass --base (the model before fine-tuning).")


def patch_stats(layers: list[LinearLayer], selection: Selection, parts: PatchParts, weights: WeightPair) -> PatchStats:
    """How much the patch changes, of what, and how much output drift it leaves."""
    linear_params = sum(layer.numel for layer in layers)
    total_params = weights.model_parameters()
    changed = sum(m.parameters for m in parts.per_matrix.values())
    return PatchStats(
        parameters_changed=changed,
        share_of_linear=changed / linear_params,
        share_of_model=changed / total_params,
        linear_parameters=linear_params,
        model_parameters=total_params,
        matrices_total=len(layers),
        matrices_touched=len(selection.layers),
        fallbacks=parts.fallbacks,
        hessian_tokens=parts.hessian_tokens,
        hessian_groups=parts.hessian_groups,
        residual_ratio=parts.residual_ratio(),
        per_matrix=parts.per_matrix,
        unit_scores=selection.unit_score,
    )


def _report(
    out: Path,
    timer: StageTimer,
    run: _Run,
    sets: CalibrationSets,
    manifest: PatchManifest,
    stats: PatchStats,
    reused: list[str],
    encoding_error: dict[str, float | None] | None = None,
) -> PatchReport:
    """The run summary: the patch statistics without the per-matrix detail, plus time, memory and device."""
    summary = {k: v for k, v in stats.to_dict().items() if k not in ("per_matrix", "unit_scores")}
    return PatchReport(
        patch=str(out),
        patch_bytes=out.stat().st_size,
        seconds={k: round(v, 3) for k, v in timer.seconds.items()},
        seconds_total=round(timer.total, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        device=str(run.device),
        dtype=run.compute.dtype,
        threads=torch.get_num_threads(),
        calibration_examples=sets.examples(),
        options=dict(manifest.options),
        reused=list(reused),
        encoding=manifest.encoding,
        encoding_error=encoding_error,
        **summary,
    )
