"""Packing (no sample split or lost, cu_seqlens right) and loaders.sft batches against hand-built expectations."""

import json

import numpy as np
import pytest
import torch

from helpers import TOKENIZERS, prep, write_jsonl
from loaders.sft import IGNORE, SFTDataset, collate, shifted_labels
from prep.tokenize.pack import plan_packs
from test_sft import conversations


def test_shifted_labels_by_hand():
    ids = np.array([10, 11, 12, 13, 20, 21, 22])
    mask = np.array([0, 0, 1, 1, 0, 1, 1], np.uint8)
    labels, loss = shifted_labels(ids, mask, boundaries=np.array([4, 7]))
    assert labels.tolist() == [IGNORE, 12, 13, IGNORE, 21, 22, IGNORE]
    assert loss.tolist() == [0, 1, 1, 0, 1, 1, 0]


@pytest.mark.parametrize("seed", [0, 1])
def test_plan_packs_places_every_sample_once_within_capacity(seed):
    lengths = np.random.default_rng(seed).integers(1, 900, 5000)
    order, sizes = plan_packs(lengths, 1024, window=700, seed=seed)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    ends = np.cumsum(sizes)
    totals = np.add.reduceat(lengths[order], np.concatenate([[0], ends[:-1]]))
    assert totals.max() <= 1024 and sizes.sum() == len(lengths)
    assert lengths.sum() / (len(sizes) * 1024) > 0.97
    again = plan_packs(lengths, 1024, window=700, seed=seed)
    assert np.array_equal(again[0], order) and np.array_equal(again[1], sizes)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    corpus = write_jsonl(folder / "c.jsonl", conversations(120))
    common = ["tokenize", corpus, "--recipe", "chat", "--tokenizer", TOKENIZERS / "smollm2-135m-instruct"]
    prep(*common, "-o", folder / "plain")
    prep(*common, "-o", folder / "packed", "--pack", "1024", "--unit-size", "16k", "--workers", "2")
    return folder / "plain", folder / "packed"


def test_packed_output_holds_every_sample_unsplit(outputs):
    plain, packed = SFTDataset(outputs[0]), SFTDataset(outputs[1])
    assert not plain.packed and packed.packed
    samples = sorted(tuple(plain[i]["input_ids"].tolist()) for i in range(len(plain)))
    from_packs = []
    for i in range(len(packed)):
        item = packed[i]
        assert len(item["input_ids"]) <= 1024
        starts = np.concatenate([[0], np.cumsum(item["seq_lens"].numpy())])
        for a, b in zip(starts, starts[1:]):
            from_packs.append(tuple(item["input_ids"][a:b].tolist()))
            assert item["position_ids"][a:b].tolist() == list(range(b - a))
    assert sorted(from_packs) == samples
    stats = json.loads((outputs[1] / "manifest.json").read_text())["stats"]["packing"]
    assert stats["samples"] == len(plain) and stats["packs"] == len(packed)


def test_collate_pads_and_builds_cu_seqlens(outputs):
    ds = SFTDataset(outputs[1])
    items = [ds[0], ds[1]]
    batch = collate(items, pad_id=2, pad_to_multiple_of=16)
    width = batch["input_ids"].shape[1]
    assert width % 16 == 0 and width >= max(len(i["input_ids"]) for i in items)
    segments = []
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"]) and (batch["input_ids"][row, n:] == 2).all()
        assert (batch["labels"][row, n:] == IGNORE).all() and batch["attention_mask"][row].sum() == n
        segments += item["seq_lens"].tolist() + ([width - n] if width > n else [])
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(segments)]).tolist()
    assert batch["cu_seqlens"][-1] == 2 * width


def test_dataloader_resumes_exactly(outputs):
    ds = SFTDataset(outputs[0])
    loader = ds.dataloader(batch_size=4, seed=5, pad_to_multiple_of=8)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    rest = [b["input_ids"] for b in it]
    again = ds.dataloader(batch_size=4, seed=5, pad_to_multiple_of=8)
    again.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in again] == [b.tolist() for b in rest]
