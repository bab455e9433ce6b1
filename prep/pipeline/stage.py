"""The stage shape: plan units, run units, finalize. A stage is one of these; the driver runs it.

A stage knows its own work and nothing of the machinery around it:

- `prepare(overwrite, log, alone)`: check the config, claim the output, write or check the plan;
  returns the job state (`{"complete": True, ...}` when a manifest says the output is done).
- `execute(job, pending, run)`: run the pending units through `run.executor`, reporting through
  `run.report`; anything a stage does around its units (tokenize's backend probe) lives here.
- `account(totals, record)`: add a done-record to this run's totals; returns the progress it makes.
- `finalize(job, timings)`: merge the parts and write manifest.json, last; returns the manifest.
- `summary(manifest, totals, wall)`: the lines printed at the end.

Stages register by the manifest `kind` they write, so `prep finalize` finds the stage of an output.
"""

from __future__ import annotations

from pathlib import Path

STAGES: dict[str, str] = {"tokens": "prep.tokenize.stage:TokenizeStage", "latents": "prep.latents.stage:LatentsStage"}


class Stage:
    kind = ""  # the manifest's kind
    name = ""  # the progress bar's label
    progress_unit = "unit"  # what the progress bar counts: "B" (bytes of input) or "item"
    parts: int | None = None  # the part format done-records must carry (older parts are redone)
    same = "same configuration"  # what "already complete" means, in the stage's words

    def __init__(self, config=None):
        self.config = config

    def prepare(self, overwrite: bool, log, alone: bool) -> dict:
        raise NotImplementedError

    def stale(self, job: dict) -> list[Path]:
        """Temporaries an earlier, killed run may have left."""
        return []

    def new_totals(self, pending: int, skipped: int) -> dict:
        return {"units": pending, "skipped_units": skipped}

    def before(self, job: dict, units: list, done: set[int], whole: bool) -> None:
        """Called once the pending units are known (`done`: indexes of the units already done)."""

    def execute(self, job: dict, pending: list, run) -> None:
        raise NotImplementedError

    def after(self, job: dict, totals: dict, failed: bool) -> None:
        """Called when the units are run (or the run failed)."""

    def account(self, totals: dict, record: dict) -> int:
        return 0

    def event(self, totals: dict, kind: str, value) -> None:
        """A worker's report other than progress and done-records (e.g. "ready")."""

    def task_lines(self, task: int, tasks: int, totals: dict, wall: float) -> list[str]:
        return [f"task {task}/{tasks}: {totals['units']} unit(s) run, {totals['skipped_units']} already done in {wall:.1f}s"]

    def finalize(self, job: dict, timings: dict, totals: dict | None = None) -> dict:
        raise NotImplementedError

    def summary(self, manifest: dict, totals: dict | None, wall: float) -> str:
        raise NotImplementedError


def stage_for(kind: str) -> type[Stage]:
    import importlib

    module, name = STAGES[kind].split(":")
    return getattr(importlib.import_module(module), name)
