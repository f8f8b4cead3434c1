"""The ``surgery`` command: a thin, lazily-loaded layer over the library.

Each subcommand lives next to the code it drives and is imported only when invoked, so
``surgery --help`` is instant and a missing optional extra only affects the command that needs it.
User errors (:class:`SurgeryError`) become one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from . import __version__
from .errors import SurgeryError

#: command name -> "module:attribute"; every module registers exactly the commands it implements
COMMANDS: dict[str, str] = {
    "check": "surgery.commands_core:check",
    "patch": "surgery.commands_core:patch",
    "inspect": "surgery.commands_core:inspect",
    "apply": "surgery.commands_core:apply",
    "eval": "surgery.evaluation.command:eval_command",
    "calib": "surgery.pair.command:calib",
    "pair": "surgery.pair.command:pair",
    "demo": "surgery.pair.demo:demo",
    "export": "exporters.command:export",
    "deploy": "exporters.command:deploy",
    "probe": "surgery.probe.command:probe",
    "bench": "surgery.baselines.command:bench",
}

#: one-line help shown by `surgery --help` without importing every command (keeps --help instant)
SHORT_HELP: dict[str, str] = {
    "check": "Pre-flight: same architecture? where did SFT move the model?",
    "patch": "Compute an HCNR honesty patch (sparse safetensors).",
    "inspect": "Show what a patch changes, for which models, made how.",
    "apply": "Apply a patch to the SFT model, bit-exact, fingerprints checked.",
    "eval": "Honesty evaluation: answer when you know, say so when you don't.",
    "calib": "Build honesty and task calibration sets for a model.",
    "pair": "Build or load the bundled demo base/SFT pair.",
    "demo": "The whole story on the bundled pair: check, patch, apply, eval, export.",
    "export": "Export a model to ONNX through Optimum (optionally int8), verified.",
    "deploy": "Apply a patch, export to ONNX and verify, in one step.",
    "probe": "Does the SFT model still know what it doesn't know? (linear probes)",
    "bench": "Compare HCNR with RAIT, DPO, restore-only, random and interpolation.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def format_commands(self, ctx, formatter):
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("surgery", "exporters"):
                raise
            missing = exc.name
            return click.Command(name, help=f"(unavailable: needs the '{missing}' package)",
                                 callback=lambda: _missing(name, missing))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SurgeryError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def _missing(command: str, package: str) -> None:
    extra = "onnx" if package.split(".")[0] in ("optimum", "onnx", "onnxruntime") else "dev"
    raise SurgeryError(f"'surgery {command}' needs {package}: install it with  pip install 'surgery[{extra}]'.")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if quiet:
        os.environ["SURGERY_QUIET"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - transformers missing is reported by the command itself
        pass


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="surgery")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and results; no progress bars.")
@click.option("--threads", type=int, default=None, envvar="SURGERY_THREADS",
              help="Torch CPU threads (default: all cores, at most 8).")
def main(verbose: int, quiet: bool, threads: int | None) -> None:
    """Give a fine-tuned LLM back its "I don't know": honesty patches with HCNR."""
    setup_logging(verbose, quiet)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads or max(1, min(8, os.cpu_count() or 1)))


if __name__ == "__main__":  # pragma: no cover
    main()
