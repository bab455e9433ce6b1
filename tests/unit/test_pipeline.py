"""The shared stage machinery: units on disk, durable writes, the local executor, the registries."""

import json
import os
import signal
from pathlib import Path

import pytest

from helpers import ROOT
from prep import recipes
from prep.errors import BadRecord, PrepError
from prep.latents import families
from prep.pipeline import durable
from prep.pipeline.local import LocalExecutor
from prep.pipeline.units import Unit, task_units


def test_a_unit_is_written_with_the_names_earlier_outputs_use():
    unit = Unit(3, "/data/a.jsonl", 1024, 4096)
    assert unit.to_json() == {"index": 3, "path": "/data/a.jsonl", "start": 1024, "stop": 4096}  # plan.json, done-records
    assert Unit.from_json(json.loads(json.dumps(unit.to_json()))) == unit
    assert unit.size == 3072 and unit.id == "0000003"
    assert unit.byte_range == (1024, 4096) and list(Unit(0, "a.png", 64, 67).items) == [64, 65, 66]
    units = [Unit(i, "p", i, i + 1) for i in range(7)]
    assert [u.index for u in task_units(units, 1, 3)] == [1, 4]
    assert sorted(u.index for t in range(3) for u in task_units(units, t, 3)) == list(range(7))


def test_a_durable_write_is_whole_or_absent(tmp_path):
    path = tmp_path / "f.json"
    durable.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")
    with pytest.raises(RuntimeError):
        with durable.open_durable(path) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary left


class _Worker:
    def __init__(self, fail_at=None, die_at=None):
        self.fail_at, self.die_at = fail_at, die_at

    def run(self, units, report):
        for unit in units:
            if unit.index == self.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if unit.index == self.fail_at:
                raise BadRecord(unit.path, unit.index, "bad record")
            if unit.index == -1:
                raise ValueError("a bug")
            report("progress", unit.size)
            report("done", {"unit": unit.index, "pid": os.getpid()})

    def close(self):
        pass


def _factory(job, slot, child):
    return _Worker(**job)


def _run(job, slots, units):
    events = []
    LocalExecutor().run(_factory, job, slots, units, lambda kind, value: events.append((kind, value)), "fork")
    return events


def test_the_local_executor_runs_each_unit_once_on_its_workers():
    units = [Unit(i, "p", 0, i + 1) for i in range(12)]
    for slots in ([None], [None, None, None]):
        events = _run({}, slots, units)
        done = [v for k, v in events if k == "done"]
        assert sorted(d["unit"] for d in done) == list(range(12))
        assert sum(v for k, v in events if k == "progress") == sum(u.size for u in units)
        in_process = {d["pid"] for d in done} == {os.getpid()}
        assert in_process == (len(slots) == 1)  # one slot runs here; more run in worker processes


def test_a_worker_error_crosses_back_whole_and_a_dead_worker_is_one_line():
    units = [Unit(i, "f.jsonl", 0, 1) for i in range(6)]
    with pytest.raises(BadRecord) as error:
        _run({"fail_at": 4}, [None, None], units)
    assert error.value.message == "f.jsonl:4: bad record"
    with pytest.raises(PrepError, match=r"^a worker process died \(killed by signal 9; out of memory\?\)"):
        _run({"die_at": 3}, [None, None], units)
    with pytest.raises(PrepError, match="^worker: ValueError: a bug$"):
        _run({}, [None, None], [Unit(-1, "p", 0, 1)])


def test_the_cli_choices_come_from_the_registries():
    from prep.cli.latents import latents
    from prep.cli.tokenize import tokenize

    choices = {p.name: list(getattr(p.type, "choices", [])) for c in (tokenize, latents) for p in c.params}
    assert choices["recipe"] == recipes.names() == ["text", "chat", "instruction", "completion", "retrieval"]
    assert choices["family"] == families.names() == ["flux", "wan", "hunyuan", "hunyuan15"]
    for name in families.names():  # one file each, with the facts AutoModel's caches carry
        family = families.family_class(name)
        assert Path(family.__module__.replace(".", "/") + ".py").name == f"{name}.py"
        assert family.model_type and family.fields and family.encoder_roles and (family.model_version or not family.video)
    for name in recipes.names():
        assert recipes.get(name).__module__ == f"prep.recipes.{name}"


def test_the_test_hooks_live_in_one_module_and_no_module_is_too_long():
    hooks, long = set(), []
    for path in sorted([*(ROOT / "prep").rglob("*.py"), *(ROOT / "loaders").rglob("*.py")]):
        text = path.read_text()
        if "PREP_TEST_" in text:
            hooks.add(path.relative_to(ROOT).as_posix())
        if text.count("\n") > 420:
            long.append(path.relative_to(ROOT).as_posix())
    assert hooks == {"prep/pipeline/faults.py"}
    assert long == []
