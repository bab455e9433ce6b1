"""`stop_pool` returns only once the pool has let go of its processes, its manager thread and
its wake-up pipe, so nothing of it is left for Python's exit hook to trip over."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from prep.pipeline.processes import stop_pool


def _block(path: str) -> None:
    open(path, "w").close()  # the test waits for this file, not for time
    signal.pause()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _started(path: str) -> None:
    while not os.path.exists(path):
        os.sched_yield()


def _stopped(pool: ProcessPoolExecutor) -> None:
    """Stop the pool; assert that its processes, manager thread and wake-up pipe are gone."""
    processes = list(pool._processes.values())
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    stop_pool(pool)
    assert processes and all(p.exitcode is not None for p in processes)
    assert not manager.is_alive() and wakeup._closed


def test_a_pool_with_work_running_is_released(tmp_path):
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
    marker = str(tmp_path / "started")
    future = pool.submit(_block, marker)
    _started(marker)
    _stopped(pool)
    with pytest.raises(BrokenProcessPool):
        future.result()


def test_a_pool_whose_worker_died_is_released():
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))
    with pytest.raises(BrokenProcessPool):
        pool.submit(_die).result()
    _stopped(pool)


def test_a_process_that_stops_a_broken_pool_exits_without_a_traceback():
    script = (
        "import os, signal, multiprocessing as mp\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from prep.pipeline.processes import stop_pool\n"
        "pool = ProcessPoolExecutor(2, mp_context=mp.get_context('fork'))\n"
        "future = pool.submit(os.kill, 0, 0)\n"
        "future.result()\n"
        "for p in list(pool._processes.values()): os.kill(p.pid, signal.SIGKILL)\n"
        "stop_pool(pool)\n"
        "raise SystemExit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == ""
