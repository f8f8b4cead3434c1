"""How a question or a conversation becomes token ids, shared by calibration, training and evaluation.

One place decides the prompt format so that the patch is computed on exactly the text the model is
later evaluated and deployed on. Chat templates are rendered to text and tokenized with
``add_special_tokens=False`` (the template already carries BOS/EOS where the family wants them;
GGUF-converted tokenizers on transformers 4.57 would otherwise add a second BOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict  # {"role": str, "content": str}


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer renders chats itself (else the plain Question/Answer format is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A bare question as a one-turn user conversation; a conversation as a copy."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(tokenizer: Any, prompt: str | Sequence[Message]) -> str:
    """The text the model sees before it starts to answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    bos = tokenizer.bos_token or ""
    return f"{bos}Question: {prompt}\nAnswer:"


def encode_prompt(tokenizer: Any, prompt: str | Sequence[Message]) -> list[int]:
    """The prompt's token ids, exactly as evaluation and deployment will feed them."""
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def _end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Tokens that close an assistant turn, so training teaches the model to stop."""
    if has_chat_template(tokenizer):
        probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False
        )
        tail = probe.split("y")[-1]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        # keep up to and including the first special token (e.g. <|im_end|>, <end_of_turn>)
        special = set(tokenizer.all_special_ids)
        for i, t in enumerate(ids):
            if t in special:
                return ids[: i + 1]
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode_example(tokenizer: Any, prompt: str | Sequence[Message], response: str) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) for a prompt/response pair: loss on the response only."""
    p = encode_prompt(tokenizer, prompt)
    lead = "" if has_chat_template(tokenizer) else " "
    r = tokenizer(lead + response, add_special_tokens=False)["input_ids"] + _end_of_turn_ids(tokenizer)
    return p + r, [-100] * len(p) + r
