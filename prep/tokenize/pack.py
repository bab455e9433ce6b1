"""Offline sequence packing: best-fit decreasing over a bounded window, seeded and deterministic.

Samples are taken in order, `window` at a time (memory stays flat in corpus size). Within a
window they are sorted by length, longest first (ties in a seeded random order), and each goes
into the open pack with the least room that still fits it, or a new pack. A window's packs are
emitted in a seeded random order, then the next window starts with no open packs.
"""

from __future__ import annotations

import bisect

import numpy as np


def plan_packs(lengths: np.ndarray, capacity: int, window: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(order, pack_sizes): sample indices in packed order, and the number of samples per pack."""
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"a sample of {int(lengths.max())} tokens does not fit a pack of {capacity}")
    rng = np.random.default_rng(seed)
    order, sizes = [], []
    for start in range(0, len(lengths), window):
        chunk = lengths[start:start + window]
        ties = rng.permutation(len(chunk))
        by_length = np.lexsort((ties, -chunk.astype(np.int64)))
        packs: list[list[int]] = []
        room: list[tuple[int, int]] = []  # (remaining capacity, pack number), sorted
        for i in by_length:
            need = int(chunk[i])
            at = bisect.bisect_left(room, (need, -1))
            if at < len(room):
                left, number = room.pop(at)
            else:
                left, number = capacity, len(packs)
                packs.append([])
            packs[number].append(start + int(i))
            if left - need > 0:
                bisect.insort(room, (left - need, number))
        for number in rng.permutation(len(packs)):
            order.extend(packs[number])
            sizes.append(len(packs[number]))
    return np.array(order, np.int64), np.array(sizes, np.int64)
