"""NanoGPT shards as a map-style dataset with AutoModel's sample semantics and a known length.

Samples are the windows NeMo AutoModel's `NanogptDataset` yields for each shard: seq_len+1
tokens from a start position; the next start is the window's end, or with `align_to_bos` the
first BOS at or after it (the shard's first window also starts at its first BOS). Unlike the
streaming reader, every window is listed up front, so ranks and DataLoader workers split them
without duplicates and an epoch has a known length. SFT shards (with a `.mask` sidecar) give
labels of -100 where the next token is not trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loaders import manifest as manifest_mod
from loaders.dataloader import ResumableLoader, ResumableSampler
from loaders.formats import nanogpt


def window_starts(n_tokens: int, seq_len: int, bos_positions: np.ndarray | None = None) -> np.ndarray:
    """Start positions of AutoModel's windows over one shard (its `_process_file_tokens` loop)."""
    span = seq_len + 1
    if bos_positions is None:
        return np.arange(0, n_tokens - span + 1, span, dtype=np.int64)
    starts, pos = [], 0
    bos = np.asarray(bos_positions, np.int64)
    i = int(np.searchsorted(bos, pos))
    while i < len(bos):
        pos = int(bos[i])
        if pos + span > n_tokens:
            break
        starts.append(pos)
        i = int(np.searchsorted(bos, pos + span))
    return np.array(starts, np.int64)


class NanoGPTDataset(torch.utils.data.Dataset):
    """`ds[i]` -> {"input_ids": int64[seq_len], "labels": int64[seq_len]}."""

    def __init__(self, source: str | Path | list, seq_len: int, align_to_bos: bool = False, key: str | None = None,
                 bos_token: int | None = None):
        """`source`: a prep output (its manifest), or a list of shard files; `key`: the dataset of
        an output with several (default: its only one); `bos_token` names BOS for shards without a
        `.bos.idx` (found by a scan, as AutoModel's reader falls back to)."""
        self.seq_len = seq_len
        if isinstance(source, (list, tuple)):
            self.files, bos_id = [str(p) for p in source], bos_token
        else:
            m = manifest_mod.load(source)
            if m["format"] != "nanogpt":
                raise ValueError(f"{source}: a {m['format']} dataset, not nanogpt")
            if key is None and len(m["datasets"]) > 1:
                raise ValueError(f"{source}: several datasets ({', '.join(m['datasets'])}); pass key=")
            key = key or next(iter(m["datasets"]))
            self.files = [str(Path(m["_dir"]) / s["path"]) for s in m["datasets"][key]["shards"]]
            bos_id = m["tokenizer"]["bos_id"] if m["config"]["bos"] else None
        if align_to_bos and bos_id is None and not isinstance(source, (list, tuple)):
            raise ValueError("align_to_bos needs shards written with BOS (prep tokenize --format nanogpt --bos)")
        self.shards = [nanogpt.read_shard(f) for f in self.files]
        masked = [nanogpt.mask_path(f).exists() for f in self.files]
        if any(masked) and not all(masked):
            raise ValueError(f"{self.files[masked.index(False)]}: no {nanogpt.mask_path(self.files[masked.index(False)]).name} "
                             "beside it, unlike the other shards")
        self.masks = [nanogpt.read_mask(f) for f in self.files] if any(masked) else None
        starts = [window_starts(len(t), seq_len, self._bos_positions(f, t, bos_id) if align_to_bos else None)
                  for f, t in zip(self.files, self.shards)]
        self.shard_of = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(starts)] or [np.zeros(0, np.int32)])
        self.starts = np.concatenate(starts or [np.zeros(0, np.int64)])

    @staticmethod
    def _bos_positions(path: str, tokens: np.ndarray, bos_id: int | None) -> np.ndarray:
        if nanogpt.bos_index_path(path).exists():
            return nanogpt.read_bos_index(path)
        if bos_id is None:
            raise ValueError(f"{path}: no {nanogpt.bos_index_path(path).name} beside it; pass bos_token to find BOS by a scan")
        return np.flatnonzero(np.asarray(tokens) == bos_id).astype(np.int32)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        start = int(self.starts[i])
        shard = self.shard_of[i]
        window = torch.from_numpy(np.asarray(self.shards[shard][start:start + self.seq_len + 1], np.int64))
        labels = window[1:]
        if self.masks is not None:  # the label of position t is token t+1: trained when that token is
            trained = torch.from_numpy(np.asarray(self.masks[shard][start + 1:start + self.seq_len + 1], np.bool_))
            labels = torch.where(trained, labels, -100)
        return {"input_ids": window[:-1], "labels": labels}

    def dataloader(self, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                   num_workers: int = 0, device: str = "cpu", drop_last: bool = False) -> ResumableLoader:
        """This rank's batches of a seeded permutation per epoch. Ranks see disjoint samples; to
        give every rank as many, the last round is padded by wrapping to the first samples, or
        with `drop_last` cut to a multiple of `world_size` (no sample seen twice)."""
        sampler = ResumableSampler(len(self), rank, world_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return ResumableLoader(self, sampler, batch_size, num_workers=num_workers, device=device)
