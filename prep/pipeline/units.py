"""Work units and their slicing across array tasks.

A plan depends only on the sorted inputs and the unit size, never on the number of workers or
tasks, so every Slurm array task computes the same plan and takes its own slice of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prep.errors import PrepError


@dataclass(frozen=True)
class Unit:
    """A slice of the plan. `first`/`stop` count bytes of `path` in tokenize (a byte range of one
    input file) and items of the plan in latents (`path` is then the first item's file); on disk
    (plan.json, done-records) they are `start` and `stop`, as earlier outputs wrote them."""

    index: int
    path: str
    first: int
    stop: int

    @property
    def id(self) -> str:
        return f"{self.index:07d}"

    @property
    def size(self) -> int:
        """Bytes (tokenize) or items (latents): what the progress bar counts."""
        return self.stop - self.first

    @property
    def byte_range(self) -> tuple[int, int]:
        """tokenize: [start byte, stop byte) of `path`."""
        return self.first, self.stop

    @property
    def items(self) -> range:
        """latents: the indexes of the plan's items this unit holds."""
        return range(self.first, self.stop)

    def to_json(self) -> dict:
        return {"index": self.index, "path": self.path, "start": self.first, "stop": self.stop}

    @classmethod
    def from_json(cls, value: dict) -> "Unit":
        return cls(value["index"], value["path"], value["start"], value["stop"])


def units_of(plan: dict) -> list[Unit]:
    return [Unit.from_json(u) for u in plan["units"]]


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
