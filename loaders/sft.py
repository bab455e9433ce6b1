"""SFT datasets over `prep tokenize --recipe chat|instruction|completion` output.

Samples hold `input_ids`, `labels` and `loss_mask` already shifted for causal LM training:
position t predicts token t+1, `labels[t]` is that token where the mask trains it and -100
elsewhere, and the last position of every sample predicts nothing. Packed datasets (`--pack`)
give one pack per item, with `position_ids` restarting at each sample and `cu_seqlens`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loaders import manifest as manifest_mod
from loaders.dataloader import ResumableLoader, ResumableSampler
from loaders.formats.indexed import IndexedDataset

IGNORE = -100


def shifted_labels(ids: np.ndarray, mask: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, loss_mask) for next-token prediction; `boundaries` are sample ends (exclusive),
    where a position must not predict the next sample's first token."""
    labels = np.full(len(ids), IGNORE, np.int64)
    loss = np.zeros(len(ids), np.uint8)
    labels[:-1] = np.where(mask[1:] > 0, ids[1:], IGNORE)
    loss[:-1] = mask[1:]
    last = boundaries - 1
    labels[last], loss[last] = IGNORE, 0
    return labels, loss


class SFTDataset(torch.utils.data.Dataset):
    """`ds[i]` is sample i, or pack i when the output was packed."""

    def __init__(self, source: str | Path):
        m = manifest_mod.load(source)
        if set(m["datasets"]) != {"tokens", "loss_mask"}:
            raise ValueError(f"{source}: not an SFT output (datasets {sorted(m['datasets'])})")
        self.manifest = m
        self.tokens = [IndexedDataset(p) for p in manifest_mod.dataset_prefixes(m, "tokens")]
        self.masks = [IndexedDataset(p) for p in manifest_mod.dataset_prefixes(m, "loss_mask")]
        self.packed = "packing" in m["stats"]
        self.pad_id = m["tokenizer"]["special_ids"].get("pad", m["tokenizer"]["eod_id"]) or 0
        # items are documents (packs) when packed, sequences (samples) otherwise
        counts = [d.num_documents if self.packed else len(d) for d in self.tokens]
        self._shard_starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def __getitem__(self, i: int) -> dict:
        shard = int(np.searchsorted(self._shard_starts, i, "right") - 1)
        local = i - int(self._shard_starts[shard])
        tokens, masks = self.tokens[shard], self.masks[shard]
        if self.packed:
            ids, mask = tokens.document(local), masks.document(local)
            first, last = int(tokens.document_indices[local]), int(tokens.document_indices[local + 1])
            seq_lens = tokens.sequence_lengths[first:last].astype(np.int64)
        else:
            ids, mask = tokens[local], masks[local]
            seq_lens = np.array([len(ids)], np.int64)
        ids = np.asarray(ids, np.int64)
        boundaries = np.cumsum(seq_lens)
        labels, loss = shifted_labels(ids, np.asarray(mask), boundaries)
        position_ids = np.arange(len(ids)) - np.repeat(boundaries - seq_lens, seq_lens)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss), "position_ids": torch.from_numpy(position_ids),
                "seq_lens": torch.from_numpy(seq_lens)}

    def collate(self, pad_to_multiple_of: int = 1):
        return lambda batch: collate(batch, self.pad_id, pad_to_multiple_of)

    def dataloader(self, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                   num_workers: int = 0, pad_to_multiple_of: int = 1, device: str = "cpu",
                   drop_last: bool = False) -> ResumableLoader:
        """As `NanoGPTDataset.dataloader`: padding by wrapping, or `drop_last`."""
        sampler = ResumableSampler(len(self), rank, world_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return ResumableLoader(self, sampler, batch_size, num_workers=num_workers,
                               collate_fn=self.collate(pad_to_multiple_of), device=device)


def collate(batch: list[dict], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Right-pad to the longest item (rounded up to `pad_to_multiple_of`). Padding has labels
    -100, loss_mask 0, attention_mask 0 and is its own segment in `cu_seqlens`, which indexes
    the flattened [B * T] batch (int32, for variable-length attention kernels)."""
    longest = max(len(item["input_ids"]) for item in batch)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    out = {"input_ids": torch.full((len(batch), width), pad_id, dtype=torch.long),
           "labels": torch.full((len(batch), width), IGNORE, dtype=torch.long),
           "loss_mask": torch.zeros((len(batch), width), dtype=torch.uint8),
           "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
           "position_ids": torch.zeros((len(batch), width), dtype=torch.long)}
    segments = []
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        for key in ("input_ids", "labels", "loss_mask", "position_ids"):
            out[key][row, :n] = item[key]
        out["attention_mask"][row, :n] = 1
        out["position_ids"][row, n:] = torch.arange(width - n)
        segments += item["seq_lens"].tolist() + ([width - n] if width > n else [])
    out["cu_seqlens"] = torch.tensor(np.concatenate([[0], np.cumsum(segments)]), dtype=torch.int32)
    out["seq_lens"] = [item["seq_lens"] for item in batch]
    return out
