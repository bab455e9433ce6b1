"""The local executor: run units on this machine, in this process or in worker processes.

It knows nothing of what runs. A stage hands it a worker factory, `factory(job, slot, child)`,
whose worker has `run(units, report)` (take units from an iterable, `report(kind, value)` as it
goes) and `close()`, and one slot per worker (None, or a device name). One slot runs here; more
start one process each that take units from a shared queue (work stealing). A worker that dies
without a word (the OOM killer, kill -9) stops the run with one line instead of leaving it waiting;
an error in a worker stops the others and is raised here; so is Ctrl-C, which the workers ignore
(the terminal sends it to the whole group: this process stops them).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal

from prep.errors import PrepError
from prep.pipeline.processes import die_with_parent, stop_processes
from prep.pipeline.units import Unit

POLL_S = 0.5  # how often a silent results queue makes us look for a dead worker


def _queued(units):
    while (unit := units.get()) is not None:
        yield Unit.from_json(unit)


def _portable(exc: BaseException, where: str) -> BaseException:
    """What crosses back to the main process: prep's own errors and the system's (a full disk) as
    they are; anything else as one line naming the worker."""
    if isinstance(exc, (PrepError, OSError)):
        return exc
    return PrepError(f"{where}: {type(exc).__name__}: {exc}")


def _child(factory, job, slot, number: int, units, results, where: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    die_with_parent()
    worker = None
    try:
        worker = factory(job, slot, True)
        worker.run(_queued(units), lambda kind, value: results.put((kind, value)))
        results.put(("exit", number))
    except BaseException as exc:  # reported, then the main process stops the others
        results.put(("error", _portable(exc, where)))
    finally:
        if worker is not None:
            worker.close()


class LocalExecutor:
    """Runs a stage's units on this machine."""

    def run(self, factory, job: dict, slots: list, units: list[Unit], report, start_method: str = "fork",
            while_running=None, died=None) -> None:
        """Run `units` on one worker per slot. `while_running()` runs here once the workers start
        (tokenize's backend probe); `died(slot, how)` is the one line for a worker that died."""
        died = died or (lambda slot, how: f"a worker process died ({how}; out of memory?); the units finished so far "
                                          "are kept: rerun the same command to resume")
        if len(slots) == 1:
            worker = factory(job, slots[0], False)
            try:
                if while_running is not None:
                    while_running()
                worker.run(iter(units), report)
            finally:
                worker.close()
            return
        context = mp.get_context(start_method if start_method in mp.get_all_start_methods() else "spawn")
        unit_queue, results = context.Queue(), context.Queue()
        for unit in units:
            unit_queue.put(unit.to_json())
        for _ in slots:
            unit_queue.put(None)
        processes = [context.Process(target=_child, args=(factory, job, slot, i, unit_queue, results,
                                                          str(slot) if slot is not None else "worker"))
                     for i, slot in enumerate(slots)]
        for process in processes:
            process.start()
        try:
            if while_running is not None:
                while_running()
            running = set(range(len(processes)))
            while running:
                try:
                    kind, value = results.get(timeout=POLL_S)
                except queue.Empty:  # a process killed (OOM, kill -9) says nothing: look for it
                    dead = [i for i in running if processes[i].exitcode is not None]
                    if dead and results.empty():
                        code = processes[dead[0]].exitcode
                        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                        raise PrepError(died(slots[dead[0]], how))
                    continue
                if kind == "exit":
                    running.discard(value)
                elif kind == "error":
                    raise value
                else:
                    report(kind, value)
        finally:
            stop_processes(processes)
            for q in (unit_queue, results):
                q.cancel_join_thread()
                q.close()
