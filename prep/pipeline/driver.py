"""The driver: everything around a stage's units, once for every stage.

Claim the output and hold its lock, resume (units with a done-record under this fingerprint are
not run again), remove a killed run's temporaries, the progress bar, a run of array task I of N,
Ctrl-C and dead workers as one line (through the executor and prep.cli.errors), finalize and the
manifest, the summary at the end.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from prep.errors import PrepError
from prep.pipeline import faults, workdir as wd
from prep.pipeline.local import LocalExecutor
from prep.pipeline.stage import Stage, stage_for
from prep.pipeline.units import Unit, parse_task, task_units


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Run:
    """What a stage's `execute` gets: where units run, and where to report what they did."""

    executor: LocalExecutor
    report: object  # report(kind, value): ("progress", n) or ("done", done-record)
    log: object
    totals: dict = field(default_factory=dict)


def run_stage(stage: Stage, output: str, overwrite: bool, task: str | None, progress: bool | None, started: float,
              log=echo) -> dict | None:
    """Prepare, run this task's units, and (a whole run) finalize. Returns the manifest, if any."""
    task_id, tasks = parse_task(task)
    progress = sys.stderr.isatty() if progress is None else progress
    with wd.output_lock(Path(output), task_id, tasks):
        job = stage.prepare(overwrite, log, alone=tasks == 1)
        out = Path(job["out"])
        if job["complete"]:
            log(f"{output}: already complete ({stage.same}); nothing to do")
            manifest = json.loads((out / wd.MANIFEST_NAME).read_text())
            say(stage.summary(manifest, None, time.time() - started))
            return manifest
        units = task_units(wd.plan_units(job["workdir"]), task_id, tasks)
        totals = run_units(stage, job, units, progress, log, whole=tasks == 1)
        wall = time.time() - started
        if tasks > 1:
            for line in stage.task_lines(task_id, tasks, totals, wall):
                log(line)
            return None
        manifest = stage.finalize(job, {"wall_s": round(wall, 3)}, totals)
        say(stage.summary(manifest, totals, time.time() - started))
        return manifest


def run_units(stage: Stage, job: dict, units: list[Unit], progress: bool, log, whole: bool = False) -> dict:
    """Run the units of `units` not yet done; returns this run's totals."""
    workdir = Path(job["workdir"])
    wd.remove_stale(stage.stale(job))
    pending = [u for u in units if wd.load_done(workdir, u, job["fingerprint"], stage.parts) is None]
    totals = stage.new_totals(len(pending), len(units) - len(pending))
    stage.before(job, units, {u.index for u in units} - {u.index for u in pending}, whole)
    failed = True
    try:
        if pending:
            _run_pending(stage, job, pending, progress, log, totals)
        failed = False
    finally:
        stage.after(job, totals, failed)
    return totals


def _run_pending(stage: Stage, job: dict, pending: list[Unit], progress: bool, log, totals: dict) -> None:
    bar = tqdm(total=sum(u.size for u in pending), unit=stage.progress_unit, unit_scale=stage.progress_unit == "B",
               unit_divisor=1024, desc=stage.name, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    done = 0

    def report(kind: str, value) -> None:
        nonlocal done
        if kind == "done":
            bar.update(stage.account(totals, value))
            done += 1
            faults.after_units_done(done)
            faults.hold_after_units(done)
            return
        if kind == "progress":
            bar.update(value)
        stage.event(totals, kind, value)

    try:
        stage.execute(job, pending, Run(LocalExecutor(), report, log, totals))
    finally:
        bar.close()


def finalize_output(output: str, started: float) -> dict | None:
    """`prep finalize OUT`: the finalize of whichever stage made the output (after an array job)."""
    out = Path(output)
    if (out / wd.MANIFEST_NAME).exists():
        echo(f"{output}: already complete")
        return None
    if not (wd.workdir_of(out) / "job.json").exists():
        raise PrepError(f"{output}: no prep run here (no {wd.WORKDIR}/job.json)")
    with wd.output_lock(out):
        job = {**wd.read_job(wd.workdir_of(out)), "complete": False}
        stage = stage_for(job.get("kind", "tokens"))()
        manifest = stage.finalize(job, {"wall_s": None})
        say(stage.summary(manifest, None, time.time() - started))
        return manifest
