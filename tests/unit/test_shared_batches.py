"""loaders.dataloader: SharedBatches (forked workers writing batches into shared memory) and
ResumableSampler's rank shards against torch's DistributedSampler."""

import os
import time

import numpy as np
import pytest
import torch

from loaders.dataloader import ResumableSampler, SharedBatches

SHAPES = {"x": ((3, 5), np.int64), "flag": ((3,), bool), "id": ((3,), np.int16)}


def fill(k, arrays):
    arrays["x"][:] = np.arange(15).reshape(3, 5) + 100 * k
    arrays["flag"][:] = [k % 2 == 0, True, False]
    arrays["id"][:] = k


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("count", [0, 1, 7, 40])
def test_batches_arrive_in_order_with_their_contents(workers, count):
    batches = SharedBatches(fill, count, SHAPES, workers, depth=2)
    got = []
    for slot, arrays in batches:
        copy = batches.unpack(torch.from_numpy(slot.copy()))  # what the loaders do with a slot
        assert set(copy) == set(SHAPES) and copy["x"].dtype == torch.int64 and copy["flag"].dtype == torch.bool
        assert torch.equal(copy["x"], torch.from_numpy(arrays["x"]))
        got.append((copy["x"].clone(), copy["flag"].clone(), int(copy["id"][0])))
    assert [g[2] for g in got] == list(range(count))
    for k, (x, flag, _) in enumerate(got):
        assert torch.equal(x, torch.arange(15).reshape(3, 5) + 100 * k)
        assert flag.tolist() == [k % 2 == 0, True, False]


def failing(k, arrays):
    if k == 5:
        raise ValueError("bad sample 5")
    fill(k, arrays)


def test_a_failing_worker_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match="(?s)failed on batch 5.*ValueError: bad sample 5"):
        for _ in SharedBatches(failing, 20, SHAPES, 2):
            pass


def test_stopping_early_ends_the_workers():
    before = _children()  # other tests' helpers (multiprocessing's resource tracker...) may live on
    batches = iter(SharedBatches(fill, 10_000, SHAPES, 2))
    next(batches)
    children = _children() - before
    assert len(children) == 2
    batches.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.05)
    assert not any(_alive(p) for p in children)


def _children() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == os.getpid() and _alive(int(p))}


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_equal_distributed_samplers_with_more_ranks_than_indices(drop_last):
    """Every rank gets len(sampler) indices, as torch's DistributedSampler lays them out, even
    when the order must be repeated several times to reach the world size."""
    from torch.utils.data import DistributedSampler

    for length in range(1, 7):
        for world in range(1, 14):
            ours = [ResumableSampler(length, r, world, shuffle=False, drop_last=drop_last) for r in range(world)]
            theirs = [DistributedSampler(range(length), world, r, shuffle=False, drop_last=drop_last) for r in range(world)]
            for mine, reference in zip(ours, theirs):
                assert len(mine) == len(reference) and list(mine) == list(reference), (length, world)
            if not drop_last:
                assert {i for sampler in ours for i in sampler} == set(range(length))


def test_sampler_resumes_exactly_when_its_order_is_repeated():
    sampler = ResumableSampler(3, rank=5, world_size=8, seed=2)  # 3 indices repeated to 8 ranks
    first = list(sampler)
    assert len(first) == len(sampler) == 1 and sampler.state_dict()["epoch"] == 1
    resumed = ResumableSampler(3, rank=5, world_size=8, seed=2)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == list(sampler)  # both give epoch 1's index
    longer = ResumableSampler(5, rank=1, world_size=3, seed=2)  # 5 indices padded to 6: two per rank
    head = next(iter(longer))
    state = longer.state_dict()
    again = ResumableSampler(5, rank=1, world_size=3, seed=2)
    again.load_state_dict(state)
    assert [head, *again] == list(ResumableSampler(5, rank=1, world_size=3, seed=2))
