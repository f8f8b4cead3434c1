"""Gemma's tokenizer rebuilt from GGUF fields: a SentencePiece BPE model, not transformers 4.57's Unigram.

The fast tests use a hand-made vocabulary laid out like Gemma 3's GGUF (control pieces first,
user-defined newline/space runs stored with spaces and score -1000, 256 byte pieces, then normal
pieces scored ``-rank``). The slow test converts the real PyPI package when it is installed.
"""

from __future__ import annotations

import importlib.util

import pytest

from surgery.errors import SurgeryError
from surgery.pair import gguf_gemma as GG

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
USER = ["\n", "\n\n", "  ", "   "]
BYTES = [f"<0x{i:02X}>" for i in range(256)]
# In rank order. "ab" outranks "▁a" and "bc", so "▁abc" never reaches the piece "▁abc":
# BPE gives ▁ ab c where Unigram or greedy longest-match would give ▁abc. "▁b" would take the last
# space of "a  b" if user-defined space runs were not matched atomically.
NORMAL = [
    "ab",
    "▁a",
    "bc",
    "▁b",
    "▁abc",
    "he",
    "▁t",
    "▁the",
    "at",
    "▁c",
    "▁cat",
    "ca",
    "in",
    "▁in",
    "▁",
    "a",
    "b",
    "c",
    "e",
    "h",
    "t",
    "i",
    "n",
    "\t",
    "x",
    "1",
    "2",
]


def synthetic_vocab(**overrides) -> GG.GGUFVocab:
    tokens = CONTROL + USER + BYTES + NORMAL
    types = [GG.CONTROL] * len(CONTROL) + [GG.USER_DEFINED] * len(USER) + [GG.BYTE] * 256 + [GG.NORMAL] * len(NORMAL)
    scores = [-1000.0] * (len(CONTROL) + len(USER)) + [0.0] * 256 + [-float(r) for r in range(len(NORMAL))]
    fields = {
        "tokens": tokens,
        "scores": scores,
        "token_types": types,
        "bos_id": 2,
        "eos_id": 1,
        "unk_id": 3,
        "pad_id": 0,
    }
    fields.update(overrides)
    return GG.GGUFVocab(**fields)


@pytest.fixture(scope="module")
def tok():
    return GG.gemma_fast_tokenizer(synthetic_vocab())


