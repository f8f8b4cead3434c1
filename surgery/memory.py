"""Giving freed memory back to the operating system between blocks (glibc only; elsewhere a no-op).

A streamed run allocates and frees the same large tensors once per block. glibc serves allocations
under its mmap threshold from the heap, and that threshold rises with every large block freed (up to
32 MB), so block-sized tensors end up on a heap that fragments and is not returned: resident memory
then creeps up with the number of blocks although nothing is kept. A fixed threshold sends every large
tensor to its own mapping (returned on free), and ``malloc_trim`` returns what the heap no longer uses.

Measured (``benchmarks/scale_memory.py``, docs/scale.md): at 8 MB the depth-32 synthetic Llama peaks no
higher than the depth-8 one (128 MB higher without it); at 1 MB the same, but the SmolLM2 patch took 29%
longer (every activation-sized tensor mapped and faulted in anew), so 8 MB it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_THRESHOLD = 8 << 20  # tensors of 8 MB and more get their own mapping


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _libc()


def map_large_allocations() -> None:
    """Fix glibc's mmap threshold at 8 MB (once per process; harmless to repeat)."""
    if _LIBC is not None and not _LIBC.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD):
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")


def release_freed_memory() -> None:
    """Return the heap's free pages to the operating system (after a block is done)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
