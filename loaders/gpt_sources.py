"""What a GPT dataset is made of: manifests or prefixes resolved to shards, one prefix's samples
in one split (Megatron's mid-level GPTDataset), and the masks and position ids of a sample."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loaders import index_cache
from loaders import manifest as manifests
from loaders.formats.indexed import IndexedDataset, bin_path, idx_path
from loaders.megatron_index import SPLITS, gpt_indices, parse_split, split_documents, split_matrix


# Samples ------------------------------------------------------------------------------------

def masks_and_position_ids(tokens: torch.Tensor, eod_id: int, reset_position_ids: bool = False,
                           reset_attention_mask: bool = False, eod_mask_loss: bool = False,
                           create_attention_mask: bool = True):
    """Megatron's `_get_ltor_masks_and_position_ids`, without its loop over EODs:
    (attention_mask (1, n, n) bool with True = masked, or None; loss_mask float; position_ids long)."""
    n = tokens.numel()
    is_eod = tokens == eod_id
    loss_mask = torch.ones(n, dtype=torch.float)
    if eod_mask_loss:
        loss_mask[is_eod] = 0.0
    segment = torch.cumsum(is_eod, 0) - is_eod.long()  # EODs before each position
    position_ids = torch.arange(n, dtype=torch.long)
    if reset_position_ids:
        starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(is_eod).flatten() + 1])
        position_ids = position_ids - starts[segment]
    attention_mask = None
    if create_attention_mask:
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        if reset_attention_mask:
            allowed &= segment[:, None] == segment[None, :]
        attention_mask = ~allowed[None]
    return attention_mask, loss_mask, position_ids


def megatron_pad_id(tokenizer: dict | None) -> int:
    """Megatron's `MegatronDataset._pad_token_id`: the tokenizer's pad id unless it is missing or
    another special token's id, else -1 (which no data holds)."""
    special = dict((tokenizer or {}).get("special_ids") or {})
    pad = special.pop("pad", None)
    return -1 if pad is None or pad in special.values() else int(pad)


@dataclass(frozen=True)
class Options:
    """What changes the samples, with Megatron-Core's (and Megatron-LM's) defaults."""

    seq_length: int
    seed: int = 1234
    split: str = "969,30,1"
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    create_attention_mask: bool = True
    add_extra_token_to_sequence: bool = True
    drop_last_partial_validation_sequence: bool = True
    mid_level_dataset_surplus: float = 0.005


@dataclass(frozen=True)
class Shard:
    """One Megatron prefix and the checksum of its files."""

    prefix: str
    checksum: str


