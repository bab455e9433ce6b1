"""`prep status OUT`: how far a run has got, from its plan and done-records alone, so it works
while the run goes on (locally or as array tasks) and after a crash."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from loaders.manifest import MANIFEST_NAME
from prep.errors import PrepError
from prep.pipeline import slurm, workdir as wd
from prep.pipeline.units import task_units


def _held(workdir: Path) -> bool:
    """Whether a run holds the output's lock now (a shared test lock, dropped at once)."""
    try:
        fd = os.open(workdir / wd.LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _alive(pid) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def status(out: Path, tasks: int | None = None) -> list[str]:
    out = Path(out)
    manifest_file = out / MANIFEST_NAME
    if manifest_file.exists():
        m = json.loads(manifest_file.read_text())
        stats = m.get("stats", {})
        if "distinct_documents" in stats:  # retrieval: `documents` counts the queries' rows
            stats = {**stats, "documents": stats["distinct_documents"]}
        counts = "  ".join(f"{k} {stats[k]:,}" for k in ("queries", "documents", "items", "tokens") if isinstance(stats.get(k), int))
        return [f"{out}: complete ({m['kind']} / {m['format']}), finalized {m['timings'].get('finalized', '?')}", f"  {counts}",
                *slurm.job_states(wd.workdir_of(out) / wd.SLURM)]
    workdir = wd.workdir_of(out)
    if not (workdir / "plan.json").exists() or not (workdir / "job.json").exists():
        raise PrepError(f"{out}: no manifest and no run state here (not a prep output, or a run that had not planned yet)")
    job, units = wd.read_job(workdir), wd.plan_units(workdir)
    records = {u.index: r for u in units if (r := wd.load_done(workdir, u, job["fingerprint"])) is not None}
    done_units = [u for u in units if u.index in records]
    running = _held(workdir)
    claims = wd.claims(workdir)
    claimed = {u.index: c for u in units if (c := claims.get(u.id)) is not None and u.index not in records}
    here = socket.gethostname()
    live = {i for i, c in claimed.items() if c.get("host") != here or _alive(c.get("pid"))}  # other hosts: as they say
    total, done = sum(u.size for u in units), sum(u.size for u in done_units)
    what = "items" if job.get("kind") == "latents" else "B"
    if len(records) < len(units):
        state = "running" if running else "stopped: rerun the same command (or the array task) to resume"
    else:  # a run holding the folder now is writing the manifest itself
        state = "running: every unit is done, the manifest is being written" if running else \
            f"every unit is done: prep finalize {out} writes the manifest"
    lines = [f"{out}: {state}",
             f"  units     {len(records):,} of {len(units):,} done, {len(live):,} in progress, "
             f"{len(units) - len(records) - len(live):,} pending "
             f"({100 * done / max(1, total):.1f}% of {f'{total / 1e6:,.1f} MB' if what == 'B' else f'{total:,} items'})"]
    tokens = sum(sum(k.get("tokens", 0) for key, k in r.get("keys", {}).items() if key != "loss_mask") for r in records.values())
    lines.append(f"  so far    {sum(r.get('records', 0) for r in records.values()):,} records"
                 + (f", {tokens:,} tokens" if tokens else "")
                 + (f", {sum(sum(r['skipped'].values()) for r in records.values()):,} skipped" if any(r.get("skipped") for r in records.values()) else ""))
    if records:
        started = (workdir / "plan.json").stat().st_mtime
        last = max(wd.done_path(workdir, u).stat().st_mtime for u in done_units)
        if last > started:
            rate = done / (last - started)
            eta = (total - done) / rate if rate else 0
            lines.append(f"  speed     {rate / (1e6 if what == 'B' else 1):,.2f} {'MB' if what == 'B' else 'items'}/s since the plan was written"
                         f" ({dt.datetime.fromtimestamp(started).isoformat(timespec='seconds')}), last unit done "
                         f"{dt.datetime.fromtimestamp(last).isoformat(timespec='seconds')}"
                         + (f"; ETA {_duration(eta)} at that speed" if len(records) < len(units) and running else ""))
    if tasks:
        for task in range(tasks):
            mine = task_units(units, task, tasks)
            finished = sum(1 for u in mine if u.index in records)
            busy = [u.index for u in mine if u.index in live]
            lines.append(f"  task {task}/{tasks}  {finished:,} of {len(mine):,} units done"
                         + (f", unit {busy[0]} in progress" if busy else "") + ("" if finished < len(mine) else " (finished)"))
    return lines + slurm.job_states(workdir / wd.SLURM)
