"""Rank-sharded, resumable sampling and a DataLoader that prefetches batches to the device."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import queue
import struct
import threading
import traceback

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler, resumable: a seeded permutation per epoch (or the identity),
    padded by repeating it to len(self) * world_size (cut to a multiple of world_size with
    drop_last), rank r taking every world_size-th index from r.

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
        # Repeated as often as it takes, not once: with more ranks than indices every rank still
        # gets len(self) of them (a rank without a batch hangs the others' collectives).
        total = len(self) * self.world_size
        order = np.resize(order, total) if total > len(order) else order[:total]
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
        # From what was delivered, not what the workers fetched ahead: after a break, iterating
        # again goes on with the next undelivered batch.
        self.load_state_dict(self.state_dict())
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


_TORCH_DTYPES = {np.dtype(t): getattr(torch, t) for t in ("bool", "uint8", "int16", "int32", "int64", "float32")}


class SharedBatches:
    """Fixed-layout batches made by forked worker processes straight into shared memory.

    torch's DataLoader hands every batch over by pickling it and a shared-memory file per tensor:
    about 1 ms a batch on a small machine, which caps small batches at a few thousand samples a
    second. Here the slots of one anonymous shared mapping are made before the fork, worker w
    fills batches w, w + W, ... into them, and only 16-byte messages cross the pipes.

    `fill(k, arrays)` writes batch k into `arrays` ({name: numpy array of `shapes[name]`}); it
    runs in the workers (or here, with `num_workers=0` or where fork is unavailable). Iterating
    yields, in order, each batch's slot as one uint8 array and as its arrays: valid until the next
    batch is asked for, so the consumer copies what it keeps (a device copy of the slot can be
    `unpack`ed)."""

    _HEADER = struct.Struct("qq")  # batch number (-1: stop), then 0 or the length of an error text

    def __init__(self, fill, count: int, shapes: dict, num_workers: int, depth: int = 4):
        self.fill, self.count = fill, count
        self.num_workers = num_workers if num_workers and "fork" in mp.get_all_start_methods() else 0
        self.slots = max(1, self.num_workers * depth)
        self.layout, offset = [], 0
        for name, (shape, dtype) in shapes.items():
            dtype = np.dtype(dtype)
            size = int(np.prod(shape)) * dtype.itemsize
            self.layout.append((name, offset, size, tuple(shape), dtype, _TORCH_DTYPES[dtype]))
            offset += -(-size // 64) * 64  # 64-byte aligned arrays
        self.slot_bytes = max(64, offset)

    def _views(self, buffer) -> tuple[list[np.ndarray], list[dict]]:
        raw = np.frombuffer(buffer, np.uint8).reshape(-1, self.slot_bytes)
        return list(raw), [{name: np.ndarray(shape, dtype, buffer=buffer, offset=slot * self.slot_bytes + offset)
                            for name, offset, _, shape, dtype, _ in self.layout} for slot in range(len(raw))]

    def unpack(self, block: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed views of a copy of one slot (a uint8 tensor, on any device)."""
        return {name: block[offset:offset + size].view(torch_dtype).view(shape)
                for name, offset, size, shape, _, torch_dtype in self.layout}

    def __iter__(self):
        if not self.num_workers or not self.count:
            raw, views = self._views(bytearray(self.slot_bytes))
            for k in range(self.count):
                self.fill(k, views[0])
                yield raw[0], views[0]
            return
        buffer = mmap.mmap(-1, self.slots * self.slot_bytes)  # anonymous and shared: forked workers write into it
        raw, views = self._views(buffer)
        workers, tasks, results = [], [], []
        context = mp.get_context("fork")
        try:
            for w in range(self.num_workers):
                task_r, task_w = os.pipe()
                done_r, done_w = os.pipe()
                parents = [*tasks, *results, task_w, done_r]  # the worker keeps only its own ends
                process = context.Process(target=self._serve, args=(views, task_r, done_w, parents), daemon=True)
                process.start()
                os.close(task_r)
                os.close(done_w)
                workers.append(process)
                tasks.append(task_w)
                results.append(done_r)
            credit = max(1, self.slots // self.num_workers // 2)  # freed slots a worker is told of at once
            pending: list[list[int]] = [[] for _ in range(self.num_workers)]

            def release(k: int, slot: int, flush: bool = False) -> None:
                w = k % self.num_workers
                if k < self.count:
                    pending[w] += (k, slot)
                if pending[w] and (flush or len(pending[w]) >= 2 * credit):
                    os.write(tasks[w], struct.pack(f"{len(pending[w])}q", *pending[w]))
                    pending[w].clear()

            first = min(self.slots, self.count)
            for k in range(first):
                release(k, k % self.slots, flush=k >= first - self.num_workers)
            for k in range(self.count):
                w = k % self.num_workers
                done, error = self._HEADER.unpack(_read(results[w], self._HEADER.size, workers[w]))
                if error:
                    raise RuntimeError(f"loader worker failed on batch {done}:\n{_read(results[w], error).decode()}")
                yield raw[k % self.slots], views[k % self.slots]
                # the consumer is done with this slot: batch k + slots may go in it. A worker
                # about to run dry is told at once; otherwise a few slots at a time.
                release(k + self.slots, k % self.slots, flush=k + self.slots + self.num_workers * credit >= self.count)
        finally:
            for fd in tasks:
                try:
                    os.write(fd, self._HEADER.pack(-1, 0))
                except OSError:
                    pass
                os.close(fd)
            for process in workers:
                process.join(timeout=5)
                if process.is_alive():
                    process.terminate()
            for fd in results:
                os.close(fd)
            del raw, views
            try:
                buffer.close()
            except BufferError:  # the consumer still holds the last batch: unmapped when it lets go
                pass

    def _serve(self, views: list[dict], task_r: int, done_w: int, parents: list[int]) -> None:
        for fd in parents:
            os.close(fd)
        received = b""
        while True:
            block = os.read(task_r, 1 << 12)
            if not block:
                return
            received += block
            usable = len(received) // 16 * 16
            tasks, received = struct.unpack(f"{usable // 8}q", received[:usable]), received[usable:]
            for k, slot in zip(tasks[::2], tasks[1::2]):
                if k < 0:
                    return
                try:
                    self.fill(k, views[slot])
                except BaseException:
                    text = traceback.format_exc().encode()
                    os.write(done_w, self._HEADER.pack(k, len(text)) + text)
                    return
                os.write(done_w, self._HEADER.pack(k, 0))


def _read(fd: int, size: int, process=None) -> bytes:
    data = b""
    while len(data) < size:
        block = os.read(fd, size - len(data))
        if not block:
            code = process.exitcode if process is not None else None
            raise RuntimeError(f"a loader worker exited (exit code {code})")
        data += block
    return data
