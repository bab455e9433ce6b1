"""Bi-encoder batches over `prep tokenize --recipe retrieval` output, equal to NeMo AutoModel's
`make_retrieval_dataset` + `BiEncoderCollator` on the same raw rows, with nothing tokenized at
train time.

    ds = RetrievalDataset("out/retr", negatives=4, q_max_len=64, p_max_len=256)
    item = ds[0]   # {"query": ids, "docs": [positive, negative 1, ...], "doc_ids": int64 [1+n]}
    batch = collate([ds[i] for i in range(8)], pad_token_id=0, pad_to_multiple_of=8)
    dl = ds.dataloader(batch_size=8, rank=r, world_size=w, seed=1234)

AutoModel's rules: the positive is `pos_doc[0]` (`pos_doc[epoch % len]` with
`cycle_positive_docs`); the n negatives are `neg_doc[i % len(neg_doc)]` for i < n. Truncation
keeps the first `q_max_len` / `p_max_len` tokens as HF tokenizers cut them (content cut, the
tokenizer's special tokens kept). `negative_sampling="random"` instead draws n of all the
negatives per query and epoch from `seed` (without repeats when there are enough).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loaders import manifest as manifest_mod
from loaders.dataloader import ResumableLoader, ResumableSampler
from loaders.formats.indexed import IndexedDataset
from loaders.formats.retrieval import NO_ID, Table, truncate

SAMPLING = ("first", "random")
UNBOUNDED = 2**62  # no truncation


def check_length(name: str, asked: int, special: int, stored: int | None, where: str = "the output") -> None:
    """A truncation length must leave room for content and not exceed what the output stores."""
    if asked <= special:
        raise ValueError(f"{name} {asked}: the tokenizer adds {special} special token(s) to every text")
    if stored is not None and asked > stored:
        raise ValueError(f"{name} {asked}: {where} stores at most {stored} tokens a text (--query-max-length / "
                         "--doc-max-length when it was made); ask for that many or fewer, or tokenize again")


class RetrievalDataset(torch.utils.data.Dataset):
    """`ds[i]`: query i with its positive and `negatives` hard negatives, as token id arrays."""

    def __init__(self, source: str | Path, negatives: int = 4, q_max_len: int | None = 512, p_max_len: int | None = 512,
                 negative_sampling: str = "first", seed: int = 0, cycle_positive_docs: bool = False):
        """`q_max_len` / `p_max_len` None: the texts as stored (a collator truncates them later)."""
        m = manifest_mod.load(source)
        if "retrieval" not in m or set(m["datasets"]) != {"queries", "documents"}:
            raise ValueError(f"{source}: not a retrieval output (prep tokenize --recipe retrieval); datasets {sorted(m['datasets'])}")
        if negative_sampling not in SAMPLING:
            raise ValueError(f"negative_sampling {negative_sampling!r}: expected one of {SAMPLING}")
        if negatives < 0:
            raise ValueError(f"negatives {negatives}: expected 0 or more")
        r = m["retrieval"]
        special = len(r["special_tokens"]["before"]) + len(r["special_tokens"]["after"])
        for name, asked, stored in (("q_max_len", q_max_len, r["query_max_length"]), ("p_max_len", p_max_len, r["doc_max_length"])):
            if asked is not None:
                check_length(name, asked, special, stored)
        self.manifest, self.root = m, Path(m["_dir"])
        self.queries = IndexedDataset(manifest_mod.dataset_prefixes(m, "queries")[0])
        self.documents = IndexedDataset(manifest_mod.dataset_prefixes(m, "documents")[0])
        self.table = Table(self.root)
        self.negatives = negatives
        self.q_max_len = UNBOUNDED if q_max_len is None else q_max_len
        self.p_max_len = UNBOUNDED if p_max_len is None else p_max_len
        self.negative_sampling, self.seed, self.cycle_positive_docs = negative_sampling, seed, cycle_positive_docs
        self.suffix = len(r["special_tokens"]["after"])
        self.epoch = 0
        if negatives:
            none = int((self.table.negative_counts() == 0).sum())
            if none:
                raise ValueError(f"{source}: {none:,} of {len(self.table):,} queries have no negatives, and {negatives} were "
                                 "asked for (as AutoModel, which refuses them too); ask for negatives=0, or give them negatives")
        # the tokenizer's pad token, else its EOS (what `tok.pad_token = tok.eos_token` gives AutoModel's collator)
        special_ids = m["tokenizer"]["special_ids"]
        self.pad_token_id = special_ids.get("pad", special_ids.get("eos"))

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """The epoch that picks the positive (cycle_positive_docs) and the random negatives."""
        self.epoch = epoch

    def document_rows(self, i: int) -> np.ndarray:
        """Rows of query i's positive then its negatives, in the documents dataset."""
        positives = self.table.positives_of(i)
        positive = positives[self.epoch % len(positives)] if self.cycle_positive_docs else positives[0]
        negatives = self.table.negatives_of(i)
        n = self.negatives
        if n == 0:
            chosen = negatives[:0]
        elif self.negative_sampling == "first":
            chosen = negatives[np.arange(n) % len(negatives)]
        else:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if len(negatives) >= n:
                chosen = negatives[rng.choice(len(negatives), n, replace=False)]
            else:
                chosen = negatives[np.resize(rng.permutation(len(negatives)), n)]
        return np.concatenate([[positive], chosen]).astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        rows = self.document_rows(i)
        query = truncate(self.queries[i], self.q_max_len, self.suffix)
        docs = [truncate(self.documents[int(d)], self.p_max_len, self.suffix).astype(np.int64) for d in rows]
        return {"query": query.astype(np.int64), "docs": docs, "doc_ids": np.asarray(self.table.document_ids[rows], np.int64)}

    def dataloader(self, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                   num_workers: int = 0, pad_token_id: int | None = None, pad_to_multiple_of: int | None = None,
                   padding_side: str = "right", device: str = "cpu", drop_last: bool = False) -> "RetrievalLoader":
        """Rank-sharded batches, shuffled per epoch from `seed`, with `state_dict()` for exact resume."""
        pad = self.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token: pass pad_token_id=")
        sampler = ResumableSampler(len(self), rank, world_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return RetrievalLoader(self, sampler, batch_size, num_workers=num_workers, device=device,
                               collate_fn=Collate(pad, pad_to_multiple_of, padding_side))


class RetrievalLoader(ResumableLoader):
    """A ResumableLoader that tells the dataset its epoch before each one (positives, negatives)."""

    def __iter__(self):
        self.dataset.set_epoch(self.state_dict()["epoch"])
        return super().__iter__()


class Collate:
    """`collate` with its options bound (a picklable collate_fn for DataLoader workers)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        self.pad_token_id, self.pad_to_multiple_of, self.padding_side = pad_token_id, pad_to_multiple_of, padding_side

    def __call__(self, batch: list[dict]) -> dict:
        return collate(batch, self.pad_token_id, self.pad_to_multiple_of, self.padding_side)


def _pad(sequences: list[np.ndarray], pad_token_id: int, multiple: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    width = -(-longest // multiple) * multiple if multiple else longest
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, span] = torch.from_numpy(np.asarray(s, np.int64))
        mask[row, span] = 1
    return ids, mask


def collate(batch: list[dict], pad_token_id: int, pad_to_multiple_of: int | None = None, padding_side: str = "right") -> dict:
    """AutoModel's BiEncoderCollator keys: `q_input_ids` / `q_attention_mask` [B, Lq], `d_input_ids`
    / `d_attention_mask` [B*(1+n), Ld] grouped by query with the positive first, `labels` zeros [B],
    and `passage_doc_ids` (int64) when every document has a corpus id."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side {padding_side!r}: expected 'right' or 'left'")
    q_ids, q_mask = _pad([item["query"] for item in batch], pad_token_id, pad_to_multiple_of, padding_side)
    docs = [doc for item in batch for doc in item["docs"]]
    d_ids, d_mask = _pad(docs, pad_token_id, pad_to_multiple_of, padding_side)
    out = {"q_input_ids": q_ids, "q_attention_mask": q_mask, "d_input_ids": d_ids, "d_attention_mask": d_mask,
           "labels": torch.zeros(len(batch), dtype=torch.long)}
    ids = np.concatenate([item["doc_ids"] for item in batch])
    if len(ids) and (ids != NO_ID).all():
        out["passage_doc_ids"] = torch.from_numpy(ids.astype(np.int64))
    return out
