"""NanoGPT token shards, as modded-nanogpt, llm.c and NeMo AutoModel's NanogptDataset read them.

    int32[256] header: magic, version (1), token count, bytes per token
    tokens (uint16, or uint32 when the header says 4 bytes)

Current header: magic 278895051, bytes per token 2 or 4. Legacy header (modded-nanogpt's and
llm.c's fineweb.py): magic 20240520, uint16 only, header[3] unused (0). Sidecar `x.bos.idx`
beside `x.bin`: raw int32 token indices (0 = first token after the header) of every BOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC = 278895051
LEGACY_MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKENS = 2**31 - 1  # token counts and BOS indices are int32


def token_dtype(vocab_size: int, legacy: bool = False) -> np.dtype:
    """uint16 when every id fits, else uint32 (the legacy header allows uint16 only)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if legacy:
        raise ValueError(f"the legacy NanoGPT header holds uint16 tokens only; this vocabulary has {vocab_size:,} ids")
    return np.dtype(np.uint32)


def header(count: int, dtype, legacy: bool = False) -> bytes:
    values = np.zeros(HEADER_INTS, "<i4")
    values[:3] = (LEGACY_MAGIC if legacy else MAGIC), VERSION, count
    values[3] = 0 if legacy else np.dtype(dtype).itemsize
    return values.tobytes()


def bos_index_path(bin_path: str | Path) -> Path:
    return Path(bin_path).with_suffix(".bos.idx")


def mask_path(bin_path: str | Path) -> Path:
    return Path(bin_path).with_suffix(".mask")


def read_mask(path: str | Path) -> np.ndarray:
    """The loss mask sidecar of shard `path`, memory-mapped (read-only)."""
    return np.memmap(mask_path(path), dtype=np.uint8, mode="r")


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of a shard, memory-mapped (read-only)."""
    head = np.fromfile(path, "<i4", HEADER_INTS)
    if head[0] not in (MAGIC, LEGACY_MAGIC) or head[1] != VERSION:
        raise ValueError(f"{path}: not a NanoGPT shard (magic {head[0]}, version {head[1]})")
    dtype = np.uint16 if head[0] == LEGACY_MAGIC or head[3] == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(int(head[2]),))


def read_bos_index(path: str | Path) -> np.ndarray:
    return np.fromfile(bos_index_path(path), "<i4")
