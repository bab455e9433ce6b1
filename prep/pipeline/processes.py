"""Process control: how many workers, workers that die with their parent, stopping a pool now."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def default_workers() -> int:
    """CPUs this process may use: its affinity mask, capped by Slurm's allocation."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    return max(1, min(cpus, int(slurm)) if slurm else cpus)


def die_with_parent() -> None:
    """Have the kernel kill this (worker) process when the process that forked it dies, however
    it dies: orphaned workers would run on, or print tracebacks into a dead pipe. Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_pool(pool) -> None:
    """Stop a `ProcessPoolExecutor` now: queued work is dropped and running workers killed
    (`shutdown` alone would let them finish first). Returns once the pool has let go of its
    processes and its manager thread."""
    # No public handles before Python 3.14, and `shutdown` drops these, so they are taken first.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()
    # The manager thread closes the pool's wake-up pipe on its way out. Left running, it races
    # Python 3.11's exit hook, which writes to that pipe: "OSError: Bad file descriptor" at exit.
    if manager is not None:
        manager.join()


def stop_processes(processes) -> None:
    """Terminate and reap `multiprocessing.Process`es still running."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()
