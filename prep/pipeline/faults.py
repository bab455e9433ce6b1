"""Fault hooks for the tests, in one place: each fires only when its PREP_TEST_* variable is set.

They put a run exactly at the moment a test means (a worker killed at unit N, a Ctrl-C after N
units, a crash between two batches or inside finalize), whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import time


def _get(name: str) -> str | None:
    return os.environ.get(f"PREP_TEST_{name}")


def kill_worker_at_unit(index: int) -> None:
    """PREP_TEST_KILL_WORKER_AT_UNIT=N: the worker starting unit N is killed, as the OOM killer does."""
    if _get("KILL_WORKER_AT_UNIT") == str(index):
        os.kill(os.getpid(), signal.SIGKILL)


def after_units_done(done: int) -> None:
    """In the driver, after `done` units of this run finished. PREP_TEST_KILL_AFTER_UNITS=N: kill -9
    of the whole process group (main process and workers) once N units are done.
    PREP_TEST_INTERRUPT_AFTER_UNITS=N: SIGINT to the process group, as a terminal's Ctrl-C sends it.
    PREP_TEST_SIGNAL_SENT=FILE is written just before the signal, for a test to time what follows."""
    for name, sig in (("KILL_AFTER_UNITS", signal.SIGKILL), ("INTERRUPT_AFTER_UNITS", signal.SIGINT)):
        if _get(name) == str(done):
            if _get("SIGNAL_SENT"):
                with open(_get("SIGNAL_SENT"), "w") as f:
                    f.write(f"{time.time()}\n")
            os.killpg(os.getpgid(0), sig)


def hold_after_units(done: int) -> None:
    """PREP_TEST_HOLD_AFTER_UNITS=N with PREP_TEST_HOLD_TASK=I: Slurm array task I, once N units are
    committed, writes PREP_TEST_HOLD_FILE and waits there until it is killed (a test scancels it
    at that moment: a task cancelled while it holds units)."""
    if _get("HOLD_AFTER_UNITS") != str(done):
        return
    task = int(os.environ.get("PREP_TASK_OFFSET", "0")) + int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
    if _get("HOLD_TASK") == str(task):
        with open(_get("HOLD_FILE"), "w") as f:
            f.write(f"{os.getpid()}\n")
        signal.pause()


def crash_in_finalize() -> None:
    """PREP_TEST_CRASH_IN_FINALIZE: die after the shards are written, before the manifest."""
    if _get("CRASH_IN_FINALIZE"):
        os._exit(70)


def crash_after_batches(batches: int) -> None:
    """PREP_TEST_CRASH_AFTER_BATCHES=N: the latents encoder dies once it has committed N batches."""
    limit = int(_get("CRASH_AFTER_BATCHES") or 0)
    if limit and batches >= limit:
        os._exit(70)


def decoder_dies_on(path: str) -> None:
    """PREP_TEST_DECODER_DIES_ON=TEXT: a media decoder process dies on a file whose name holds TEXT."""
    text = _get("DECODER_DIES_ON")
    if text and text in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGKILL)
