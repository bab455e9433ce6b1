"""Megatron-Core 0.16.1's GPT index functions as plain numpy: splits, document, sample and shuffle
indices, blends. Each is named after the Megatron code it reproduces; the same inputs give the
same arrays, so a run switched to our loader sees Megatron's samples in Megatron's order."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SPLITS = ("train", "valid", "test")


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
    picks = _greedy(sizes / np.float64(total) if total else sizes.astype(np.float64), total, caps=sizes)
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
