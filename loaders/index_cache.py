"""The index cache: arrays saved as `<stem>-<name>.npy` whose stem hashes everything they depend
on, built once (rank 0 under torch.distributed), then only memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

CACHE_WAIT_S = 3600  # how long ranks other than 0 wait for rank 0's index files


def in_threads(function, arguments) -> list:
    """[function(*a) for a in arguments], on one thread per CPU: the datasets of a blend build
    their indices independently, and numpy's shuffles and array passes release the GIL."""
    arguments = list(arguments)
    workers = min(len(arguments), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1:
        return [function(*a) for a in arguments]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: function(*a), arguments))


def digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def _cache_paths(stem: Path, names: tuple[str, ...]) -> list[Path]:
    return [stem.with_name(f"{stem.name}-{name}.npy") for name in names]


def must_build(stem: Path, names: tuple[str, ...]) -> bool:
    """Whether this process will build these cached arrays (rank 0, and they are missing)."""
    return _rank() == 0 and not all(p.exists() for p in _cache_paths(stem, names))


# np.load reads a .npy header with ast.literal_eval, and CPython 3.11's parser is not safe to run
# in two threads at once ("SystemError: AST constructor recursion depth mismatch"): the sources
# of a blend open their caches in threads (`in_threads`).
_NPY_HEADERS = threading.Lock()


def cached(stem: Path, names: tuple[str, ...], build) -> list[np.ndarray]:
    """Arrays in `<stem>-<name>.npy`, memory-mapped. Missing ones are built and saved (write, then
    rename); under torch.distributed only rank 0 builds and the other ranks wait for its files.
    Builders of the same cache at once (a blend naming one dataset twice, jobs sharing a cache
    folder) may each build it: every one writes its own file and renames it into place whole."""
    paths = _cache_paths(stem, names)
    if not all(p.exists() for p in paths):
        if _rank() == 0:
            stem.parent.mkdir(parents=True, exist_ok=True)
            for path, array in zip(paths, build()):
                _save(path, array)
        else:
            deadline = time.monotonic() + CACHE_WAIT_S
            while not all(p.exists() for p in paths):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{paths[0]}: rank 0 wrote no index cache in {CACHE_WAIT_S}s; "
                                       "every rank must build the same datasets, with a shared cache folder")
                time.sleep(0.2)
    with _NPY_HEADERS:
        return [np.asarray(np.load(p, mmap_mode="r")) for p in paths]  # plain arrays: np.memmap indexes slowly


def _save(path: Path, array: np.ndarray) -> None:
    """`np.save` to `path` atomically: readers see no file or all of it."""
    # A name of this host, process and thread (cache folders may be shared between nodes):
    # another writer of the same file never truncates ours.
    tmp = path.with_name(f"{path.name}.{os.uname().nodename}-{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
