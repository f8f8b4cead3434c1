"""Hidden states at the last prompt token, every block, one batched forward pass per model.

The probe asks whether a model "knows" a question is unanswerable *before* it says anything, so the
features are the residual stream at the last token of the rendered prompt (the token after which the
answer would start). Nothing is generated. Prompts are rendered with :func:`surgery.prompting.prompt_text`
so the probe sees exactly the text the model is evaluated on.

Batches are padded on either side. The last real token is found from the attention mask (not assumed
to be at ``-1``) and position ids are rebuilt from the mask, so left padding gives the same features as
an unpadded forward pass.

Chat templates put the same system prompt and role markers in front of every question (about half of
SmolLM2's prompt tokens), so that shared prefix is run once and its key/value cache is reused by every
batch. The features are the same as without sharing (up to float rounding; tested), at half the cost.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import SurgeryError
from ..progress import progress
from ..prompting import Message, encode_prompt

log = logging.getLogger(__name__)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` for token lists padded on ``side``.

    Position ids count real tokens only (0 at each sequence's first real token), which is what the
    model saw in training whatever the padding side.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if not len(s):
            raise ValueError("cannot take the last token of an empty prompt")
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask = 1) token in each row, for left or right padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)


def shared_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    if not token_ids:
        return 0
    first, n = token_ids[0], min(len(s) for s in token_ids) - 1
    for s in token_ids[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _sliding_window(model: Any) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(cfg, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def _prefix_cache(backbone: Any, prefix: Sequence[int]) -> Any:
    """The key/value cache of the shared prefix (batch of one), or None where the model has no usable one."""
    ids = torch.as_tensor([list(prefix)], dtype=torch.long, device=_device(backbone))
    try:
        out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    except (TypeError, ValueError, NotImplementedError) as exc:
        log.debug("no prefix cache (%s); running whole prompts", exc)
        return None
    cache = _returned_cache(out)
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def _cache_keyword(backbone: Any) -> str:
    """The forward's key/value-cache argument: transformers 5.x renamed ``past_key_values`` to ``cache``
    (the old name still works there, with a warning, until it is removed)."""
    try:
        params = inspect.signature(backbone.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: Any) -> Any:
    """The cache a forward returned: ``cache`` on transformers 5.x, ``past_key_values`` on 4.x."""
    for name in ("cache", "past_key_values"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def _device(model: Any) -> torch.device:
    """Where the model's weights are (its batches are built there); the CPU for anything without a device."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def _backbone(model: Any) -> Any:
    """The transformer without its LM head: the head's vocab-sized matmul is wasted work here."""
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, torch.nn.Module) and inner is not model else model


def num_blocks(model: Any) -> int:
    """How many transformer blocks the model has (one hidden state each, after the embeddings)."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None and hasattr(cfg, "get_text_config"):
        n = getattr(cfg.get_text_config(), "num_hidden_layers", None)
    if n is None:
        raise SurgeryError(f"Cannot tell how many blocks a {type(model).__name__} has (no num_hidden_layers).")
    return int(n)


def _block_outputs(
    backbone: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, prefix: Any, shared: int
) -> Any:
    """The hidden states of one padded batch, continuing from the shared-prefix cache when there is one."""
    if prefix is None:
        return backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True, use_cache=False
        ).hidden_states
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(len(ids))
    full_mask = torch.cat([torch.ones((len(ids), shared), dtype=mask.dtype, device=mask.device), mask], dim=1)
    return backbone(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions + shared,
        use_cache=True,
        output_hidden_states=True,
        **{_cache_keyword(backbone): cache},
    ).hidden_states


@torch.inference_mode()
def last_token_states(
    model: Any,
    token_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    padding_side: str = "right",
    share_prefix: bool = True,
    desc: str = "hidden states",
) -> np.ndarray:
    """Float32 array (items, blocks, hidden): the output of every block at each prompt's last token.

    Block ``k`` (1-based in reports) is ``hidden_states[k]``; the embedding output (``hidden_states[0]``)
    is dropped because the last prompt token is the same template token for every question, so it
    carries no information. Sequences are processed shortest-first to keep padding small, and the
    rows come back in input order. With ``share_prefix`` the tokens all sequences start with are run
    once and their cache reused (not for sliding-window models whose window a prompt would overflow).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(token_ids)
    if n == 0:
        raise ValueError("no prompts to run")
    blocks = num_blocks(model)
    backbone = _backbone(model)
    device = _device(model)
    order = sorted(range(n), key=lambda i: len(token_ids[i]))
    shared = shared_prefix_length(token_ids) if share_prefix else 0
    window = _sliding_window(model)
    if window is not None and max(len(s) for s in token_ids) > window:
        shared = 0  # a cache trimmed to the window would have to be kept in step with the mask
    prefix = _prefix_cache(backbone, token_ids[0][:shared]) if shared else None
    if prefix is None:
        shared = 0
    log.debug("shared prefix: %d tokens", shared)
    out = None
    starts = range(0, n, batch_size)
    for start in progress(starts, desc=desc, total=len(starts), unit="batch"):
        rows = order[start : start + batch_size]
        ids, mask, positions = pad_batch([token_ids[i][shared:] for i in rows], pad_id, padding_side)
        if device.type != "cpu":
            ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        states = _block_outputs(backbone, ids, mask, positions, prefix, shared)
        if states is None or len(states) != blocks + 1:
            got = "none" if states is None else len(states)
            raise SurgeryError(
                f"{type(model).__name__} returned {got} hidden states, expected {blocks + 1} "
                "(embeddings + one per block); this architecture is not supported by the probe."
            )
        last = last_token_index(mask)
        rows_at = torch.arange(len(rows), device=last.device)
        picked = torch.stack([h[rows_at, last] for h in states[1:]], dim=1)  # (b, L, d)
        if out is None:
            out = np.empty((n, blocks, picked.shape[-1]), dtype=np.float32)
        out[rows] = picked.float().cpu().numpy()
    if not np.isfinite(out).all():
        raise SurgeryError("The model produced non-finite hidden states (NaN/inf); check its weights and dtype.")
    return out


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str | Sequence[Message]], max_length: int = 1024
) -> list[list[int]]:
    """Token ids of each rendered prompt; over-long prompts keep their *end*, where the last token is."""
    encoded = []
    cut = 0
    for p in prompts:
        ids = encode_prompt(tokenizer, p)
        if len(ids) > max_length:
            ids = ids[-max_length:]
            cut += 1
        encoded.append(ids)
    if cut:
        log.warning("%d prompt(s) longer than %d tokens were cut from the left", cut, max_length)
    return encoded


def prompt_states(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[Message]],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
    max_length: int = 1024,
    share_prefix: bool = True,
    desc: str = "hidden states",
) -> np.ndarray:
    """:func:`last_token_states` for questions or conversations, rendered with the model's own template."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0  # any id works: padded positions are masked and never read
    ids = encode_prompts(tokenizer, prompts, max_length)
    return last_token_states(
        model,
        ids,
        pad_id=pad_id,
        batch_size=batch_size,
        padding_side=padding_side,
        share_prefix=share_prefix,
        desc=desc,
    )
