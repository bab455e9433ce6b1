"""`prep status`: units done and pending (per array task), so far, after a kill -9 and once complete."""

import os
import re
import signal
import subprocess
import sys

from helpers import ROOT, TOKENIZERS, prep


def test_status_after_a_kill_and_when_complete(tmp_path, corpus):
    args = ["tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k", "--workers", "2"]
    killed = subprocess.run([sys.executable, "-m", "prep.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                            env={**os.environ, "PREP_TEST_KILL_AFTER_UNITS": "3"}, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL
    lines = prep("status", tmp_path / "out", "--tasks", "2").stdout.splitlines()
    assert lines[0].endswith("stopped: rerun the same command (or the array task) to resume")
    done, total = map(int, re.search(r"units\s+(\d+) of (\d+) done", lines[1]).groups())
    assert done >= 3 and total > done  # the kill comes once three are done; a worker may finish a fourth first
    assert f"{total - done} pending" in lines[1] and re.search(r"so far\s+[\d,]+ records, [\d,]+ tokens", lines[2])
    per_task = [tuple(map(int, re.search(r"(\d+) of (\d+) units", line).groups())) for line in lines if "task " in line]
    assert len(per_task) == 2 and sum(d for d, _ in per_task) == done and sum(n for _, n in per_task) == total

    # units in progress: a claim by a live process counts; the killed run's claims (dead pids) do not
    import json
    import socket

    assert re.search(r"done, 0 in progress", lines[1])
    plan = json.loads((tmp_path / "out" / ".prep" / "plan.json").read_text())
    done_ids = {p.stem for p in (tmp_path / "out" / ".prep" / "done").glob("*.json")}
    from prep.pipeline.units import Unit

    pending = [u for u in (Unit.from_json(x) for x in plan["units"]) if u.id not in done_ids]
    (tmp_path / "out" / ".prep" / "running").mkdir(exist_ok=True)
    (tmp_path / "out" / ".prep" / "running" / f"{pending[0].id}.json").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 0}))
    lines = prep("status", tmp_path / "out", "--tasks", "2").stdout.splitlines()
    assert f"done, 1 in progress, {total - done - 1} pending" in lines[1]
    assert sum(f"unit {pending[0].index} in progress" in line for line in lines) == 1

    prep(*args)
    lines = prep("status", tmp_path / "out").stdout.splitlines()
    assert "complete (tokens / megatron)" in lines[0] and "documents 3,000" in lines[1]


def test_status_once_every_array_task_is_done_points_to_finalize(tmp_path, corpus):
    args = ["tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k", "--workers", "1"]
    for task in ("0/2", "1/2"):
        prep(*args, "--task", task)
    lines = prep("status", tmp_path / "out", "--tasks", "2").stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'out'}: every unit is done: prep finalize {tmp_path / 'out'} writes the manifest", lines
    assert all(line.endswith("(finished)") for line in lines if "task " in line)


def test_status_of_a_folder_that_is_no_output(tmp_path):
    result = prep("status", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no manifest and no run state here (not a prep output, or a run that had not planned yet)"]
