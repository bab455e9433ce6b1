"""loaders.nanogpt gives AutoModel's windows, splits them across ranks, and resumes exactly."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl
from loaders.nanogpt import NanoGPTDataset

import nemo_automodel.components.datasets.llm.nanogpt_dataset as automodel  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ng")
    corpus = write_jsonl(folder / "c.jsonl", botchan_documents(500, seed=8))
    prep("tokenize", corpus, "-o", folder / "out", "--tokenizer", TOKENIZERS / "gpt2", "--format", "nanogpt", "--shard-tokens", "30k")
    return folder / "out"


@pytest.mark.parametrize("align", [False, True])
def test_windows_equal_automodels_per_shard(shards, align):
    ours = NanoGPTDataset(shards, seq_len=48, align_to_bos=align)
    expected = []
    for path in ours.files:
        theirs = automodel.NanogptDataset([path], seq_len=48, bos_token=50256 if align else None, align_to_bos=align)
        expected += list(_one_pass(theirs, path, 48, align))
    assert len(ours) == len(expected)
    for i, sample in enumerate(expected):
        assert ours[i]["input_ids"].tolist() == sample["input_ids"]
        assert ours[i]["labels"].tolist() == sample["labels"]


def test_shards_without_a_bos_index_are_aligned_by_a_scan_as_automodel_does(shards, tmp_path):
    """Shard files from elsewhere (modded-nanogpt's have no .bos.idx): with bos_token, BOS is found
    by a scan, as AutoModel's reader falls back to; without it, a one-line error."""
    import shutil

    files = []
    for path in NanoGPTDataset(shards, seq_len=48).files[:2]:
        files.append(shutil.copy(path, tmp_path / Path(path).name))  # the .bin alone
    ours = NanoGPTDataset(files, seq_len=48, align_to_bos=True, bos_token=50256)
    expected = [w for f in files for w in _one_pass(automodel.NanogptDataset([f], seq_len=48, bos_token=50256, align_to_bos=True), f, 48, True)]
    assert [ours[i]["input_ids"].tolist() for i in range(len(ours))] == [w["input_ids"] for w in expected]
    with pytest.raises(ValueError, match="pass bos_token"):
        NanoGPTDataset(files, seq_len=48, align_to_bos=True)


def _one_pass(dataset, path, seq_len, align):
    """AutoModel's reader loops forever; take exactly one pass over the shard."""
    yield from dataset._process_file_tokens(path, False, 0, None)


def test_ranks_split_without_duplicates_and_cover_everything(shards):
    ds = NanoGPTDataset(shards, seq_len=32)
    seen = []
    for rank in range(3):
        loader = ds.dataloader(batch_size=4, rank=rank, world_size=3, seed=1)
        seen += [tuple(x.tolist()) for batch in loader for x in batch["input_ids"]]
    everything = Counter(tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds)))
    assert not everything - Counter(seen)  # every window reached some rank
    assert sum((Counter(seen) - everything).values()) == (-len(ds)) % 3  # only the padding to a multiple of 3
    dropped = [tuple(x.tolist()) for rank in range(3)
               for batch in ds.dataloader(batch_size=4, rank=rank, world_size=3, seed=1, drop_last=True) for x in batch["input_ids"]]
    assert len(dropped) == len(ds) - len(ds) % 3 and not Counter(dropped) - everything  # with drop_last: no sample twice


def test_state_dict_resumes_with_the_next_batch(shards):
    ds = NanoGPTDataset(shards, seq_len=32)
    loader = ds.dataloader(batch_size=5, seed=3, num_workers=2)
    it = iter(loader)
    first = [next(it) for _ in range(7)]
    state = loader.state_dict()
    rest = [b["input_ids"] for b in it]
    resumed = ds.dataloader(batch_size=5, seed=3, num_workers=2)
    resumed.load_state_dict(state)
    again = [b["input_ids"] for b in resumed]
    assert len(again) == len(rest) and all(torch.equal(a, b) for a, b in zip(again, rest))
    assert len(first) + len(rest) == len(loader)


def test_iterating_again_after_a_break_goes_on_with_the_next_batch(shards):
    """The workers fetch ahead of what was delivered; a new pass over the same loader after a
    `break` must neither skip nor repeat those windows."""
    ds = NanoGPTDataset(shards, seq_len=32)
    full = [b["input_ids"] for b in ds.dataloader(batch_size=5, seed=4, num_workers=2)]
    loader = ds.dataloader(batch_size=5, seed=4, num_workers=2)
    got = []
    for batch in loader:
        got.append(batch["input_ids"])
        if len(got) == 3:
            break
    got += [b["input_ids"] for b in loader]
    assert len(got) == len(full) and all(torch.equal(a, b) for a, b in zip(got, full))
