"""No limit at 2^31 or 2^32 tokens or bytes in the index, finalize, merge and sample-index math:
synthetic large counts (a few huge sequences; sparse files that take no disk), not large files."""

import numpy as np
import pytest

from loaders import megatron_index
from loaders.formats import indexed
from prep.writers.megatron import _shard_bounds, length_histogram

BIG = 2**31 - 1  # the longest sequence an int32 length holds


def test_an_index_past_2_to_the_32_tokens_and_bytes_reads_back_through_both_readers(tmp_path):
    """Three sequences of 2^31-1 uint16 tokens: 6.4e9 tokens, 12.9 GB of .bin (a sparse file)."""
    lengths = np.full(3, BIG, np.int32)
    prefix = tmp_path / "big_document"
    with open(indexed.bin_path(prefix), "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * 2)
    with open(indexed.idx_path(prefix), "wb") as f:
        for block in indexed.encode_index(np.uint16, lengths, np.array([0, 1, 3])):
            f.write(block)
    ours = indexed.IndexedDataset(prefix)
    assert len(ours) == 3 and ours.num_documents == 2 and int(ours.sequence_lengths.sum(dtype=np.int64)) == 3 * BIG > 2**32
    assert ours.get(2, offset=BIG - 4).tolist() == [0, 0, 0, 0]  # the last tokens, 12.9 GB in
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    theirs = MegatronIndexedDataset(str(prefix))
    assert theirs.index.sequence_pointers.tolist() == [0, 2 * BIG, 4 * BIG]
    assert theirs.document_indices.tolist() == [0, 1, 3] and len(theirs.get(2, offset=BIG - 4)) == 4


def test_shard_bounds_past_2_to_the_32_tokens():
    token_ends = np.cumsum(np.full(5, BIG, np.int64))
    documents = np.arange(6, dtype=np.int64)
    assert _shard_bounds(documents, token_ends, 2**32) == [(0, 3), (3, 5)]  # a shard closes once past 2^32 tokens
    assert _shard_bounds(documents, token_ends, 2**31) == [(0, 2), (2, 4), (4, 5)]
    assert _shard_bounds(documents, token_ends, None) == [(0, 5)]
    histogram = length_histogram(np.full(3, 5 * BIG, np.int64))  # a packed document of 1e10 tokens
    (i,) = [i for i, n in enumerate(histogram["counts"]) if n]
    assert histogram["counts"][i] == 3 and histogram["edges"][i] <= 5 * BIG < histogram["edges"][i + 1]


@pytest.mark.parametrize("extra", [0, 1])
def test_the_sample_index_past_2_to_the_32_tokens_equals_megatrons_helper(extra):
    from megatron.core.datasets import helpers

    lengths = np.array([BIG, 17, BIG, BIG, 5], np.int32)
    documents = np.array([3, 0, 4, 2, 1], np.int32)
    seq_length = 2**20 + 7  # about 6,000 samples over 6.4e9 tokens
    total = int(lengths.sum(dtype=np.int64))
    ours = megatron_index.sample_index(lengths, documents, seq_length, 1, total, True, extra)
    theirs = helpers.build_sample_idx(lengths, documents, seq_length, 1, total, True, extra)
    assert ours.shape == theirs.shape and ours.shape[0] > 6000
    assert np.array_equal(ours, theirs)
