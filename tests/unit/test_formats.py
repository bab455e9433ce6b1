"""The .idx layout byte by byte, and BOS/EOD assembly against hand-built expectations."""

import struct

import numpy as np
import pytest

from loaders.formats import indexed
from prep.recipes.text import assemble


def test_index_bytes_match_the_layout_megatron_documents(tmp_path):
    lengths = np.array([3, 0, 5], np.int32)  # Megatron never writes 0, but the layout allows it
    documents = np.array([0, 2, 2, 3])
    data = b"".join(indexed.encode_index(np.uint16, lengths, documents))
    expected = (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", 3)
                + struct.pack("<Q", 4) + struct.pack("<3i", 3, 0, 5) + struct.pack("<3q", 0, 6, 6)
                + struct.pack("<4q", 0, 2, 2, 3))
    assert data == expected


@pytest.mark.parametrize("vocab,dtype", [(50257, np.uint16), (65499, np.uint16), (65500, np.int32), (128256, np.int32)])
def test_dtype_follows_megatrons_rule(vocab, dtype):
    assert indexed.optimal_dtype(vocab) == dtype


def test_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 60000, rng.integers(1, 50)).astype(np.uint16) for _ in range(100)]
    (tmp_path / "d.bin").write_bytes(b"".join(s.tobytes() for s in seqs))
    docs = np.array([0, 10, 10, 55, 100])
    (tmp_path / "d.idx").write_bytes(b"".join(indexed.encode_index(np.uint16, [len(s) for s in seqs], docs)))
    ds = indexed.IndexedDataset(tmp_path / "d")
    assert len(ds) == 100 and ds.num_documents == 4
    assert all(np.array_equal(ds[i], s) for i, s in enumerate(seqs))
    assert np.array_equal(ds.get(7, 1, 2), seqs[7][1:3])
    assert len(ds.document(1)) == 0
    assert np.array_equal(ds.document(2), np.concatenate(seqs[10:55]))


def test_assemble_inserts_eod_and_bos_around_non_empty_documents_only():
    # documents: ["a b"], [], ["c", "", "d e"], [""]   (sentence ids below)
    sentences = [[1, 2], [3], [], [4, 5]]
    ids = np.array([t for s in sentences for t in s], np.uint32)
    offsets = np.cumsum([0] + [len(s) for s in sentences])
    owner = np.array([0, 2, 2, 2])
    docs = assemble(ids, offsets, owner, 4, eod=9, bos=8, dtype=np.uint16)
    assert docs.tokens.tolist() == [8, 1, 2, 9, 8, 3, 4, 5, 9]
    assert docs.sequence_lengths.tolist() == [4, 2, 3]  # BOS joins the first, EOD the last sequence
    assert docs.document_sequences.tolist() == [1, 0, 2, 0]
    assert docs.tokens.dtype == np.uint16
    plain = assemble(ids, offsets, owner, 4, eod=None, bos=None, dtype=np.int32)
    assert plain.tokens.tolist() == [1, 2, 3, 4, 5] and plain.sequence_lengths.tolist() == [2, 1, 2]
