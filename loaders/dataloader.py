"""Rank-sharded, resumable sampling and a DataLoader that prefetches batches to the device."""

from __future__ import annotations

import threading
import queue

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """DistributedSampler-like: a seeded permutation per epoch (or the identity), padded by
    wrapping to a multiple of world_size, rank r taking every world_size-th index from r.

    `state_dict()` holds the epoch and how many indices this rank has handed out, so a loader
    rebuilt with `load_state_dict` continues with exactly the next index."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.consumed = 0, 0

    def _indices(self) -> np.ndarray:
        order = (np.random.default_rng((self.seed, self.epoch)).permutation(self.length) if self.shuffle
                 else np.arange(self.length))
        if self.drop_last:
            order = order[: len(order) - len(order) % self.world_size]
        elif len(order) % self.world_size:
            order = np.concatenate([order, order[: self.world_size - len(order) % self.world_size]])
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        per_rank = self.length // self.world_size
        return per_rank if self.drop_last or self.length % self.world_size == 0 else per_rank + 1

    def __iter__(self):
        indices = self._indices()
        while self.consumed < len(indices):
            self.consumed += 1
            yield int(indices[self.consumed - 1])
        self.epoch, self.consumed = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.seed = state["epoch"], state["consumed"], state["seed"]


class ResumableLoader:
    """A DataLoader over a ResumableSampler whose state counts delivered batches, not prefetched
    ones: `state_dict()` after k batches resumes at batch k+1 whatever the worker prefetch."""

    def __init__(self, dataset, sampler: ResumableSampler, batch_size: int, num_workers: int = 0,
                 collate_fn=None, device: str | torch.device = "cpu", prefetch: int = 2):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.device = torch.device(device)
        self.loader_kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                  pin_memory=self.device.type == "cuda", drop_last=False,
                                  persistent_workers=False, prefetch_factor=prefetch if num_workers else None)
        self.prefetch = prefetch
        self._start = dict(sampler.state_dict())
        self._delivered = 0

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        self._start = dict(self.sampler.state_dict())
        self._delivered = 0
        batches = DataLoader(self.dataset, sampler=self.sampler, **self.loader_kwargs)
        for batch in to_device(iter(batches), self.device, self.prefetch):
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict:
        consumed = self._start["consumed"] + self._delivered * self.batch_size
        epoch = self._start["epoch"]
        if consumed >= len(self.sampler):
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "consumed": consumed, "seed": self._start["seed"]}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._start, self._delivered = dict(state), 0


def to_device(batches, device: torch.device, depth: int = 2):
    """Yield batches moved to `device`; on CUDA, copies are non-blocking from pinned memory and
    run on a background thread `depth` batches ahead of the consumer."""
    if device.type != "cuda":
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stream = torch.cuda.Stream(device)
    done = object()

    def worker():
        try:
            with torch.cuda.stream(stream):
                for batch in batches:
                    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                    event = torch.cuda.Event()
                    event.record(stream)
                    ready.put((moved, event))
        finally:
            ready.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := ready.get()) is not done:
        moved, event = item
        torch.cuda.current_stream(device).wait_event(event)
        yield moved
