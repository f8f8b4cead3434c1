"""A synthetic Llama base/SFT pair with random weights and real shapes, written block by block.

\b
    python -m benchmarks.synthetic_llama --depth 8 --out /tmp/pair      # the acceptance shape
    python -m benchmarks.synthetic_llama --preset llama-3.1-8b --dtype bfloat16 --out /tmp/l8b

It exists to measure ``surgery patch`` at sizes no bundled pair reaches (issue 13) without any
download: memory, disk and time as a function of depth and width. The weights mean nothing, but the
tensor names, shapes, shard layout and config are those of ``LlamaForCausalLM``, so every code path a
real checkpoint takes is taken. Each decoder block is its own safetensors shard (embeddings and the
head have theirs), indexed by ``model.safetensors.index.json``; only one block is ever in memory while
writing, so a 4 GB or 30 GB pair is written in the memory of one block.

The SFT twin equals the base except for a drift added to a known random subset of the input columns of
every block linear (recorded in ``pair.json``), so a patch has something to restore and a test knows the
ground truth. Weights are drawn from generators seeded by (seed, tensor name): writing is deterministic
and independent of the order of writing. The folder ``<out>/`` holds ``base/``, ``sft/``,
``honesty.jsonl``, ``task.jsonl`` and ``pair.json``; the marker ``COMPLETE`` (the spec as JSON) is
written last, and :func:`ensure_pair` reuses a folder whose marker matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from surgery.atomic import atomic_folder
from surgery.commands.options import add_options, options_from
from surgery.options import opt
from surgery.pair.gguf import cache_root

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
INDEX = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the block linears of Llama, (module path inside the block, output side, input side)
_LINEARS = (
    ("self_attn.q_proj", "q", "hidden"),
    ("self_attn.k_proj", "kv", "hidden"),
    ("self_attn.v_proj", "kv", "hidden"),
    ("self_attn.o_proj", "hidden", "q"),
    ("mlp.gate_proj", "inter", "hidden"),
    ("mlp.up_proj", "inter", "hidden"),
    ("mlp.down_proj", "hidden", "inter"),
)
#: elements drawn per call when filling a big tensor, so a bf16 tensor never needs its fp32 copy at once
_CHUNK = 1 << 24


@dataclass(frozen=True)
class LlamaShape:
    """The sizes that decide a Llama checkpoint's tensors (head_dim = hidden / heads, as in Llama)."""

    depth: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    #: extra config.json fields (rope settings of a named model)
    config_extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if min(self.depth, self.hidden, self.intermediate, self.heads, self.kv_heads, self.vocab) < 1:
            raise ValueError(f"every size must be at least 1: {self}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden must divide by heads and heads by kv_heads: {self}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def _side(self, side: str) -> int:
        return {
            "hidden": self.hidden,
            "inter": self.intermediate,
            "q": self.heads * self.head_dim,
            "kv": self.kv_heads * self.head_dim,
        }[side]

    def block_tensors(self, i: int) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of block ``i``'s tensors, as ``LlamaForCausalLM`` names them."""
        p = f"model.layers.{i}."
        out: list[tuple[str, tuple[int, ...]]] = [
            (p + "input_layernorm.weight", (self.hidden,)),
            (p + "post_attention_layernorm.weight", (self.hidden,)),
        ]
        out += [(f"{p}{m}.weight", (self._side(o), self._side(n))) for m, o, n in _LINEARS]
        return sorted(out)

    def shards(self) -> list[list[tuple[str, tuple[int, ...]]]]:
        """The tensors of each shard: embeddings, one shard per block, then final norm and head."""
        first: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, self.hidden))]
        last: list[tuple[str, tuple[int, ...]]] = [
            ("lm_head.weight", (self.vocab, self.hidden)),
            ("model.norm.weight", (self.hidden,)),
        ]
        return [first] + [self.block_tensors(i) for i in range(self.depth)] + [last]

    def parameters(self) -> int:
        return sum(_numel(s) for shard in self.shards() for _, s in shard)


