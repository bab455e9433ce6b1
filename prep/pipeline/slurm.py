"""The Slurm executor: a pipeline's stages as sbatch scripts with dependencies.

A stage-driver stage (tokenize, latents) is an array job whose task I runs `--task I/N` (workers
from SLURM_CPUS_PER_TASK), then a finalize job `--dependency=afterok` on the array; any other stage
(index, verify) is one job. Each stage depends on the one before it (its finalize). An array larger
than the cluster's MaxArraySize is split into several arrays, each task offset by
PREP_TASK_OFFSET; the finalize waits for all of them. Tasks are requeue-safe: a task run again
(preempted, cancelled, requeued, resubmitted) skips the units it committed. Scripts and logs go
under the stage output's `.prep/slurm/`, which finalize keeps.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prep.errors import PrepError

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
JOBS = "jobs.json"  # what --submit submitted, for `prep status`


@dataclass
class Job:
    """One sbatch submission: its script, array range, the jobs it waits for (by index in the list)."""

    name: str
    script: Path
    text: str
    array: tuple[int, int] | None = None  # (offset, count)
    after: tuple[int, ...] = ()

    def sbatch_args(self, ids: list[str]) -> list[str]:
        args = ["sbatch", "--parsable"]
        if self.array:
            offset, count = self.array
            args += [f"--array=0-{count - 1}", f"--export=ALL,PREP_TASK_OFFSET={offset}"]
        if self.after:
            args.append("--dependency=afterok:" + ":".join(ids[i] for i in self.after))
        return [*args, str(self.script)]


def max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`), else Slurm's default."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", shown, re.M)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


def _header(name: str, logs: Path, settings: dict, cpus: int, array: bool) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --output={logs}/{name}-%A_%a.log" if array else f"#SBATCH --output={logs}/{name}-%j.log",
             "#SBATCH --open-mode=append", "#SBATCH --requeue"]
    for key, flag in (("partition", "partition"), ("account", "account"), ("time", "time"), ("mem", "mem")):
        if settings.get(key):
            lines.append(f"#SBATCH --{flag}={settings[key]}")
    if array and settings.get("gpus_per_task"):
        lines.append(f"#SBATCH --gpus-per-task={settings['gpus_per_task']}")
    lines += [f"#SBATCH {line}" for line in settings.get("extra") or []]
    return [*lines, "set -euo pipefail", *(settings.get("setup") or [])]


def plan(stages, settings: dict, tasks: int, limit: int, prep: str | None = None) -> list[Job]:
    """The jobs of `stages` (prep.cli.pipeline_file.Stage) in submission order."""
    prep = prep or settings.get("command") or f"{shlex.quote(sys.executable)} -m prep.cli"
    cpus = int(settings.get("cpus_per_task") or 1)
    jobs: list[Job] = []
    previous: tuple[int, ...] = ()
    for number, stage in enumerate(stages, 1):
        folder = stage.output / ".prep" / "slurm"
        logs = folder / "logs"
        name = f"prep-{number:02d}-{stage.command}"
        argv = " ".join(shlex.quote(a) for a in stage.argv)
        if not stage.array:
            text = "\n".join([*_header(name, logs, settings, cpus, False), f"exec {prep} {stage.command} {argv}", ""])
            jobs.append(Job(name, folder / f"{name}.sh", text, None, previous))
            previous = (len(jobs) - 1,)
            continue
        workers = "" if "workers" in stage.options or stage.command != "tokenize" else ' --workers "${SLURM_CPUS_PER_TASK:-1}"'
        body = ['TASK=$(( ${PREP_TASK_OFFSET:-0} + SLURM_ARRAY_TASK_ID ))',
                f'exec {prep} {stage.command} {argv} --task "$TASK/{tasks}"{workers} --no-progress']
        text = "\n".join([*_header(name, logs, settings, cpus, True), *body, ""])
        arrays = []
        for offset in range(0, tasks, limit):
            jobs.append(Job(name, folder / f"{name}.array.sh", text, (offset, min(limit, tasks - offset)), previous))
            arrays.append(len(jobs) - 1)
        final = f"{name}-finalize"
        text = "\n".join([*_header(final, logs, settings, 1, False), f"exec {prep} finalize {shlex.quote(str(stage.output))}", ""])
        jobs.append(Job(final, folder / f"{name}.finalize.sh", text, None, tuple(arrays)))
        previous = (len(jobs) - 1,)
    return jobs


def write(jobs: list[Job]) -> None:
    from prep.pipeline import durable

    for job in jobs:
        (job.script.parent / "logs").mkdir(parents=True, exist_ok=True)
        durable.write_bytes(job.script, job.text.encode())
        job.script.chmod(0o755)


def submit_script(jobs: list[Job]) -> str:
    """A shell script that submits `jobs` in order with their dependencies (what --submit runs)."""
    lines = ["#!/bin/bash", "set -euo pipefail"]
    for i, job in enumerate(jobs):
        args = job.sbatch_args([f"${{J{k}}}" for k in range(len(jobs))])
        lines.append(f"J{i}=$({' '.join(a if a.startswith('--dependency') else shlex.quote(a) for a in args)} | cut -d';' -f1)")
        lines.append(f'echo "{job.name}: $J{i}"')
    return "\n".join(lines) + "\n"


def submit(jobs: list[Job], echo) -> list[str]:
    """sbatch each job in order, each with its dependencies; returns the job ids."""
    ids: list[str] = []
    for job in jobs:
        args = job.sbatch_args(ids)
        try:
            result = subprocess.run(args, capture_output=True, text=True)
        except FileNotFoundError:
            raise PrepError("sbatch is not on PATH: run this on a Slurm login node, or drop --submit to write the scripts") from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise PrepError(f"sbatch {job.script} failed ({reason}); submitted so far: {', '.join(ids) or 'none'}")
        ids.append(result.stdout.strip().split(";")[0])
        echo(f"{job.name}: {ids[-1]}" + (f" (array {job.array[0]}..{sum(job.array) - 1})" if job.array else ""))
    _record(jobs, ids)
    return ids


def _record(jobs: list[Job], ids: list[str]) -> None:
    """Each stage folder's submitted jobs (`prep status` asks squeue / sacct about them)."""
    import json

    from prep.pipeline import durable

    folders: dict[Path, list] = {}
    for job, job_id in zip(jobs, ids):
        folders.setdefault(job.script.parent, []).append({"name": job.name, "id": job_id, "array": job.array})
    for folder, entries in folders.items():
        durable.write_bytes(folder / JOBS, json.dumps(entries, indent=1).encode())


def job_states(folder: Path) -> list[str]:
    """Lines on the jobs `prep slurm --submit` recorded in `folder`: each job's (and array
    task's) state from squeue while queued, else from sacct where accounting is on."""
    import json
    from collections import Counter

    try:
        entries = json.loads((folder / JOBS).read_text())
    except (OSError, ValueError):
        return []
    ids = [e["id"] for e in entries]
    states: dict[str, Counter] = {i: Counter() for i in ids}
    for command in (["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T"],
                    ["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State"]):
        try:
            shown = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in shown.splitlines():
            job, _, state = line.replace("|", " ").partition(" ")
            base = job.split("_")[0]
            if base in states and state and not (command[0] == "sacct" and states[base]):
                states[base][state.split()[0]] += 1
    lines = []
    for entry in entries:
        found = states[entry["id"]]
        said = ", ".join(f"{n} {s}" if entry["array"] else s for s, n in sorted(found.items())) or "not in squeue or sacct (finished?)"
        lines.append(f"  slurm     {entry['name']} {entry['id']}: {said}")
    return lines
