"""A real single-node Slurm: an array job of `prep tokenize` tasks, then a dependent `prep finalize`
job, give the same bytes as one local run. .ci/run installs and starts Slurm (../shared/tools/slurm-local.sh)."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TOKENIZERS, prep, read_bytes

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("sbatch") is None or "SLURM_CONF" not in os.environ,
                                                   reason="no Slurm here: .ci/run starts one with ../shared/tools/slurm-local.sh")]


def _sbatch(*args: str) -> str:
    result = subprocess.run(["sbatch", "--parsable", f"--chdir={ROOT}", "--export=ALL", *args],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().split(";")[0]


def test_array_job_and_dependent_finalize_give_the_same_bytes(tmp_path, corpus):
    prep("tokenize", corpus, "-o", tmp_path / "local", "--tokenizer", TOKENIZERS / "gpt2")
    out = tmp_path / "slurm"
    command = f"{sys.executable} -m prep.cli tokenize {corpus} -o {out} --tokenizer {TOKENIZERS / 'gpt2'} --unit-size 64k --workers 1"
    array = _sbatch("--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/task-%a.log", f"--wrap={command}")
    final = _sbatch(f"--dependency=afterok:{array}", f"--output={tmp_path}/finalize.log",
                    f"--wrap={sys.executable} -m prep.cli finalize {out}")
    deadline = time.time() + 240
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", f"{array},{final}"], capture_output=True, text=True).stdout
        if not queue.strip():
            break
        time.sleep(1)
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert (out / "manifest.json").exists(), logs
    assert all("prep finalize" in logs[f"task-{i}.log"] for i in range(3)), logs  # each task ran its slice only
    assert read_bytes(out) == read_bytes(tmp_path / "local")


def _wait_for_queue_to_empty(jobs: list[str], seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"jobs {jobs} still queued after {seconds}s")


def _ids(submitted: str) -> list[str]:
    return [line.split(": ")[1].split()[0] for line in submitted.splitlines() if line.startswith("prep-")]


def _pipeline(tmp_path, corpus, folder: str, index: bool = True):
    import yaml

    stages = [{"tokenize": {"inputs": [str(corpus)], "output": folder, "tokenizer": str(TOKENIZERS / "gpt2"), "unit-size": "64k"}}]
    if index:
        stages.append({"index": {"outputs": [folder], "seq-length": 64, "split": "99,1,0"}})
    path = tmp_path / f"{Path(folder).name}.yaml"
    path.write_text(yaml.safe_dump({"slurm": {"cpus-per-task": 1, "tasks": 4}, "stages": stages}))
    return path


def test_prep_slurm_submit_gives_prep_runs_bytes_and_runs_stages_in_order(tmp_path, corpus):
    prep("run", _pipeline(tmp_path, corpus, str(tmp_path / "local")))
    submitted = prep("slurm", _pipeline(tmp_path, corpus, str(tmp_path / "slurm")), "--submit").stdout
    ids = _ids(submitted)
    assert len(ids) == 3, submitted  # array, finalize, index
    _wait_for_queue_to_empty(ids)
    logs = tmp_path / "slurm" / ".prep" / "slurm" / "logs"
    assert (tmp_path / "slurm" / "manifest.json").exists(), {p.name: p.read_text() for p in logs.glob("*.log")}
    assert read_bytes(tmp_path / "slurm") == read_bytes(tmp_path / "local")
    assert len(list(logs.glob("prep-01-tokenize-*_*.log"))) == 4  # one log a task
    shown = prep("status", tmp_path / "slurm").stdout  # the jobs --submit recorded, as squeue / sacct see them now
    assert f"slurm     prep-01-tokenize {ids[0]}: " in shown and f"prep-01-tokenize-finalize {ids[1]}: " in shown, shown
    index_log = next(logs.glob("prep-02-index-*.log")).read_text()
    assert "error" not in index_log.lower() and list((tmp_path / "slurm").glob("**/*document_index*.npy"))


def test_a_task_cancelled_while_it_holds_units_and_resubmitted_gives_the_same_bytes(tmp_path, corpus):
    prep("tokenize", corpus, "-o", tmp_path / "local", "--tokenizer", TOKENIZERS / "gpt2")
    pipeline = _pipeline(tmp_path, corpus, str(tmp_path / "slurm"), index=False)
    held = tmp_path / "held"
    hold = {"PREP_TEST_HOLD_AFTER_UNITS": "1", "PREP_TEST_HOLD_TASK": "1", "PREP_TEST_HOLD_FILE": str(held)}
    ids = _ids(prep("slurm", pipeline, "--submit", env=hold).stdout)
    array, final = ids
    deadline = time.time() + 240
    while not held.exists() and time.time() < deadline:  # task 1 has committed a unit and waits there
        time.sleep(0.5)
    assert held.exists()
    shown = prep("status", tmp_path / "slurm", "--tasks", "4").stdout.splitlines()  # while the array runs
    assert shown[0].endswith(": running") and re.search(r"task 1/4\s+[1-9]\d* of \d+ units done", "\n".join(shown)), shown
    assert any(line.startswith(f"  slurm     prep-01-tokenize {array}: ") and "RUNNING" in line for line in shown), shown
    subprocess.run(["scancel", f"{array}_1"], check=True)
    deadline = time.time() + 240  # the other tasks finish; the finalize can never start now
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout
        if not queue.strip():
            break
        time.sleep(1)
    subprocess.run(["scancel", final], check=False)
    assert not (tmp_path / "slurm" / "manifest.json").exists()
    done_before = len(list((tmp_path / "slurm" / ".prep" / "done").glob("*.json")))
    ids = _ids(prep("slurm", pipeline, "--submit").stdout)  # the same command again: tasks skip what they committed
    _wait_for_queue_to_empty(ids)
    assert done_before > 0 and (tmp_path / "slurm" / "manifest.json").exists()
    assert read_bytes(tmp_path / "slurm") == read_bytes(tmp_path / "local")