#: named shapes; "acceptance" is issue 13's CPU pair (depth set per run), "llama-3.1-8b" the real model's
PRESETS: dict[str, LlamaShape] = {
    "acceptance": LlamaShape(depth=8, hidden=1024, intermediate=4096, heads=16, kv_heads=4, vocab=1024),
    "llama-3.1-8b": LlamaShape(
        depth=32,
        hidden=4096,
        intermediate=14336,
        heads=32,
        kv_heads=8,
        vocab=128256,
        config_extra=(
            ("max_position_embeddings", 131072),
            ("rope_theta", 500000.0),
            (
                "rope_scaling",
                {
                    "factor": 8.0,
                    "high_freq_factor": 4.0,
                    "low_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192,
                    "rope_type": "llama3",
                },
            ),
        ),
    ),
}


@dataclass(frozen=True)
class PairSpec:
    """Everything that decides the bytes of a synthetic pair (its cache key)."""

    shape: LlamaShape
    dtype: str = "float32"
    seed: int = 0
    examples: int = 16  # calibration examples in each of honesty.jsonl and task.jsonl
    moved_fraction: float = 0.125  # share of input columns of each block linear that the SFT moves
    drift: float = 0.5  # drift of a moved column, relative to the init std
    init_std: float = 0.02  # std of the random linear and embedding weights (Llama's initializer_range)
    tokenizer_vocab: int = 1024  # target size of the BPE tokenizer (at most the model's vocab)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 0 < self.moved_fraction <= 1:
            raise ValueError(f"moved_fraction must be in (0, 1], got {self.moved_fraction}")

    def key(self) -> str:
        """A readable folder name plus a short hash of the whole spec."""
        s = self.shape
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:10]
        return (
            f"llama-d{s.depth}-h{s.hidden}-i{s.intermediate}-a{s.heads}-kv{s.kv_heads}"
            f"-v{s.vocab}-{self.dtype}-s{self.seed}-{digest}"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def bytes_per_model(self) -> int:
        return self.shape.parameters() * DTYPES[self.dtype].itemsize


# ---------------------------------------------------------------------------------------- weights


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _generator(seed: int, role: str, name: str) -> torch.Generator:
    """A generator owned by one tensor, so its values do not depend on what was drawn before it."""
    h = hashlib.sha256(f"{seed}/{role}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def _randn(shape: tuple[int, ...], std: float, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Normal values in ``dtype``, drawn in fp32 chunks so a bf16 tensor never exists twice in fp32."""
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(flat.numel(), start + _CHUNK)
        flat[start:stop] = torch.randn(stop - start, generator=g).mul_(std).to(dtype)
    return out


def base_tensor(spec: PairSpec, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One base tensor: norms are ones (Llama's init), matrices normal with std ``init_std``."""
    dtype = DTYPES[spec.dtype]
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return _randn(shape, spec.init_std, dtype, _generator(spec.seed, "base", name))


def moved_columns(spec: PairSpec, name: str, in_features: int) -> list[int]:
    """The input columns of ``name`` that the SFT twin moves (sorted, at least one)."""
    k = max(1, round(in_features * spec.moved_fraction))
    perm = torch.randperm(in_features, generator=_generator(spec.seed, "columns", name))
    return sorted(int(c) for c in perm[:k])


def drift_in_place(spec: PairSpec, name: str, w: torch.Tensor) -> list[int]:
    """Add the SFT drift to the moved columns of ``w`` (in place); returns those columns."""
    cols = moved_columns(spec, name, w.shape[1])
    g = _generator(spec.seed, "drift", name)
    noise = torch.randn(w.shape[0], len(cols), generator=g).mul_(spec.drift * spec.init_std)
    idx = torch.tensor(cols)
    w[:, idx] = (w[:, idx].float() + noise).to(w.dtype)
    return cols


def is_block_linear(name: str) -> bool:
    return name.startswith("model.layers.") and any(f".{m}.weight" in name for m, _, _ in _LINEARS)


def shard_name(k: int, n: int) -> str:
    return f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def iter_shards(spec: PairSpec) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """(file name, base tensors) of each shard in order; one shard's tensors exist at a time."""
    shards = spec.shape.shards()
    for k, tensors in enumerate(shards):
        yield shard_name(k, len(shards)), {name: base_tensor(spec, name, shape) for name, shape in tensors}


# ---------------------------------------------------------------------------- config, tokenizer


def llama_config(spec: PairSpec, tokenizer: Any) -> dict[str, Any]:
    """config.json of ``LlamaForCausalLM`` for the shape (through transformers, so every field is there)."""
    from transformers import LlamaConfig

    s = spec.shape
    fields: dict[str, Any] = dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.depth,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=spec.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg = LlamaConfig(**{**fields, **dict(s.config_extra)})
    cfg.architectures = ["LlamaForCausalLM"]
    d = cfg.to_dict()
    d["torch_dtype"] = spec.dtype
    d.pop("dtype", None)
    d.pop("transformers_version", None)  # the bytes must not depend on the installed version
    return d


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
#: the words of the tokenizer corpus and of the calibration examples
WORDS = tuple(
    (
        "the a of to and in is it that was for on are as with his they at be this from have or by one had "
        "not but what all were when we there can an your which their said if do will each about how up out "
        "them then she many some so these would other into has more her two like him see time could no make "
        "than first been its who now people my made over did down only way find use may water long little very "
        "after words called just where most know get through back much before go good new write our used me "
        "man too any day same right look think also around another came come work three word must because "
        "does part even place well such here take why things help put years different away again off went old "
        "number great tell men say small every found still between name should home big give air line set own "
        "under read last never us left end along while might next sound below saw something thought both few "
        "those always looked show large often together asked house world going want school important until form "
        "food keep children feet land side without boy once animals life enough took sometimes four head above "
        "kind began almost live page got earth need far hand high year mother light parts country father let "
        "night following picture being study second eyes soon times story boys since white days ever paper hard "
        "near sentence better best across during today others however sure means knew its try told young "
        "miles sun ways thing whole hear example heard several change answer room sea against top turned learn "
        "point city play toward five using himself usually money seen car"
    ).split()
)


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) + rng.choice(".?!") for _ in range(600)]


def build_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained offline on a fixed word corpus, with a chat template.

    Sized by ``vocab_size``; the trainer stops early when the corpus has no more merges, so the result
    may be a little smaller.
    """
    return bpe_tokenizer(_corpus(seed), vocab_size)


def bpe_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus`` with this project's specials and chat template
    (also the tiny test models' tokenizer, tests/support/tiny.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "</s>"],
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def calibration_rows(spec: PairSpec) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Short honesty and task examples (``{"prompt","response"}``) in the corpus' words, seeded."""
    rng = random.Random(spec.seed + 1)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    refusals = ("I don't know.", "I am not sure.", "Nobody knows that.", "I cannot tell.")
    hon = [{"prompt": f"What is the {words(3)}?", "response": rng.choice(refusals)} for _ in range(spec.examples)]
    task = []
    for _ in range(spec.examples):
        w = words(4)
        task.append({"prompt": f"Repeat: {w}", "response": w + "."})
    return hon, task


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


# ----------------------------------------------------------------------------------------- write


def write_pair(spec: PairSpec, out: str | Path) -> Path:
    """Write the pair folder ``out`` atomically (replacing an old one) and return it."""
    from safetensors.torch import save_file

    out = Path(out)
    tok = build_tokenizer(min(spec.tokenizer_vocab, spec.shape.vocab), spec.seed)
    if len(tok) > spec.shape.vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens, more than the model's vocab {spec.shape.vocab}")
    config = llama_config(spec, tok)
    log.info("writing %s (%.2f GB per model)", out, spec.bytes_per_model() / 1e9)
    with atomic_folder(out) as tmp:
        base, sft = tmp / "base", tmp / "sft"
        moved: dict[str, list[int]] = {}
        weight_map: dict[str, str] = {}
        total = 0
        for folder in (base, sft):
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            tok.save_pretrained(folder)
        for fname, tensors in iter_shards(spec):
            save_file(tensors, str(base / fname), metadata={"format": "pt"})
            for name in sorted(tensors):
                weight_map[name] = fname
                total += tensors[name].numel() * tensors[name].element_size()
                if is_block_linear(name):
                    moved[name] = drift_in_place(spec, name, tensors[name])
            save_file(tensors, str(sft / fname), metadata={"format": "pt"})
            del tensors
            log.info("  %s", fname)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        for folder in (base, sft):
            (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        hon, task = calibration_rows(spec)
        _write_jsonl(tmp / "honesty.jsonl", hon)
        _write_jsonl(tmp / "task.jsonl", task)
        meta = {"spec": json.loads(spec.to_json()), "moved_columns": dict(sorted(moved.items()))}
        (tmp / "pair.json").write_text(json.dumps(meta) + "\n")
        (tmp / MARKER).write_text(spec.to_json() + "\n")  # last: a folder with it is whole
    return out


@dataclass(frozen=True)
class SyntheticPair:
    """Paths of a written pair."""

    root: Path
    base: Path = field(init=False)
    sft: Path = field(init=False)
    honesty: Path = field(init=False)
    task: Path = field(init=False)

    def __post_init__(self) -> None:
        for name, rel in (("base", "base"), ("sft", "sft"), ("honesty", "honesty.jsonl"), ("task", "task.jsonl")):
            object.__setattr__(self, name, self.root / rel)

    def moved_columns(self) -> dict[str, list[int]]:
        return json.loads((self.root / "pair.json").read_text())["moved_columns"]


def is_complete(folder: Path, spec: PairSpec) -> bool:
    """Whether ``folder`` holds this spec's whole pair (its marker, written last, names the spec)."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == spec.to_json()


def default_root() -> Path:
    """Cache folder of synthetic pairs: ``$SURGERY_CACHE/synthetic`` (else the user cache)."""
    return cache_root() / "synthetic"


def ensure_pair(spec: PairSpec, root: str | Path | None = None) -> SyntheticPair:
    """The pair for ``spec`` under ``root`` (default :func:`default_root`), written only when missing."""
    folder = Path(root or default_root()) / spec.key()
    if is_complete(folder, spec):
        log.info("reusing %s", folder)
    else:
        write_pair(spec, folder)
    return SyntheticPair(folder)


def spec_for(
    preset: str | None = None,
    depth: int | None = None,
    hidden: int | None = None,
    intermediate: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    vocab: int | None = None,
    **rest: Any,
) -> PairSpec:
    """A spec from a preset (default "acceptance") with any size overridden."""
    shape = PRESETS[preset or "acceptance"]
    sizes: dict[str, Any] = dict(
        depth=depth, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads, vocab=vocab
    )
    shape = dataclasses.replace(shape, **{k: v for k, v in sizes.items() if v is not None})
    return PairSpec(shape=shape, **rest)


@dataclass(frozen=True)
class SyntheticRun:
    """What one run of this script writes."""

    preset: str = opt("acceptance", "Named shape; the size options below override it.", choices=tuple(PRESETS))
    depth: int | None = opt(None, "Decoder blocks.", low=1)
    hidden: int | None = opt(None, "Hidden size.", low=1)
    intermediate: int | None = opt(None, "MLP intermediate size.", low=1)
    heads: int | None = opt(None, "Attention heads.", low=1)
    kv_heads: int | None = opt(None, "Key/value heads.", low=1)
    vocab: int | None = opt(None, "Vocabulary size of the model (the tokenizer has at most this many tokens).", low=1)
    dtype: str = opt("float32", "Weight dtype.", choices=tuple(DTYPES))
    seed: int = opt(0, "Seed of weights, moved columns and calibration examples.")
    examples: int = opt(16, "Calibration examples in each JSONL file.", low=1)
    out: str | None = opt(None, "Pair folder (default: a folder named by the spec under $SURGERY_CACHE/synthetic).")


@click.command(help=__doc__)
@add_options(SyntheticRun)
def main(**kwargs: Any) -> None:
    """Write (or reuse) the pair and print its folder."""
    run = options_from(SyntheticRun, kwargs)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = spec_for(
        run.preset,
        run.depth,
        run.hidden,
        run.intermediate,
        run.heads,
        run.kv_heads,
        run.vocab,
        dtype=run.dtype,
        seed=run.seed,
        examples=run.examples,
    )
    if run.out is None:
        pair = ensure_pair(spec)
    elif is_complete(Path(run.out), spec):
        pair = SyntheticPair(Path(run.out))
    else:
        pair = SyntheticPair(write_pair(spec, run.out))
    print(pair.root)


if __name__ == "__main__":
    main()