def resolve(paths, weights=None, key: str | None = None) -> tuple[list[Shard], list[float] | None, dict | None]:
    """The Megatron blend (prefixes, weights) for manifests, output folders or bare prefixes.

    A manifest's weight is shared among its shards in proportion to their tokens, as in the
    --data-path that `prep inspect` prints; without weights, the blend is weightless, as Megatron's
    --data-path with prefixes only. Also returns the tokenizer record the manifests agree on."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} datasets: give one weight per path")
    shards, blend, tokenizers = [], [], []
    for i, path in enumerate(paths):
        found = manifests.manifest_path(path)
        if found.exists():
            m = manifests.load(found)
            if m.get("format") not in (None, "megatron"):
                raise ValueError(f"{found}: a {m['format']} output; GPTDataset reads prep tokenize --format megatron")
            name = key or (next(iter(m["datasets"])) if len(m["datasets"]) == 1 else None)
            prefixes = manifests.dataset_prefixes(m, name)
            records = m["datasets"][name]["shards"]
            total = sum(r["tokens"] for r in records)
            for prefix, r in zip(prefixes, records):
                shards.append(Shard(prefix, r["idx"]["xxh3_128"] + r["bin"]["xxh3_128"]))
                blend.append(None if weights is None else weights[i] * (r["tokens"] / total))
            tokenizers.append(m["tokenizer"])
        elif idx_path(path).exists():
            digest = hashlib.blake2b(idx_path(path).read_bytes(), digest_size=16).hexdigest()
            shards.append(Shard(str(path), f"{digest}-{bin_path(path).stat().st_size}"))
            blend.append(None if weights is None else weights[i])
        else:
            raise FileNotFoundError(f"{path}: neither a prep output (manifest.json) nor a Megatron prefix (.idx/.bin)")
    same = ("sha256", "vocab_size", "eod_id", "special_ids")
    if any(any(t.get(k) != tokenizers[0].get(k) for k in same) for t in tokenizers):
        raise ValueError(f"{paths}: the manifests were made with different tokenizers; blend data of one tokenizer")
    return shards, None if weights is None else blend, tokenizers[0] if tokenizers else None


class _Source:
    """One prefix's samples in one split: Megatron's mid-level `GPTDataset`."""

    NAMES = ("document_index", "sample_index", "shuffle_index")

    def __init__(self, shard: Shard, split_index: int, num_samples: int | None, options: Options,
                 pad_id: int, cache_dir: Path | None):
        self.prefix = shard.prefix
        self.data = IndexedDataset(shard.prefix)
        documents = split_documents(split_matrix(parse_split(options.split))[split_index], len(self.data))
        if not len(documents):
            raise ValueError(f"{shard.prefix}: split {options.split!r} leaves the {SPLITS[split_index]} split no sequences: "
                             f"each prefix is split by itself, and this one's {len(self.data):,} document(s) are too few "
                             "for that share; make the shards larger or change the split")
        drop_last = split_index != 1 or options.drop_last_partial_validation_sequence
        self.extra = int(options.add_extra_token_to_sequence)
        self.length = options.seq_length + self.extra
        self.pad_id = pad_id
        self.key = index_cache.digest({"indices": "gpt/1", "data": shard.checksum, "seed": options.seed,
                            "seq_length": options.seq_length, "documents": [int(documents[0]), int(documents[-1]) + 1],
                            "num_samples": num_samples, "drop_last": drop_last, "extra": self.extra})
        self.stem = Path(cache_dir or Path(shard.prefix).parent / "cache") / f"gpt-{self.key}"
        self._indices = lambda: gpt_indices(self.data.sequence_lengths, documents, num_samples, options.seq_length,
                                            options.seed, drop_last, self.extra)

    def build(self) -> _Source:
        """Load the indices from the cache, or build and cache them (rank 0)."""
        self._open(self._indices)
        self._indices = None
        return self

    def _open(self, build=None):
        self.tokens = np.asarray(self.data.tokens)  # a plain view: np.memmap slices slowly
        self.document_index, self.sample_index, self.shuffle_index = index_cache.cached(self.stem, self.NAMES, build)

    def __getstate__(self):  # worker processes reopen the memory maps instead of copying them
        return {k: v for k, v in self.__dict__.items() if k not in ("data", "tokens", "_indices", *self.NAMES)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.data = IndexedDataset(self.prefix)
        self._open()

    def __len__(self) -> int:
        return len(self.sample_index) - 1

    def text(self, i: int) -> np.ndarray:
        """The seq_length + extra tokens of sample i, padded with pad_id where the data runs out
        (Megatron's `GPTDataset._query_document_sample_shuffle_indices`)."""
        return self.padded_text(i)[0]

    def padded_text(self, i: int) -> tuple[np.ndarray, bool]:
        """(`text(i)`, whether it holds pad_id)."""
        row = np.empty(self.length, np.int64)
        return row, self.fill(i, row)

    def fill(self, i: int, row: np.ndarray) -> bool:
        """Write `text(i)` into `row`; True if it holds pad_id (Megatron's test for padding).
        Scalar Python over the few documents of a sample: faster here than numpy's calls."""
        j = int(self.shuffle_index[i])
        first, start, last, stop = self.sample_index[j:j + 2].ravel().tolist()
        documents = self.document_index[first:last + 1]
        size, tokens = self.tokens.itemsize, self.tokens
        begins = self.data.sequence_pointers[documents].tolist()  # in bytes
        lengths = self.data.sequence_lengths[documents].tolist()
        lengths[-1] = stop + self.extra  # up to where the next sample starts, plus the extra token
        begins[0] += start * size
        lengths[0] -= start
        filled = sum(lengths)
        np.concatenate([tokens[b // size:b // size + n] for b, n in zip(begins, lengths)], out=row[:filled])
        if filled < self.length:
            row[filled:] = self.pad_id
            return True
        return self.pad_id >= 0 and bool((row == self.pad_id).any())
