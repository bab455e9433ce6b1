"""A real single-node Slurm: an array job of `prep tokenize` tasks, then a dependent `prep finalize`
job, give the same bytes as one local run. .ci/run installs and starts Slurm (../shared/tools/slurm-local.sh)."""

import os
import shutil
import subprocess
import sys
import time

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
