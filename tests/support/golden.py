"""Patch bytes on tiny pairs for a fixed set of option sets: the refactoring's behaviour contract.

``python -m tests.support.golden write`` records sha256s (done once, on the code before a redesign; on a
new kind of CPU, ``write`` adds that machine's set, computed from the same contract code);
the test ``tests/hcnr/test_golden_patches.py`` recomputes them and requires equality.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parents[1] / "fixtures" / "golden_patches.json"

#: (family, options) pairs: every compensation, both neuron kinds, selection and Fisher variants
CASES: list[tuple[str, dict[str, Any]]] = [
    ("llama", {}),
    ("llama", {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8}),
    ("llama", {"compensation": "summed", "hessian_data": "hon"}),
    ("llama", {"compensation": "none"}),
    ("llama", {"neuron": "row"}),
    ("llama", {"selection": "random", "layer_unit": "block"}),
    ("llama", {"fisher_at": "base", "fisher_normalize": True, "hessian_data": "task"}),
    ("gemma3", {"compensation": "protect", "task_weight": 2.0}),
    ("qwen2", {}),
]


def machine() -> str:
    """The CPU kind that decides float rounding: its vendor and the kernels torch picks for it.

    MKL and torch's vectorised kernels take other code paths on another vendor or instruction set, so the
    Cholesky solves of compensation round differently there; bit-identity holds per kind of machine."""
    import torch

    vendor = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}"


def expected_sets(recorded: dict[str, Any]) -> list[dict[str, str]]:
    """The digest sets a run here must match one of: this machine's if recorded, else every recorded one
    (the first recording, ``sha256``, was made before machines were told apart)."""
    by_machine: dict[str, dict[str, str]] = recorded.get("sha256_by_machine", {})
    if machine() in by_machine:
        return [by_machine[machine()]]
    return [recorded["sha256"], *by_machine.values()]


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def digest(path: Path) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and the manifest less its local paths.

    The file's own bytes embed the folders the models were read from, which differ per run.
    """
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        manifest = json.loads((f.metadata() or {}).get("manifest", "{}"))
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(-1).view(torch_uint8()).numpy().tobytes())
    # compute (dtype, device, world size) and revisions (hub commit or folder fingerprint, issue 15) were added
    # after the recording; a folder fingerprint also differs where the tiny models' bytes do
    for key in ("base", "sft", "compute", "revisions"):
        manifest.pop(key, None)
    for name, default in (("kind_pooling", "pooled"), ("controls_in", "hon")):  # added after the recording
        if manifest.get("options", {}).get(name) == default:
            manifest["options"].pop(name)
    for fp in manifest.get("calibration", {}).values():
        fp.pop("file", None)
    h.update(json.dumps(manifest, sort_keys=True).encode())
    return h.hexdigest()


def torch_uint8():
    import torch

    return torch.uint8


def compute(root: Path) -> dict[str, str]:
    """sha256 of the patch file for every case, on tiny pairs built under ``root``."""
    from surgery.hcnr.options import PatchOptions
    from surgery.hcnr.pipeline import make_patch
    from tests.conftest import write_calibration
    from tests.support.tiny import build_tiny_model, perturb_columns

    hon, task = write_calibration(root / "calib")
    out: dict[str, str] = {}
    pairs: dict[str, tuple[Path, Path]] = {}
    for family, opts in CASES:
        if family not in pairs:
            base = build_tiny_model(family, root / family / "base", seed=0)
            sft = root / family / "sft"
            perturb_columns(base, sft)
            pairs[family] = (base, sft)
        base, sft = pairs[family]
        key = family + ":" + ",".join(f"{k}={v}" for k, v in sorted(opts.items()))
        path = root / (hashlib.sha1(key.encode()).hexdigest() + ".safetensors")
        make_patch(str(sft), str(base), hon, task, path, PatchOptions(**opts))
        out[key] = digest(path)
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        sys.exit("usage: python -m tests.support.golden write")
    with tempfile.TemporaryDirectory() as d:
        got = compute(Path(d))
    data = json.loads(FILE.read_text()) if FILE.exists() else {"versions": versions(), "sha256": got}
    if data["versions"] != versions():
        sys.exit(f"the file was recorded with {data['versions']}; record on those versions")
    data.setdefault("sha256_by_machine", {})[machine()] = got
    FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(data, indent=2))
