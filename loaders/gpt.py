"""GPT pretraining samples from Megatron indexed datasets, in Megatron-Core 0.16.1's order.

`GPTDataset` gives, sample for sample, what Megatron-Core's `GPTDataset` (one prefix, no
weights) or `BlendedDataset` (several prefixes, or weights) give for the same files, seed,
sequence length, split and sample count. Its indices come from the numpy functions below, each
named after the Megatron code it reproduces, and are cached as `.npy` files whose names hash
everything they depend on. `GPTDataset.dataloader` shards batches over ranks the way Megatron's
pretraining sampler does, and the dataset's `state_dict` resumes it mid-pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loaders import manifest as manifests
from loaders.dataloader import SharedBatches
from loaders.formats.indexed import IndexedDataset, bin_path, idx_path

SPLITS = ("train", "valid", "test")
CACHE_WAIT_S = 3600  # how long ranks other than 0 wait for rank 0's index files


# Splits -------------------------------------------------------------------------------------

def normalize(weights) -> list[float]:
    """Megatron's `datasets.utils.normalize`: weights / sum, in float64."""
    w = np.array(weights, dtype=np.float64)
    return (w / np.sum(w)).tolist()


def parse_split(split: str) -> list[float]:
    """Megatron's `parse_and_normalize_split`: "99,1,0" -> [0.99, 0.01, 0.0]."""
    vector = [float(x) for x in re.findall(r"[.0-9]+", split)]
    vector += [0.0] * (3 - len(vector))
    if len(vector) != 3 or sum(vector) <= 0:
        raise ValueError(f"split {split!r}: give up to three non-negative weights, e.g. '99,1,0'")
    return normalize(vector)


def split_matrix(vector: list[float]) -> list[tuple[float, float] | None]:
    """Megatron's `convert_split_vector_to_split_matrix` (one vector): [begin, end) per split, None if empty."""
    edges = [0]
    for x in vector:
        edges.append(edges[-1] + x)
    return [(a, b) if b > a else None for a, b in zip(edges, edges[1:])]


def split_documents(bounds: tuple[float, float], num_sequences: int) -> np.ndarray:
    """The sequences of a split, as `BlendedMegatronDatasetBuilder._build_megatron_dataset_splits` picks them."""
    begin, end = (int(round(b * float(num_sequences))) for b in bounds)
    return np.arange(begin, end, dtype=np.int32)


# GPT indices --------------------------------------------------------------------------------

