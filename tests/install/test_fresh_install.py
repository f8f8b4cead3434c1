"""A new user's install, as issue 15 accepts it: a fresh venv on transformers 5.x, without ``../shared``.

The package is installed from this checkout the way a user installs it from the index (``pip install
surgery-hcnr``: a built wheel, not an editable install), into a new venv that holds only what pip resolves
(the CPU torch first, as scripts/setup.sh does, then the package with ``transformers>=5``); where
``.venv-tf5`` exists (scripts/setup_core5.sh), its dependencies are reused instead of installed again.
Every command runs from an empty temp folder with ``SURGERY_DATA_DIR``, ``SURGERY_CACHE`` and ``PYTHONPATH``
unset and ``HOME`` empty, so nothing of the repository or the shared data can help it. The model pair is a
tiny random Llama and its synthetic SFT twin (tests/support/tiny.py), and the user's own data is a small
JSONL file, as a user has. (A full install took 5.5 min on a busy 2-core machine; reusing ``.venv-tf5``,
the whole file takes 40 s on a quiet one, about 3 min on a busy one.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from surgery.evaluation.evaluate import load_json
from tests.conftest import write_calibration
from tests.support.tiny import build_tiny_model, perturb_columns

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: the variables that could point a run at the repository, the shared data or a warm cache
SCRUBBED = ("SURGERY_DATA_DIR", "SURGERY_CACHE", "PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME", "HF_HOME")


class Fresh:
    """The fresh venv, its clean environment and an empty working folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.work = root / "work"
        self.work.mkdir(parents=True)
        (root / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(
            PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            HOME=str(root / "home"),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
            PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR") or str(Path("~/.cache/pip").expanduser()),
        )
        self.env = env

    def run(self, *args: object, timeout: int = 300) -> subprocess.CompletedProcess:
        """A command in the work folder; a failure shows its output."""
        proc = subprocess.run(
            [str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, (
            f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
        return proc

    def surgery(self, *args: object) -> subprocess.CompletedProcess:
        return self.run(self.venv / "bin" / "surgery", "-q", "--threads", 1, *args)


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _reuse_dependencies(fresh_venv: Path, donor: Path, into: Path) -> None:
    """Make ``donor``'s installed dependencies visible to the fresh venv, without the package itself.

    Installing torch and transformers anew takes minutes; scripts/setup_core5.sh has already resolved the same
    requirements into ``.venv-tf5``. A folder of links to everything there except this package (its metadata,
    its editable-install hook, the ``.pth`` files) goes onto the fresh venv's path, so pip still checks every
    requirement against it and installs the package itself from a wheel.
    """
    into.mkdir()
    for entry in _site_packages(donor).iterdir():
        name = entry.name.lower()
        if name.endswith(".pth") or "surgery" in name or name.startswith(("pip", "_distutils_hack", "__pycache__")):
            continue
        (into / entry.name).symlink_to(entry)
    (_site_packages(fresh_venv) / "reused-dependencies.pth").write_text(f"{into}\n")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Fresh:
    f = Fresh(tmp_path_factory.mktemp("fresh-install"))
    f.run(sys.executable, "-m", "venv", f.venv)
    pip = [f.venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    donor = ROOT / ".venv-tf5"
    if (donor / "bin" / "python").is_file():
        _reuse_dependencies(f.venv, donor, f.root / "reused")
    else:
        f.run(*pip, "torch==2.13.0", timeout=900)  # the CPU build, as scripts/setup.sh installs it
    f.run(*pip, ROOT, "transformers>=5,<6", timeout=900)  # a built wheel, like `pip install surgery-hcnr`
    return f


@pytest.fixture(scope="module")
def pair(fresh) -> tuple[Path, Path]:
    """A tiny Llama and its SFT twin, in the user's folder."""
    base = build_tiny_model("llama", fresh.work / "base")
    sft = fresh.work / "sft"
    perturb_columns(base, sft)
    return base, sft


@pytest.fixture(scope="module")
def own_data(fresh) -> tuple[Path, Path, Path]:
    """What a user has: honesty and task samples of their own, and questions to evaluate on."""
    hon, task = write_calibration(fresh.work / "mine", n=16)
    questions = fresh.work / "mine" / "questions.jsonl"
    rows = [{"question": f"What is {i} plus one?", "answerable": True, "answers": [str(i + 1)]} for i in range(4)]
    rows += [{"question": f"Who wrote the unknown paper number {i}?", "answerable": False} for i in range(4)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return hon, task, questions


def _apply_and_eval(fresh: Fresh, sft: Path, patch: Path, questions: Path, name: str) -> dict:
    fixed = fresh.work / f"{name}-fixed"
    fresh.surgery("apply", sft, patch, "-o", fixed)
    assert (fixed / "model.safetensors").is_file() and (fixed / "config.json").is_file()
    result = fresh.work / f"{name}-eval.json"
    benchmarks = ("--benchmark", questions, "--benchmark", "selfaware")  # the user's file and a bundled sample
    fresh.surgery("eval", fixed, *benchmarks, "--limit", 4, "--max-new-tokens", 3, "--json", result)
    assert {"questions", "surgery_selfaware"} <= set(json.loads(result.read_text())["results"])  # harness layout
    record = load_json(result)
    assert set(record["metrics"]["per_benchmark"]) == {"questions", "selfaware"}
    return record


def test_the_installed_package_is_the_wheel_on_transformers_5(fresh):
    probe = (
        "import json, surgery, transformers, importlib.metadata as m; from surgery import recipes; "
        "print(json.dumps([surgery.__file__, transformers.__version__, m.version('surgery-hcnr'), "
        "all((recipes.ROOT / 'smollm2' / f).is_file() "
        "for f in ('recipe.json', 'm1-sft-lora/adapter_model.safetensors'))]))"
    )
    where, tf_version, version, recipes_shipped = json.loads(
        fresh.run(fresh.venv / "bin" / "python", "-c", probe).stdout
    )
    assert Path(where).is_relative_to(fresh.venv) and not Path(where).is_relative_to(ROOT)
    assert tf_version.startswith("5.") and recipes_shipped
    assert fresh.surgery("--version").stdout.strip().endswith(version)
    fresh.run(fresh.venv / "bin" / "python", "-m", "pip", "check")
    assert not list((fresh.venv / "lib").glob("python*/site-packages/recipes")), "a top-level 'recipes' package"


def test_patch_apply_eval_with_the_users_own_files(fresh, pair, own_data):
    """The user passes both calibration files."""
    base, sft = pair
    hon, task, questions = own_data
    patch = fresh.work / "own.safetensors"
    fresh.surgery("patch", sft, "--base", base, "--honesty-data", hon, "--task-data", task, "-o", patch)
    _apply_and_eval(fresh, sft, patch, questions, "own")


def test_calib_works_without_the_shared_data(fresh, pair):
    _, sft = pair
    out = fresh.work / "calib"
    fresh.surgery("calib", "-o", out, "--model", sft, "--n-hon", 16, "--n-task", 8, "--probe", 8)
    assert len((out / "d_hon.jsonl").read_text().splitlines()) == 16


def test_patch_defaults_to_the_bundled_honesty_set(fresh, pair, own_data):
    base, sft = pair
    _, task, questions = own_data
    patch = fresh.work / "bundled.safetensors"
    fresh.surgery("patch", sft, "--base", base, "--task-data", task, "-o", patch)
    _apply_and_eval(fresh, sft, patch, questions, "bundled")


def test_the_recommended_preset_on_a_fresh_install(fresh, pair, own_data):
    """The acceptance chain: patch --preset recommended with only the user's task sample, apply, eval."""
    base, sft = pair
    _, task, questions = own_data
    patch = fresh.work / "recommended.safetensors"
    fresh.surgery("patch", sft, "--base", base, "--task-data", task, "--preset", "recommended", "-o", patch)
    _apply_and_eval(fresh, sft, patch, questions, "recommended")
