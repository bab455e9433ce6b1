"""An output's work folder (OUT/.prep): the claim and lock on the output, the plan, the job, and
the done-records that make a rerun resume.

    OUT/.prep/lock        POSIX record locks: the whole file for a whole run, byte 1+I for array task I
    OUT/.prep/job.json    the stage's job state (fingerprint, config, what workers need)
    OUT/.prep/plan.json   the units; the one file every task and the finalize read the plan from
    OUT/.prep/done/N.json a unit's done-record (unit, fingerprint, counts): written last, by rename
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from prep.errors import PrepError
from prep.pipeline import durable
from prep.pipeline.units import Unit, units_of

WORKDIR = ".prep"
LOCK = "lock"  # kept by clear_workdir so a run's claim survives its own --overwrite
MANIFEST_NAME = "manifest.json"  # as loaders.manifest names it


def workdir_of(out: Path) -> Path:
    return Path(out) / WORKDIR


def read_plan(workdir: Path) -> dict:
    return json.loads((Path(workdir) / "plan.json").read_text())


def plan_units(workdir: Path) -> list[Unit]:
    return units_of(read_plan(workdir))


def write_plan(workdir: Path, plan: dict, changed: str) -> None:
    """Write the plan of a new run, or check that a resumed run's plan is the one it started with
    (else `changed`, the stage's one line naming what differs)."""
    path = Path(workdir) / "plan.json"
    if path.exists():
        if read_plan(workdir) != plan:
            raise PrepError(changed)
    else:
        durable.write_json(path, plan)


def read_job(workdir: Path) -> dict:
    return json.loads((Path(workdir) / "job.json").read_text())


def write_job(workdir: Path, job: dict) -> None:
    durable.write_json(Path(workdir) / "job.json", {k: v for k, v in job.items() if k != "complete"})


def claim_output(out: Path, fingerprint: str, overwrite: bool, clear, what: str, log, alone: bool = False) -> None:
    """Refuse an output folder holding work made under another fingerprint (finished, or a run in
    progress) unless `overwrite`; with `overwrite`, `clear(out)` removes that earlier work. A run
    `alone` (the whole job, whose lock excludes every other task) also clears an earlier run that
    committed nothing, such as one that stopped loading broken weights: there is nothing to keep."""
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
    """Whether a run left any done-record or journaled batch (a stage's own `journal/` folder)."""
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


SLURM = "slurm"  # `prep slurm`'s scripts and logs: kept when the run's work is removed


def _remove_all_but(workdir: Path, keep: tuple[str, ...]) -> None:
    for path in workdir.iterdir() if workdir.is_dir() else []:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def clear_workdir(out: Path) -> None:
    """Remove a run's work folder, all but the lock a live run holds there (and the Slurm scripts)."""
    _remove_all_but(Path(out) / WORKDIR, (LOCK, SLURM))


def remove_workdir(workdir: Path) -> None:
    """A finished run's work folder, gone; the Slurm scripts and logs stay (they are the job's record)."""
    workdir = Path(workdir)
    if (workdir / SLURM).is_dir():
        _remove_all_but(workdir, (SLURM,))
    else:
        shutil.rmtree(workdir, ignore_errors=True)


RUNNING = "running"  # a unit's claim while a process works on it (prep status: in progress)


def claim_unit(workdir: Path, unit: Unit) -> None:
    """Say this process works on `unit` now (host and pid; not durable: only prep status reads it)."""
    import socket

    folder = Path(workdir) / RUNNING
    folder.mkdir(exist_ok=True)
    (folder / f"{unit.id}.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))


def release_unit(workdir: Path, unit: Unit) -> None:
    (Path(workdir) / RUNNING / f"{unit.id}.json").unlink(missing_ok=True)


def claims(workdir: Path) -> dict[str, dict]:
    """unit id -> its claim, for the units some process started and has not finished or released."""
    found = {}
    for path in (Path(workdir) / RUNNING).glob("*.json") if (Path(workdir) / RUNNING).is_dir() else ():
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def done_path(workdir: Path, unit: Unit) -> Path:
    return Path(workdir) / "done" / f"{unit.id}.json"


def write_done(workdir: Path, unit: Unit, record: dict) -> None:
    durable.write_json(done_path(workdir, unit), record)


def load_done(workdir: Path, unit: Unit, fingerprint: str, parts: int | None = None) -> dict | None:
    """The unit's done-record if it finished under this fingerprint (and wrote parts of this
    format, when given: an older prep's parts are redone), else None."""
    try:
        record = json.loads(done_path(workdir, unit).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != fingerprint or record.get("unit") != unit.to_json():
        return None
    if parts is not None and record.get("parts") != parts:
        return None
    return record


def all_done(workdir: Path, fingerprint: str, parts: int | None = None) -> tuple[list[dict], list[Unit]]:
    """(done-records, units still missing) over the whole plan."""
    records, missing = [], []
    for unit in plan_units(workdir):
        record = load_done(workdir, unit, fingerprint, parts)
        (records.append(record) if record else missing.append(unit))
    return records, missing


def finished_records(workdir: Path, fingerprint: str, parts: int | None, out: Path, first) -> list[dict]:
    """Every unit's done-record, for finalize; else one line naming the first unit still missing
    (`first(unit)` says it in the stage's words)."""
    records, missing = all_done(workdir, fingerprint, parts)
    if missing:
        raise PrepError(f"{out}: {len(missing)} of {len(records) + len(missing)} units are not done yet "
                        f"(first: {first(missing[0])}); run the remaining tasks first")
    return records


def skipped_stats(records: list[dict], max_examples: int = 10) -> dict:
    """The manifest's bad-record stats over the done-records: counts by reason, total, a few examples."""
    skipped: dict[str, int] = {}
    examples: list[str] = []
    for r in records:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
        examples.extend(r["examples"][: max(0, max_examples - len(examples))])
    return {"skipped": skipped, "skipped_total": sum(skipped.values()), "skipped_examples": examples}


def skipped_line(stats: dict) -> list[str]:
    """The summary's line of skipped records, if any."""
    if not stats["skipped_total"]:
        return []
    return [f"skipped     {stats['skipped_total']:,}: " + ", ".join(f"{k} {v:,}" for k, v in stats["skipped"].items())]


def remove_stale(paths) -> None:
    """Temporaries a killed run left (dot-named `.NAME.tmp.PID`): never renamed, never needed."""
    for stale in paths:
        stale.unlink(missing_ok=True)
