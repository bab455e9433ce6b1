"""The streamed finalize (memory flat in the dataset's size) writes exactly the shards, bytes and
manifest entry of the in-memory merge, over random parts with empty documents, multi-sequence
documents and shard sizes that cut anywhere (empty documents after a full shard included)."""

from types import SimpleNamespace

import numpy as np
import pytest

from prep.writers import megatron, megatron_stream


def _parts(folder, rng) -> list:
    units = []
    for i in range(int(rng.integers(1, 6))):
        documents = rng.integers(0, 3, int(rng.integers(0, 12))).astype(np.int32)  # sequences per document, 0 = empty
        lengths = rng.integers(0, 40, int(documents.sum())).astype(np.int32)
        if rng.random() < 0.3 and len(documents) > 2:  # a run of empty documents
            documents[1:3] = 0
            lengths = rng.integers(1, 40, int(documents.sum())).astype(np.int32)
        stem = folder / f"{i:06d}.text"
        rng.integers(0, 60000, int(lengths.sum()), dtype=np.uint16).tofile(f"{stem}.bin")
        with open(f"{stem}.seq.npy", "wb") as f:
            np.save(f, lengths)
            np.save(f, documents)
        units.append(SimpleNamespace(id=f"{i:06d}"))
    return units


@pytest.mark.parametrize("seed", range(40))
def test_streamed_finalize_equals_the_in_memory_one(tmp_path, seed):
    rng = np.random.default_rng(seed)
    (tmp_path / "parts").mkdir()
    units = _parts(tmp_path / "parts", rng)
    total = sum(int(np.load(tmp_path / "parts" / f"{u.id}.text.seq.npy").sum()) for u in units)
    if total == 0:
        pytest.skip("no tokens: finalize refuses such a key before either merge")
    shard_tokens = [None, 1, 7, 30, 64, 10_000][seed % 6]
    results = {}
    for name, module in (("memory", megatron), ("stream", megatron_stream)):
        out = tmp_path / name
        out.mkdir()
        entry = module.finalize_key(tmp_path, out, units, "text", np.uint16, shard_tokens)
        results[name] = (entry, {p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert results["stream"] == results["memory"]
