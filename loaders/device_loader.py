"""Batches moved to the GPU while the model works: pinned staging, non-blocking copies on a
background stream (GPTDataset.dataloader(device="cuda"))."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from loaders.dataloader import SharedBatches


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

    def __init__(self, dataset: "GPTDataset", batch_size: int, rank: int, world_size: int,  # noqa: F821 (loaders.gpt's)
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