def pieces(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_sentencepiece_scores_are_restored():
    got = dict(GG.sentencepiece_pieces(synthetic_vocab()))
    assert got["<start_of_turn>"] == 0.0 and got["\n"] == 0.0 and got["  "] == 0.0  # not GGUF's -1000
    assert got["ab"] == 0.0 and got["▁a"] == -1.0
    no_tab = synthetic_vocab(tokens=[t if t != "\t" else "q" for t in CONTROL + USER + BYTES + NORMAL])
    assert ("\t", 0.0) == GG.sentencepiece_pieces(no_tab)[len(CONTROL) + len(USER) + 9]  # <0x09> stands in


def test_merges_match_transformers_generate_merges():
    from transformers.convert_slow_tokenizer import generate_merges

    sp = GG.sentencepiece_pieces(synthetic_vocab())
    ids = {p: i for i, (p, _) in enumerate(sp)}
    merges = GG.bpe_merges_from_scores(sp)
    assert merges == generate_merges(ids, sp)
    assert merges.index(("a", "b")) < merges.index(("▁", "a")) < merges.index(("b", "c"))


def test_encoding_follows_bpe_merge_order_not_longest_match(tok):
    assert pieces(tok, " abc") == ["▁", "ab", "c"]
    assert pieces(tok, "the cat") == ["t", "he", "▁cat"]
    assert pieces(tok, " the") == ["▁the"]
    assert pieces(tok, "a  b") == ["a", "  ", "b"]  # user-defined space runs are atomic, as in SentencePiece
    assert pieces(tok, "a   b") == ["a", "   ", "b"]
    assert pieces(tok, "in\n\nx\t1") == ["in", "\n\n", "x", "\t", "1"]


def test_byte_fallback_and_round_trip(tok):
    assert pieces(tok, "é") == ["<0xC3>", "<0xA9>"]
    for text in ["the cat", "é ü 你好 🤗", "  leading", "trailing  ", "a\n\n\tb", "x = 12 + 21", "\u00a0nbsp"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == 2
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_and_chat_template(tok):
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<bos>", "<eos>", "<unk>", "<pad>")
    assert tok("the")["input_ids"][0] == tok.bos_token_id and tok("the")["input_ids"][-1] != tok.eos_token_id
    text = tok.apply_chat_template(
        [{"role": "user", "content": " the cat "}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos><start_of_turn>user\nthe cat<end_of_turn>\n<start_of_turn>model\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    sot, eot = tok.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
    assert ids.count(sot) == 2 and ids.count(eot) == 1 and ids[0] == tok.bos_token_id
    assert {sot, eot} <= set(tok.all_special_ids)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nthe cat\nmodel\n"


def test_prompting_ends_assistant_turns_with_end_of_turn(tok):
    from surgery.prompting import encode_example

    ids, labels = encode_example(tok, "the cat", "abc")
    answer = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.convert_ids_to_tokens(answer)[-1] == "<end_of_turn>"


def test_stored_merges_are_used_when_present():
    vocab = synthetic_vocab(merges=["b c", "▁ a"])
    t = GG.gemma_fast_tokenizer(vocab)
    assert pieces(t, " abc") == ["▁a", "bc"]


def test_reads_the_fields_from_a_gguf_file(tmp_path):
    import gguf

    v = synthetic_vocab()
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(list(v.tokens))
    w.add_token_scores(list(v.scores))
    w.add_token_types(list(v.token_types))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = GG.read_gguf_vocab(path)
    assert list(got.tokens) == list(v.tokens) and list(got.scores) == list(v.scores)
    assert list(got.token_types) == list(v.token_types) and got.merges is None
    assert (got.bos_id, got.eos_id, got.unk_id, got.pad_id, got.add_bos, got.add_eos) == (2, 1, 3, 0, True, False)


def test_non_sentencepiece_gguf_is_a_user_error(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SurgeryError, match="SentencePiece"):
        GG.read_gguf_vocab(path)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(GG.PACKAGE) is None, reason=f"{GG.REQUIREMENT} is not installed")
def test_real_gemma3_converts_with_a_correct_tokenizer():
    """Uses (or builds, about 2-3 min) the cached folder that the Gemma pair is trained from."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgery.prompting import encode_prompt

    torch.set_num_threads(1)
    out = GG.ensure_gemma3()
    assert json.loads((out / "SOURCE.json").read_text())["tokenizer"] == GG.TOKENIZER_MARK
    assert not list(out.rglob("*.gguf")) and not (out / "tokenizer.model").exists()
    tok = AutoTokenizer.from_pretrained(str(out))
    # ids published for google/gemma-3-1b-it's tokenizer (the same vocabulary); transformers' own
    # GGUF conversion gives [2, 9259, 649, 504, 671] ("▁W", "or", "ld") for the first
    assert tok("Hello World")["input_ids"] == [2, 9259, 4109]
    assert tok("Hello, World!")["input_ids"] == [2, 9259, 236764, 4109, 236888]
    assert pieces(tok, "The capital of France is") == ["The", "▁capital", "▁of", "▁France", "▁is"]
    assert pieces(tok, "x    = 1") == ["x", "    ", "=", "▁", "1"]
    for text in [
        "naïve café 東京 🤗",
        "x    = [1, 22, 333]\n\tif x:\n\t\treturn None",
        "  two  spaces  ",
        "<code>a</code>",
    ]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    chat = encode_prompt(tok, "Hi")
    assert chat[:4] == [2, 105, 2364, 107] and chat[-3:] == [105, 4368, 107]  # <bos><start_of_turn>user\n ... model\n
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert model.config.model_type == "gemma3_text" and 106 in model.generation_config.eos_token_id
    ids = tok("The capital of France is the city of", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids["input_ids"].shape[1] :])
