"""Work units, their slicing across array tasks, done-records and resume.

A plan depends only on the sorted inputs (paths and sizes) and the unit size, never on the
number of workers or tasks, so every Slurm array task computes the same plan.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prep import sources
from prep.errors import PrepError

WORKDIR = ".prep"
LOCK = "lock"  # in WORKDIR; kept by clear_workdir so a run's claim survives its own --overwrite
MIN_UNIT, MAX_UNIT = 8 << 20, 256 << 20


@dataclass(frozen=True)
class Unit:
    index: int
    path: str
    start: int
    stop: int

    @property
    def id(self) -> str:
        return f"{self.index:07d}"


def default_unit_bytes(total_bytes: int) -> int:
    """About 256 units for the corpus, within [8 MiB, 256 MiB]: small enough to balance 2..N
    workers, large enough that per-unit costs vanish."""
    return min(MAX_UNIT, max(MIN_UNIT, -(-total_bytes // 256)))


def make_plan(inputs: list[str], unit_bytes: int | None) -> dict:
    files = sources.expand_inputs(inputs)
    # The modification time too: a file rewritten with the same size is another input.
    described = [{"path": str(p), "bytes": (st := p.stat()).st_size, "mtime_ns": st.st_mtime_ns} for p in files]
    unit_bytes = unit_bytes or default_unit_bytes(sum(f["bytes"] for f in described))
    units = []
    for path in files:
        for start, stop in sources.plan_file(path, unit_bytes):
            units.append(Unit(len(units), str(path), start, stop))
    return {"inputs": described, "unit_bytes": unit_bytes, "units": [asdict(u) for u in units]}


def units_of(plan: dict) -> list[Unit]:
    return [Unit(**u) for u in plan["units"]]


def task_units(units: list[Unit], task: int, tasks: int) -> list[Unit]:
    """Round-robin slice of the units for array task `task` of `tasks` (0-based)."""
    return [u for u in units if u.index % tasks == task]


def parse_task(text: str | None) -> tuple[int, int]:
    """--task I/N, else Slurm's array variables, else the whole job (0, 1)."""
    if text:
        try:
            task, tasks = (int(x) for x in text.split("/"))
        except ValueError:
            raise PrepError(f"--task {text!r}: expected I/N, e.g. 3/16") from None
    elif "SLURM_ARRAY_TASK_ID" in os.environ:
        task = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        tasks = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    else:
        return 0, 1
    if tasks < 1:
        raise PrepError(f"--task {task}/{tasks}: N is the number of tasks, at least 1")
    if not 0 <= task < tasks:
        raise PrepError(f"task {task} is outside 0..{tasks - 1}")
    return task, tasks


def claim_output(out: Path, fingerprint: str, overwrite: bool, clear, what: str, log, alone: bool = False) -> None:
    """Refuse an output folder holding work made under another fingerprint (finished, or a run in
    progress) unless `overwrite`; with `overwrite`, `clear(out)` removes that earlier work. A run
    `alone` (the whole job, whose lock excludes every other task) also clears an earlier run that
    committed nothing, such as one that stopped loading broken weights: there is nothing to keep."""
    from loaders.manifest import MANIFEST_NAME

    manifest, state = out / MANIFEST_NAME, out / WORKDIR / "job.json"
    source = manifest if manifest.exists() else state if state.exists() else None
    if source is None:
        return
    existing = json.loads(source.read_text()).get("fingerprint")
    if existing != fingerprint and not overwrite:
        if source is state and alone and not _committed(out / WORKDIR):
            log(f"{out}: the earlier run here committed nothing; starting afresh")
            clear(out)
            return
        raise PrepError(f"{out}: holds {what} (fingerprint {existing}, now {fingerprint}); "
                        "rerun with the same options to resume, or pass --overwrite to replace it")
    if overwrite:
        log(f"--overwrite: removing the earlier output in {out}")
        clear(out)


def _committed(workdir: Path) -> bool:
    """Whether a run left any done-record or journaled batch."""
    done = workdir / "done"
    journals = (workdir / "journal").glob("*.jsonl") if (workdir / "journal").is_dir() else ()
    return (done.is_dir() and any(done.iterdir())) or any(j.stat().st_size for j in journals)


@contextlib.contextmanager
def output_lock(out: Path, task: int = 0, tasks: int = 1):
    """Hold this run's claim on `out`: a whole run (or finalize) locks the whole lock file, array
    task I of N only its byte 1 + I, so Slurm tasks run side by side while a second copy of the
    same command stops at once with one line (it would redo the work and trip over the first
    one's finalize). POSIX record locks: released when the process dies, not inherited by the
    forked workers. Where the filesystem has no locks the run goes on unguarded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepError(f"{out}: exists and is not a folder; choose another output")
    made = not out.exists()
    workdir = out / WORKDIR
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PrepError(f"{out}: can't write here ({exc.strerror})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, *((0, 0) if tasks == 1 else (1, 1 + task)))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            what = "this output" if tasks == 1 else f"task {task}/{tasks} of this output (or all of it)"
            raise PrepError(f"{out}: another prep run is writing {what} now; wait for it to end (or stop it), "
                            "then rerun to resume") from None
    try:
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):  # a finished run, or one stopped before it wrote state, leaves no lock
            if os.listdir(workdir) == [LOCK]:
                (workdir / LOCK).unlink()
                workdir.rmdir()
                if made:
                    out.rmdir()


def clear_workdir(out: Path) -> None:
    """Remove a run's work folder, all but the lock a live run holds there."""
    workdir = Path(out) / WORKDIR
    for path in workdir.iterdir() if workdir.is_dir() else []:
        if path.name != LOCK:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def default_workers() -> int:
    """CPUs this process may use: its affinity mask, capped by Slurm's allocation."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    return max(1, min(cpus, int(slurm)) if slurm else cpus)


def write_json_atomic(path: Path, value: dict) -> None:
    """Write to a temporary name, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing these bytes to disk without waiting (Linux's sync_file_range), so that the
    fsync which makes a part durable later waits for little; elsewhere, nothing."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def done_path(workdir: Path, unit: Unit) -> Path:
    return workdir / "done" / f"{unit.id}.json"


def load_done(workdir: Path, unit: Unit, fingerprint: str, parts: int | None = None) -> dict | None:
    """The unit's done-record if it finished under this fingerprint (and wrote parts of this
    format, when given: an older prep's parts are redone), else None."""
    path = done_path(workdir, unit)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != fingerprint or record.get("unit") != asdict(unit):
        return None
    if parts is not None and record.get("parts") != parts:
        return None
    return record


def stop_pool(pool) -> None:
    """Stop a `ProcessPoolExecutor` now: queued units are dropped and running workers killed
    (their units leave no done-record, so a rerun does them again). `shutdown` alone would let
    the running ones finish first."""
    pool.shutdown(wait=False, cancel_futures=True)
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def die_with_parent() -> None:
    """Have the kernel kill this (worker) process when the process that forked it dies, however
    it dies: orphaned workers would run on, or print tracebacks into a dead pipe. Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
