"""NanoGPT shards: the unit parts' token stream cut into shards of a fixed token count.

Each shard's header carries its final token count before the file gets its name; the BOS
index is every position holding the BOS id, as NeMo AutoModel's own processor writes it. SFT
outputs cut their `loss_mask` parts at the same token positions into each shard's `.mask` sidecar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loaders.formats import nanogpt
from prep.pipeline.durable import fsync_dir
from prep.pipeline.units import Unit
from prep.writers.megatron import _copy_tokens, _write_atomic, length_histogram, read_part


def shard_name(key: str, number: int) -> str:
    return f"{key}_{number:06d}"


def finalize_key(workdir: Path, out: Path, units: list[Unit], key: str, dtype, shard_tokens: int | None,
                 bos_id: int | None, legacy: bool, mask_key: str | None = None, part_header: int = 0) -> dict:
    """Write the shards of `key` (and with `mask_key`, each shard's mask sidecar from that key's
    parts); returns the manifest entry for this dataset."""
    dtype = np.dtype(dtype)
    stems = [workdir / "parts" / f"{u.id}.{key}" for u in units]
    mask_parts = [workdir / "parts" / f"{u.id}.{mask_key}.bin" for u in units] if mask_key else None
    parts = [read_part(s) for s in stems]
    part_tokens = np.array([lengths.sum(dtype=np.int64) for lengths, _ in parts], np.int64)
    lengths = np.concatenate([lengths for lengths, _ in parts] or [np.zeros(0, np.int32)])
    documents = sum(len(documents) for _, documents in parts)
    total = int(part_tokens.sum())
    size = min(shard_tokens or 100_000_000, nanogpt.MAX_TOKENS)
    shards = []
    for number, start in enumerate(range(0, max(total, 1), size)):
        stop = min(start + size, total)
        name = shard_name(key, number)
        bos_positions: list[np.ndarray] = []

        def write_bin(f, hasher, start=start, stop=stop):
            block = nanogpt.header(stop - start, dtype, legacy)
            f.write(block)
            hasher.update(block)
            _copy_tokens([Path(f"{s}.bin") for s in stems], part_tokens, start, stop, dtype.itemsize, f, hasher, part_header,
                         _BosScanner(dtype, bos_id, bos_positions).observe)

        bin_bytes, bin_hash = _write_atomic(out / f"{name}.bin", write_bin)
        entry = {"path": f"{name}.bin", "tokens": stop - start, "bin": {"path": f"{name}.bin", "bytes": bin_bytes, "xxh3_128": bin_hash}}
        if bos_id is not None:
            positions = np.concatenate(bos_positions or [np.zeros(0, np.int64)]).astype("<i4")
            idx_bytes, idx_hash = _write_atomic(nanogpt.bos_index_path(out / f"{name}.bin"),
                                                lambda f, h: (f.write(positions.tobytes()), h.update(positions.tobytes())))
            entry.update(bos=len(positions), bos_idx={"path": f"{name}.bos.idx", "bytes": idx_bytes, "xxh3_128": idx_hash})
        if mask_parts:
            mask_bytes, mask_hash = _write_atomic(nanogpt.mask_path(out / f"{name}.bin"), lambda f, h, start=start, stop=stop:
                                                  _copy_tokens(mask_parts, part_tokens, start, stop, 1, f, h))
            entry["mask"] = {"path": f"{name}.mask", "bytes": mask_bytes, "xxh3_128": mask_hash}
        shards.append(entry)
    fsync_dir(out)
    return {"dtype": dtype.name, "header": "legacy" if legacy else "current", "documents": documents,
            "tokens": total, "shard_tokens": size, "shards": shards, "length_histogram": length_histogram(lengths)}


class _BosScanner:
    """Records the token index of every BOS in the blocks of a shard it is shown, in order."""

    def __init__(self, dtype: np.dtype, bos_id: int | None, positions: list):
        self.dtype, self.bos_id, self.positions, self.seen = dtype, bos_id, positions, 0

    def observe(self, block: bytes) -> None:
        if self.bos_id is not None:
            tokens = np.frombuffer(block, self.dtype.newbyteorder("<"))
            self.positions.append(np.flatnonzero(tokens == self.bos_id) + self.seen)
        self.seen += len(block) // self.dtype.itemsize
