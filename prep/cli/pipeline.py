"""`prep run FILE` (a pipeline's stages locally, in order) and `prep slurm FILE` (as Slurm jobs)."""

from __future__ import annotations

import subprocess
import sys

import click

from prep.cli.errors import StageCommand
from prep.cli.options import CONTEXT
from prep.errors import PrepError


class StageFailed(PrepError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def _load(path):
    from prep.cli import main
    from prep.cli.pipeline_file import load

    commands = {name: command for name, command in main.commands.items() if name not in ("run", "slurm", "status", "inspect")}
    return load(path, commands)


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True))
def run(pipeline):
    """Run every stage of PIPELINE (a YAML file) here, in order. Each stage resumes what an
    earlier run of it committed, so rerunning the same command goes on where it stopped."""
    spec = _load(pipeline)
    for number, stage in enumerate(spec.stages, 1):
        click.echo(f"== stage {number}/{len(spec.stages)}: prep {stage.command} -> {stage.output}", err=True)
        code = subprocess.call([sys.executable, "-m", "prep.cli", stage.command, *stage.argv])
        if code != 0:
            raise StageFailed(f"{pipeline}:{stage.line}: stage {number} (prep {stage.command}) stopped with exit code {code}; "
                              f"what it committed is kept: fix the cause and rerun `prep run {pipeline}`", code)
    click.echo(f"{pipeline}: {len(spec.stages)} stage(s) done", err=True)


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True))
@click.option("--tasks", type=click.IntRange(min=1), default=None,
              help="Array tasks for each tokenize / latents stage. Default: the file's slurm.tasks, else 1.")
@click.option("--submit", is_flag=True, help="Submit the jobs with sbatch, each depending on the one before, and print their ids.")
@click.option("--dry-run", is_flag=True, help="Print the scripts and the sbatch commands; write and submit nothing.")
@click.option("--max-array-size", type=click.IntRange(min=1), default=None,
              help="Split arrays above this many tasks. Default: the cluster's MaxArraySize (scontrol), else 1001.")
def slurm(pipeline, tasks, submit, dry_run, max_array_size):
    """Write PIPELINE's stages as Slurm jobs under each output's .prep/slurm/: an array job per
    tokenize / latents stage (task I runs --task I/N with SLURM_CPUS_PER_TASK workers) and a
    finalize job after it; later stages wait for the earlier ones. Requeue-safe: a task run again
    skips the units it committed, so resubmitting after a failure or a cancel finishes the job."""
    from prep.pipeline import slurm as executor

    spec = _load(pipeline)
    tasks = tasks or int(spec.slurm.get("tasks") or 1)
    limit = max_array_size or int(spec.slurm.get("max_array_size") or 0) or executor.max_array_size()
    jobs = executor.plan(spec.stages, spec.slurm, tasks, limit)
    if dry_run:
        for job in jobs:
            click.echo(f"# {' '.join(job.sbatch_args([f'<{jobs[i].name}>' for i in range(len(jobs))]))}")
        shown = set()
        for job in jobs:
            if job.script not in shown:
                shown.add(job.script)
                click.echo(f"\n# {job.script}\n{job.text}", nl=False)
        return
    executor.write(jobs)
    submit_file = jobs[0].script.parent / "submit.sh"
    from prep.pipeline import durable

    durable.write_bytes(submit_file, executor.submit_script(jobs).encode())
    submit_file.chmod(0o755)
    for path in dict.fromkeys(job.script for job in jobs):
        click.echo(f"wrote {path}")
    if not submit:
        click.echo(f"submit them in order with: bash {submit_file}   (or: prep slurm {pipeline} --submit)")
        return
    executor.submit(jobs, click.echo)