def num_epochs(tokens_per_epoch: int, num_samples: int | None, seq_length: int, extra: int) -> int:
    """Megatron's `GPTDataset._get_num_epochs`: epochs whose tokens cover num_samples (1 when None)."""
    if num_samples is None:
        return 1
    return max(1, -(-(num_samples * seq_length + extra) // tokens_per_epoch))


def document_index(documents: np.ndarray, epochs: int, rng: np.random.RandomState,
                   separate_final_epoch: bool) -> np.ndarray:
    """Megatron's `_build_document_index`: the documents once per epoch (int32), shuffled;
    the final epoch shuffled on its own when separate."""
    if separate_final_epoch and epochs > 1:
        return np.concatenate([document_index(documents, epochs - 1, rng, False),
                               document_index(documents, 1, rng, False)])
    index = np.tile(documents, epochs).astype(np.int32)
    rng.shuffle(index)
    return index


def sample_index(lengths: np.ndarray, documents: np.ndarray, seq_length: int, epochs: int,
                 tokens_per_epoch: int, drop_last: bool = True, extra: int = 1) -> np.ndarray:
    """Megatron's `helpers.build_sample_idx`, vectorised: row s is (position in `documents`,
    token offset) where sample s starts, row n where sample n-1 ends; int32 unless too big."""
    n = _sample_count(epochs * tokens_per_epoch, seq_length, drop_last, extra)
    big = max(len(documents), int(lengths.max())) > np.iinfo(np.int32).max
    sizes = np.take(np.array(lengths), documents)  # a copy first: one sequential read, then random access in memory
    ends = sizes.astype(np.int64)
    np.cumsum(ends, out=ends)
    # Boundary s (token s * seq_length) is named by the document holding that token (extra=1) or
    # the token before it (extra=0): document j names boundaries 1..count[j] not named before it.
    count = ends - extra
    count //= seq_length
    np.clip(count, 0, n, out=count)
    steps = np.empty_like(count)
    steps[0] = count[0]
    np.subtract(count[1:], count[:-1], out=steps[1:])
    covered = int(count[-1])  # boundaries inside the data; any after them: the helper stops at its end
    index = np.empty((n + 1, 2), np.int64 if big else np.int32)
    index[0] = 0
    position = np.repeat(np.arange(len(documents), dtype=index.dtype), steps)
    index[1:covered + 1, 0] = position
    index[covered + 1:, 0] = len(documents) - 1
    offset = np.arange(seq_length, (covered + 1) * seq_length, seq_length, dtype=np.int64)
    offset -= (ends - sizes)[position]  # minus where the document starts
    index[1:covered + 1, 1] = offset
    index[covered + 1:, 1] = sizes[-1] - extra
    return index


def _sample_count(total: int, seq_length: int, drop_last: bool, extra: int) -> int:
    """The samples `sample_index` finds in `total` tokens."""
    if drop_last:
        return (total - extra) // seq_length
    return int(np.ceil(np.float32(total - extra) / np.float32(seq_length)))  # the helper divides in float32


def shuffle_index(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Megatron's `_build_shuffle_index`: [0, num_samples) shuffled, then [num_samples, total_size)
    shuffled apart; uint32 unless too big."""
    dtype = np.int64 if total_size >= np.iinfo(np.uint32).max - 1 else np.uint32
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def gpt_indices(lengths: np.ndarray, documents: np.ndarray, num_samples: int | None, seq_length: int,
                seed: int, drop_last: bool = True, extra: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Megatron's `GPTDataset._build_document_sample_shuffle_indices`: the document, sample and
    shuffle index of one split."""
    tokens = int(np.sum(lengths[documents]))
    if tokens <= extra:
        raise ValueError(f"the split has {tokens} tokens: too few for one sample")
    epochs = num_epochs(tokens, num_samples, seq_length, extra)
    separate = False
    if epochs > 1:  # a final epoch used for under 80% of its samples is shuffled apart
        before_final = ((epochs - 1) * tokens - extra) // seq_length
        separate = num_samples - before_final < int(0.80 * ((tokens - extra) // seq_length))
    rng = np.random.RandomState(seed)
    documents = document_index(documents, epochs, rng, separate)
    # The shuffle index needs only the sample count and the generator: it runs beside the sample index.
    n = _sample_count(epochs * tokens, seq_length, drop_last, extra)
    with ThreadPoolExecutor(1) as pool:
        shuffled = pool.submit(shuffle_index, before_final if separate else n, n, rng)
        samples = sample_index(lengths, documents, seq_length, epochs, tokens, drop_last, extra)
        assert len(samples) - 1 == n
        return documents, samples, shuffled.result()


# Blending -----------------------------------------------------------------------------------

def blend_sizes(weights: list[float], size: int, surplus: float = 0.0) -> list[int]:
    """Megatron's `_get_size_per_split_per_dataset` for one split: samples asked of each dataset."""
    return [int(math.ceil(math.ceil(size * w) * (1 + surplus))) for w in weights]


def blending_indices(weights, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Megatron's `helpers.build_blending_indices`: sample i comes from the dataset whose count lags
    weight * max(i, 1) the most (the first on ties). Returns (dataset_index int16, dataset_sample_index int64)."""
    picks = _greedy(np.asarray(weights, np.float64), size)
    return picks, _ranks(picks, len(weights))


def exhaustive_blending_indices(sizes) -> tuple[np.ndarray, np.ndarray]:
    """Megatron's `helpers.build_exhaustive_blending_indices`: the same race with weights
    sizes / sum(sizes), a dataset leaving it once it has given sizes[d] samples."""
    sizes = np.asarray(sizes, np.int64)
    total = int(sizes.sum())
    picks = _greedy(sizes / np.float64(total), total, caps=sizes)
    return picks, _ranks(picks, len(sizes))


def _greedy(weights: np.ndarray, size: int, caps: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """The helpers' sequential loop, run on all chunks of `chunk` samples at once.

    Each chunk starts from a guess of the loop's counts there (the weights' share, then a warm-up
    run of the loop). A chunk whose start differs from where the previous chunk ended runs again
    from there, until every start agrees, so the result is exactly the sequential loop's."""
    if size == 0:
        return np.zeros(0, np.int16)
    steps = min(chunk, size)
    chunks = -(-size // steps)
    first = np.arange(chunks, dtype=np.float64) * steps
    warm = int(min(steps, max(64, 4 / max(weights.min(), 1e-9))))  # light datasets settle slowly
    state = _greedy_steps(weights, first - warm, _apportion(weights, first - warm), warm, caps)
    state[:, 0] = 0
    picks = np.empty((steps, chunks), np.int16)
    rows = np.arange(chunks)
    while len(rows):
        out = np.empty((steps, len(rows)), np.int16)
        ends = _greedy_steps(weights, first[rows], state[:, rows], steps, caps, out)
        picks[:, rows] = out
        keep = rows + 1 < chunks
        rows, ends = rows[keep], ends[:, keep]
        moved = (ends != state[:, rows + 1]).any(0)
        rows = rows[moved] + 1
        state[:, rows] = ends[:, moved]
    return picks.T.reshape(-1)[:size]


def _greedy_steps(weights, first, counts, steps, caps=None, out=None) -> np.ndarray:
    """Run the loop `steps` samples from samples `first` (one per chunk) and counts (datasets x chunks)."""
    counts = counts.copy()
    for t in range(steps):
        error = weights[:, None] * np.maximum(first + t, 1.0) - counts
        if caps is not None:
            error[counts >= caps[:, None]] = -np.inf
        pick = np.zeros(counts.shape[1], np.int16)
        best = error[0]
        for d in range(1, len(weights)):
            np.copyto(pick, d, where=error[d] > best)
            best = np.maximum(best, error[d])
        for d in range(len(weights)):
            counts[d] += pick == d
        if out is not None:
            out[t] = pick
    return counts


def _apportion(weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Counts that sum to `at` (per chunk) nearest to weights * at, by largest remainders."""
    at = np.maximum(at, 0)
    ideal = weights[:, None] * at
    counts = np.floor(ideal)
    rank = np.argsort(np.argsort(counts - ideal, axis=0, kind="stable"), axis=0)
    return counts + (rank < at - counts.sum(0))


def _ranks(picks: np.ndarray, num_datasets: int) -> np.ndarray:
    """For each sample, how many earlier samples came from the same dataset."""
    if num_datasets <= 16:  # a pass per dataset beats a stable sort of all samples (3x for 2)
        ranks = np.empty(len(picks), np.int64)
        for d in range(num_datasets):
            where = picks == d
            ranks[where] = np.arange(np.count_nonzero(where))
        return ranks
    order = np.argsort(picks, kind="stable")
    counts = np.bincount(picks, minlength=num_datasets)
    ranks = np.empty(len(picks), np.int64)
    ranks[order] = np.arange(len(picks)) - np.repeat(np.cumsum(counts) - counts, counts)
    return ranks


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


# Inputs and caches --------------------------------------------------------------------------

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


def _in_threads(function, arguments) -> list:
    """[function(*a) for a in arguments], on one thread per CPU: the datasets of a blend build
    their indices independently, and numpy's shuffles and array passes release the GIL."""
    arguments = list(arguments)
    workers = min(len(arguments), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1:
        return [function(*a) for a in arguments]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: function(*a), arguments))


def _digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def _cache_paths(stem: Path, names: tuple[str, ...]) -> list[Path]:
    return [stem.with_name(f"{stem.name}-{name}.npy") for name in names]


def _must_build(stem: Path, names: tuple[str, ...]) -> bool:
    """Whether this process will build these cached arrays (rank 0, and they are missing)."""
    return _rank() == 0 and not all(p.exists() for p in _cache_paths(stem, names))


# np.load reads a .npy header with ast.literal_eval, and CPython 3.11's parser is not safe to run
# in two threads at once ("SystemError: AST constructor recursion depth mismatch"): the sources
# of a blend open their caches in threads (`_in_threads`).
_NPY_HEADERS = threading.Lock()


def _cached(stem: Path, names: tuple[str, ...], build) -> list[np.ndarray]:
    """Arrays in `<stem>-<name>.npy`, memory-mapped. Missing ones are built and saved (write, then
    rename); under torch.distributed only rank 0 builds and the other ranks wait for its files.
    Builders of the same cache at once (a blend naming one dataset twice, jobs sharing a cache
    folder) may each build it: every one writes its own file and renames it into place whole."""
    paths = _cache_paths(stem, names)
    if not all(p.exists() for p in paths):
        if _rank() == 0:
            stem.parent.mkdir(parents=True, exist_ok=True)
            for path, array in zip(paths, build()):
                _save(path, array)
        else:
            deadline = time.monotonic() + CACHE_WAIT_S
            while not all(p.exists() for p in paths):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{paths[0]}: rank 0 wrote no index cache in {CACHE_WAIT_S}s; "
                                       "every rank must build the same datasets, with a shared cache folder")
                time.sleep(0.2)
    with _NPY_HEADERS:
        return [np.asarray(np.load(p, mmap_mode="r")) for p in paths]  # plain arrays: np.memmap indexes slowly


def _save(path: Path, array: np.ndarray) -> None:
    """`np.save` to `path` atomically: readers see no file or all of it."""
    # A name of this host, process and thread (cache folders may be shared between nodes):
    # another writer of the same file never truncates ours.
    tmp = path.with_name(f"{path.name}.{os.uname().nodename}-{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Datasets -----------------------------------------------------------------------------------

class _Source:
    """One prefix's samples in one split: Megatron's mid-level `GPTDataset`."""

    NAMES = ("document_index", "sample_index", "shuffle_index")

    def __init__(self, shard: Shard, split_index: int, num_samples: int | None, options: Options,
                 pad_id: int, cache_dir: Path | None):
        self.prefix = shard.prefix
        self.data = IndexedDataset(shard.prefix)
        documents = split_documents(split_matrix(parse_split(options.split))[split_index], len(self.data))
        if not len(documents):
            raise ValueError(f"{shard.prefix}: split {options.split!r} leaves the {SPLITS[split_index]} split no sequences")
        drop_last = split_index != 1 or options.drop_last_partial_validation_sequence
        self.extra = int(options.add_extra_token_to_sequence)
        self.length = options.seq_length + self.extra
        self.pad_id = pad_id
        self.key = _digest({"indices": "gpt/1", "data": shard.checksum, "seed": options.seed,
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
        self.document_index, self.sample_index, self.shuffle_index = _cached(self.stem, self.NAMES, build)

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


class GPTDataset(torch.utils.data.Dataset):
    """GPT samples of one split, equal to Megatron-Core's for the same blend and options.

    `paths`: a manifest, prep output folder or Megatron prefix, or a list of them; `weights`: one
    per path, as in Megatron's blend (a manifest's weight is shared among its shards by tokens).
    One prefix without weights is Megatron's plain GPTDataset (with a weight, Megatron's blend of
    one; in a split of `per_split`, plain either way); several without weights are
    Megatron's weightless blend (in proportion to their samples, one epoch of each at most). `num_samples`: for this
    split, or one per split (train, valid, test); None is one epoch. Items are dicts of tensors:
    tokens, labels, attention_mask (if create_attention_mask), loss_mask, position_ids, and
    dataset_id when blended. `blend_per_split`: set by `per_split`. Other keyword options: see `Options`.
    """

    def __init__(self, paths, weights=None, *, seq_length: int, num_samples=None, split_index: int = 0,
                 key: str | None = None, cache_dir: str | Path | None = None, eod_id: int | None = None,
                 pad_id: int | None = None, blend_per_split: bool = False, **options):
        self._args = dict(paths=paths, weights=weights, seq_length=seq_length, num_samples=num_samples,
                          key=key, cache_dir=cache_dir, eod_id=eod_id, pad_id=pad_id,
                          blend_per_split=blend_per_split, **options)
        self.options = o = Options(seq_length=seq_length, **options)
        self.split_index = split_index
        if split_matrix(parse_split(o.split))[split_index] is None:
            raise ValueError(f"split {o.split!r} leaves the {SPLITS[split_index]} split empty")
        shards, weights, tokenizer = resolve(paths, weights, key)
        self.eod_id = eod_id if eod_id is not None else (tokenizer or {}).get("eod_id")
        if self.eod_id is None:
            raise ValueError(f"{paths}: no manifest names the EOD token; pass eod_id")
        if pad_id is not None:  # Megatron's rule for the tokenizer's pad holds for a given one too
            special = {**dict((tokenizer or {}).get("special_ids") or {}), "eod": self.eod_id}
            tokenizer = {"special_ids": {**special, "pad": pad_id}}
        self.pad_id = megatron_pad_id(tokenizer)
        size = num_samples[split_index] if isinstance(num_samples, (list, tuple)) else num_samples
        cache_dir = Path(cache_dir) if cache_dir else None

        def source(shard, n):
            return _Source(shard, split_index, n, o, self.pad_id, cache_dir)

        self._fixed = self._blend_stem = self.dataset_index = self.dataset_sample_index = None
        self.consumed_samples = self.epoch = 0  # the dataloader's position: see state_dict
        if weights is not None and size is None:
            raise ValueError("blend weights need num_samples (Megatron: 'Using client-specified weights requires client-specified size')")
        # Megatron's blend_per_split ignores the weight of a single prefix (its `blend` does not):
        # a plain dataset of num_samples, without the surplus or a BlendedDataset around it.
        if len(shards) == 1 and (weights is None or blend_per_split):
            self.sources = [source(shards[0], size).build()]
            self.key = self.sources[0].key
        else:
            self._blend(shards, weights, size, source, cache_dir)

    def _blend(self, shards, weights, size, source, cache_dir):
        """BlendedMegatronDatasetBuilder's sizes and BlendedDataset's indices for one split."""
        o = self.options
        if weights is not None:  # the mid-level datasets get a surplus
            weights = normalize(weights)
            self.sources = [source(s, n) for s, n in zip(shards, blend_sizes(weights, size, o.mid_level_dataset_surplus))]
            size, weights = sum(blend_sizes(weights, size)), normalize(weights)
            self._blend_key(weights, size, cache_dir)
            # The blend needs only weights and size: built beside the datasets' indices, when not cached.
            with ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(blending_indices, weights, size) if _must_build(self._blend_stem, self.BLEND) else None
                _in_threads(_Source.build, [(s,) for s in self.sources])
                self._open(lambda: self._build_blend(weights, size, ahead))
            return
        self.sources = _in_threads(_Source.build, [(source(s, None),) for s in shards])
        lengths = [len(s) for s in self.sources]
        size, weights = (None, lengths) if size is None else (min(size, sum(lengths)), normalize(lengths))
        self._blend_key(weights, size, cache_dir)
        self._open(lambda: self._build_blend(weights, size))

    BLEND = ("dataset_index", "dataset_sample_index")

    def _blend_key(self, weights, size, cache_dir) -> None:
        self.key = _digest({"indices": "blend/1", "sources": [s.key for s in self.sources],
                            "weights": weights, "size": size})
        self._blend_stem = Path(cache_dir or Path(self.sources[0].prefix).parent / "cache") / f"blend-{self.key}"

    def _build_blend(self, weights, size, ahead=None):
        """BlendedDataset._build_indices: the blend, and its check that no dataset is oversampled."""
        if ahead is not None:
            index, sample = ahead.result()
        else:
            index, sample = blending_indices(weights, size) if size is not None else exhaustive_blending_indices(weights)
        counts = np.bincount(index, minlength=len(self.sources))
        for d, (count, src) in enumerate(zip(counts, self.sources)):
            if count > len(src):
                raise IndexError(f"{src.prefix}: the {SPLITS[self.split_index]} blend asks {count} samples of a dataset "
                                 f"of {len(src)}; raise mid_level_dataset_surplus (now {self.options.mid_level_dataset_surplus})")
        return index, sample

    def _open(self, build=None):
        self.dataset_index, self.dataset_sample_index = _cached(self._blend_stem, self.BLEND, build)
        self._dataset_ids = [torch.tensor(d, dtype=torch.int16) for d in range(len(self.sources))]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("dataset_index", "dataset_sample_index", "_fixed", "_shared_by_device")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fixed = self.dataset_index = self.dataset_sample_index = None
        if self._blend_stem:
            self._open()

    @classmethod
    def from_manifests(cls, paths, weights=None, **kwargs) -> GPTDataset:
        """The blend of these manifests (or output folders), weighted like Megatron's --data-path."""
        return cls(paths, weights, **kwargs)

    @classmethod
    def per_split(cls, blends, **kwargs) -> list[GPTDataset | None]:
        """Megatron's `blend_per_split`: train, valid and test each from a blend of their own,
        `blends[i]` = paths or (paths, weights), or None for no such split. Each split reads its
        datasets whole (the split string is not used); `num_samples` is one per split. A blend of
        one prefix is a plain dataset of its num_samples, weighted or not, as in Megatron."""
        if len(blends) != 3:
            raise ValueError(f"blend_per_split: {len(blends)} blends; expected train, valid, test (None for none)")
        if "split" in kwargs:
            raise ValueError("blend_per_split: each split reads its datasets whole; drop `split`")
        whole = ("1,0,0", "0,1,0", "0,0,1")
        return [None if blend is None else cls(*(blend if isinstance(blend, tuple) else (blend, None)), split=whole[i],
                                                split_index=i, blend_per_split=True, **kwargs) for i, blend in enumerate(blends)]

    def splits(self) -> list[GPTDataset | None]:
        """Train, valid and test datasets of the same blend and options (None for an empty split)."""
        matrix = split_matrix(parse_split(self.options.split))
        return [GPTDataset(split_index=i, **self._args) if matrix[i] else None for i in range(3)]

    @property
    def blended(self) -> bool:
        return self.dataset_index is not None

    def __len__(self) -> int:
        return len(self.dataset_index) if self.blended else len(self.sources[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Megatron's `GPTDataset.__getitem__` (and `BlendedDataset.__getitem__` when blended)."""
        if self.blended:
            d = int(self.dataset_index[i])
            sample = self._sample(*self.sources[d].padded_text(int(self.dataset_sample_index[i])))
            return {"dataset_id": self._dataset_ids[d], **sample}
        return self._sample(*self.sources[0].padded_text(i))

    def _sample(self, text: np.ndarray, padded: bool | None = None) -> dict[str, torch.Tensor]:
        o, pad = self.options, self.pad_id
        if padded is None:
            padded = bool((text == pad).any())
        padded = padded or not o.add_extra_token_to_sequence
        text = torch.from_numpy(text)
        if o.add_extra_token_to_sequence:
            tokens, labels = text[:-1], text[1:]  # views of one buffer, as in Megatron
        else:
            tokens, labels = text, torch.roll(text, -1)
            labels[-1] = pad
        if o.reset_position_ids or o.reset_attention_mask or o.eod_mask_loss:
            attention_mask, loss_mask, position_ids = masks_and_position_ids(
                tokens, self.eod_id, o.reset_position_ids, o.reset_attention_mask, o.eod_mask_loss,
                o.create_attention_mask)
        else:  # the same for every sample: made once, as Megatron caches them (and shares all but loss_mask)
            if self._fixed is None:
                self._fixed = masks_and_position_ids(tokens, self.eod_id, create_attention_mask=o.create_attention_mask)
            attention_mask, loss_mask, position_ids = self._fixed
            loss_mask = loss_mask.clone()
        if padded:  # pads get no loss and become token 0
            loss_mask[labels == pad] = 0.0
            tokens[tokens == pad] = 0
            labels[labels == pad] = 0
        sample = {"tokens": tokens, "labels": labels}
        if o.create_attention_mask:
            sample["attention_mask"] = attention_mask
        return {**sample, "loss_mask": loss_mask, "position_ids": position_ids}

    # Batches ----------------------------------------------------------------------------------

    @property
    def _per_sample(self) -> bool:
        """Options whose masks or positions differ from sample to sample."""
        o = self.options
        return o.reset_position_ids or o.reset_attention_mask or o.eod_mask_loss

    def batch_shapes(self, batch_size: int) -> dict:
        """{name: (shape, numpy dtype)} of the arrays `fill_batch` writes for one batch."""
        shapes = {"text": ((batch_size, self.sources[0].length), np.int64), "padded": ((batch_size,), bool)}
        if self.blended:
            shapes["dataset_id"] = ((batch_size,), np.int16)
        return shapes

    def fill_batch(self, indices, arrays: dict[str, np.ndarray]) -> None:
        """Write the token windows of samples `indices` into `arrays` (of `batch_shapes`), whether
        each holds pad_id, and their dataset ids when blended: a loader worker's part. `finish`
        makes the batch from them."""
        at = np.asarray(indices, np.int64)
        if self.blended:
            datasets, samples = self.dataset_index[at], self.dataset_sample_index[at]
            arrays["dataset_id"][:] = datasets
        else:
            datasets, samples = np.zeros(len(at), np.int64), at
        text, padded = arrays["text"], arrays["padded"]
        for r, (d, i) in enumerate(zip(datasets.tolist(), samples.tolist())):
            padded[r] = self.sources[d].fill(i, text[r])

    def finish(self, arrays: dict) -> dict[str, torch.Tensor]:
        """The batch of `fill_batch`'s arrays, equal to `default_collate([self[i] for i in
        indices])`; it copies, never returning views of `arrays`. Numpy arrays give a batch on
        the CPU (numpy's copies are single-threaded, cheaper here than torch's); tensors, one on
        their device. The masks and positions every sample shares are expanded views of one
        cached tensor per device (Megatron shares them too)."""
        o, pad = self.options, self.pad_id
        text, padded = arrays["text"], np.asarray(arrays["padded"])  # `padded` stays on the CPU
        on_cpu = isinstance(text, np.ndarray)
        ids = {"dataset_id": torch.from_numpy(arrays["dataset_id"].copy()) if on_cpu else arrays["dataset_id"].clone()} \
            if "dataset_id" in arrays else {}
        if self._per_sample:  # masks and positions differ from sample to sample
            rows = [self._sample(row) for row in (text.copy() if on_cpu else text.cpu().numpy())]
            if ids:
                rows = [{"dataset_id": d, **r} for d, r in zip(ids["dataset_id"].cpu(), rows)]
            batch = torch.utils.data.default_collate(rows)
            return batch if on_cpu else {k: v.to(text.device) for k, v in batch.items()}
        if not o.add_extra_token_to_sequence:  # Megatron rolls the labels and treats every such sample as padded
            tokens, labels = (text.copy(), np.roll(text, -1, 1)) if on_cpu else (text.clone(), torch.roll(text, -1, 1))
            labels[:, -1] = pad
            padded = np.ones(len(text), bool)
        elif on_cpu:
            tokens, labels = text[:, :-1].copy(), text[:, 1:].copy()
        else:
            tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
        loss_mask = np.ones(tokens.shape, np.float32) if on_cpu else torch.ones(tokens.shape, device=text.device)
        rows = np.flatnonzero(padded)
        if len(rows):  # pads get no loss and become token 0, in the samples that have them
            rows = rows if on_cpu else torch.from_numpy(rows).to(text.device)
            for array, where in ((loss_mask, labels), (tokens, tokens), (labels, labels)):
                part = array[rows]
                part[where[rows] == pad] = 0
                array[rows] = part
        if on_cpu:
            tokens, labels, loss_mask = torch.from_numpy(tokens), torch.from_numpy(labels), torch.from_numpy(loss_mask)
        attention_mask, _, position_ids = self._shared(tokens.device)
        batch = {**ids, "tokens": tokens, "labels": labels}
        if o.create_attention_mask:
            batch["attention_mask"] = attention_mask[None].expand(len(tokens), *attention_mask.shape)
        batch.update(loss_mask=loss_mask, position_ids=position_ids[None].expand(len(tokens), -1))
        return batch

    def _shared(self, device: torch.device):
        cache = self.__dict__.setdefault("_shared_by_device", {})
        if device not in cache:
            placeholder = torch.zeros(self.options.seq_length, dtype=torch.long)
            cache[device] = tuple(None if t is None else t.to(device) for t in masks_and_position_ids(
                placeholder, self.eod_id, create_attention_mask=self.options.create_attention_mask))
        return cache[device]

    # Loading and resuming ---------------------------------------------------------------------

    def dataloader(self, batch_size: int, rank: int | None = None, world_size: int | None = None,
                   device: str | torch.device = "cpu", num_workers: int = 2, prefetch_factor: int | None = None) -> Loader:
        """This rank's batches from the dataset's position; see `Loader`. `num_workers` processes
        (0: in this one) each run up to `prefetch_factor` batches ahead (default: up to 16, within
        64 MB of shared memory)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        return Loader(self, batch_size, rank, world_size, torch.device(device), num_workers, prefetch_factor)

    def state_dict(self) -> dict:
        """Where the dataloader is: samples consumed over all ranks in this pass, and passes done."""
        return {"dataset": self.key, "consumed_samples": int(self.consumed_samples), "epoch": int(self.epoch)}

    def load_state_dict(self, state: dict) -> None:
        if state["dataset"] != self.key:
            raise ValueError(f"state of dataset {state['dataset']}, this is {self.key}: other data or options")
        self.consumed_samples, self.epoch = state["consumed_samples"], state["epoch"]


def _depth(shapes: dict, workers: int, budget: int = 64 << 20) -> int:
    """Batches each worker may run ahead: up to 16 (more slots, fewer wake-ups: freed slots are
    announced a few at a time), within `budget` bytes of shared memory, at least 2."""
    batch = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    return int(max(2, min(16, budget // max(1, batch * max(1, workers)))))


class Loader:
    """Batches of one rank, as Megatron's `MegatronPretrainingSampler` lays them out: global batch
    g is samples [g * B * W, (g + 1) * B * W) of the dataset, rank r takes the r-th run of B; the
    last partial global batch is dropped. Forked workers write the token windows of the next
    batches into shared memory (`SharedBatches`); the batch is finished on the device, and on
    CUDA copied there from pinned memory without blocking, one batch ahead. Each batch handed out moves the
    dataset's `consumed_samples`, so `dataset.state_dict()` resumes exactly after it."""

    def __init__(self, dataset: GPTDataset, batch_size: int, rank: int, world_size: int,
                 device: torch.device, num_workers: int, prefetch_factor: int | None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.device, self.num_workers, self.prefetch_factor = device, num_workers, prefetch_factor
        self.global_batch = batch_size * world_size
        self.end = len(dataset) // self.global_batch * self.global_batch

    def __len__(self) -> int:
        return self.end // self.global_batch

    def indices(self, start: int = 0):
        """This rank's batches of sample indices from global position `start`."""
        for g in range(start, self.end, self.global_batch):
            first = g + self.rank * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __iter__(self):
        ds = self.dataset
        if ds.consumed_samples >= self.end:  # the last pass was finished: start the next
            ds.consumed_samples, ds.epoch = 0, ds.epoch + 1
        start = ds.consumed_samples
        count = max(0, self.end - start) // self.global_batch
        first = start + self.rank * self.batch_size

        def fill(k: int, arrays: dict) -> None:
            i = first + k * self.global_batch
            ds.fill_batch(range(i, i + self.batch_size), arrays)

        # Workers write each batch into a slot of shared memory; here it is copied once (to the
        # device) and finished there.
        shapes = ds.batch_shapes(self.batch_size)
        depth = self.prefetch_factor or _depth(shapes, self.num_workers)
        batches = SharedBatches(fill, count, shapes, self.num_workers, depth)
        ahead = deque()
        for step, (slot, arrays) in enumerate(batches, 1):
            ahead.append((start + step * self.global_batch, ds.finish(arrays if self.device.type == "cpu" else {
                **batches.unpack(self._copy(slot)), "padded": arrays["padded"].copy()})))
            if len(ahead) > 1:
                ds.consumed_samples, batch = ahead.popleft()
                yield batch
        while ahead:
            ds.consumed_samples, batch = ahead.popleft()
            yield batch

    def _copy(self, slot: np.ndarray) -> torch.Tensor:
        """A shared-memory slot copied to the device (CUDA), through a pinned buffer and a
        non-blocking copy; a buffer is reused once the copy out of it has completed."""
        if getattr(self, "_stages", None) is None or self._stages[0][0].numel() != slot.size:
            self._stages = deque((torch.empty(slot.size, dtype=torch.uint8, pin_memory=True), torch.cuda.Event()) for _ in range(2))
        stage, copied = self._stages[0]
        self._stages.rotate(-1)
        copied.synchronize()
        stage.copy_(torch.from_numpy(slot))
        moved = stage.to(self.device, non_blocking=True)
        copied.record()
        return moved
