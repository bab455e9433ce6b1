"""Crash safety: kill -9 at any moment, rerun the same command, get the same bytes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TOKENIZERS, botchan_documents, prep, read_bytes, write_jsonl
from prep.pipeline.workdir import output_lock

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory):
    # HF tokenizers (slow backend) over ~3 MB: enough units to kill a run between them several times.
    folder = tmp_path_factory.mktemp("slow")
    return write_jsonl(folder / "c.jsonl", botchan_documents(4500, seed=11))


SLOW = ["--tokenizer", TOKENIZERS / "gpt2", "--backend", "hf", "--unit-size", "256k", "--workers", "2"]
FAST = ["--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k"]


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory, slow_corpus) -> dict[str, bytes]:
    """The clean run's bytes of the slow corpus (built once: output bytes depend on neither the
    workers nor the unit size, so every test below compares with it)."""
    out = tmp_path_factory.mktemp("slow_clean") / "out"
    prep("tokenize", slow_corpus, *SLOW, "-o", out)
    return read_bytes(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> dict[str, bytes]:
    """The clean run's bytes of the 2 MB corpus."""
    out = tmp_path_factory.mktemp("clean") / "out"
    prep("tokenize", corpus, *FAST, "-o", out)
    return read_bytes(out)


def _start(args, env: dict | None = None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "prep.cli", *map(str, args)], cwd=ROOT, start_new_session=True,
                            env={**os.environ, **(env or {})}, **kwargs)


def test_resume_after_kill_gives_same_bytes(tmp_path, slow_corpus, slow_reference):
    """kill -9 of the whole process group (main process and workers, mid-unit) once each run has
    finished four units, again and again; the reruns of the same command end with the clean bytes."""
    args = [slow_corpus, *SLOW]
    out = tmp_path / "killed"
    kills = 0
    for _ in range(20):
        process = _start(["tokenize", *args, "-o", out], {"PREP_TEST_KILL_AFTER_UNITS": "4"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process.wait(timeout=300)
        if (out / "manifest.json").exists():
            break
        assert process.returncode == -signal.SIGKILL
        kills += 1
        assert not (out / "text_document.bin").exists() or not (out / "manifest.json").exists()
    assert kills >= 2, "the run finished before it could be killed twice; make the corpus larger"
    result = prep("tokenize", *args, "-o", out)
    assert read_bytes(out) == slow_reference
    assert not (out / ".prep").exists()
    leftovers = [p.name for p in out.iterdir() if ".tmp." in p.name]
    assert leftovers == []
    assert "resumed" in result.stdout or "already complete" in result.stderr


def test_a_killed_worker_stops_the_run_with_one_line_and_a_rerun_resumes(tmp_path, corpus, reference):
    """A worker killed mid-unit (as the OOM killer does) must not leave the run waiting forever
    for its unit: the run stops with one line, keeps the finished units, and a rerun completes."""
    args = ["tokenize", corpus, *FAST, "--workers", "2"]
    out = tmp_path / "out"
    killed = prep(*args, "-o", out, check=False, timeout=120, env={"PREP_TEST_KILL_WORKER_AT_UNIT": "2"})
    assert killed.returncode == 2, killed.stderr
    assert killed.stderr.strip().splitlines()[-1].startswith("error: a worker process died")
    assert "Traceback" not in killed.stderr and not (out / "manifest.json").exists()
    resumed = prep(*args, "-o", out)
    assert "resumed" in resumed.stdout
    assert read_bytes(out) == reference


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_once_there_is_space(tmp_path):
    """A real full disk (a 2 MB tmpfs) under the output: one line naming the output folder,
    exit 2; after the disk grows, the same command resumes and gives the clean run's bytes."""
    corpus = write_jsonl(tmp_path / "c.jsonl", botchan_documents(6000, seed=3))  # ~4 MB of text
    args = ["tokenize", corpus, "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "256k", "--workers", "2"]
    prep(*args, "-o", tmp_path / "clean")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        full = prep(*args, "-o", disk / "out", check=False, timeout=120)
        assert full.returncode == 2 and "Traceback" not in full.stderr
        assert full.stderr.strip().splitlines()[-1] == (
            f"error: {disk / 'out'}: No space left on device; free some space and rerun the same command: it resumes")
        assert not (disk / "out" / "manifest.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        prep(*args, "-o", disk / "out")
        assert read_bytes(disk / "out") == read_bytes(tmp_path / "clean")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_ctrl_c_stops_at_once_with_one_line_and_the_run_resumes(tmp_path, slow_corpus, slow_reference):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, once two units are done
    (workers busy on others): exit 130 within seconds, one line, no worker left running; the same
    command then completes."""
    args = ["tokenize", slow_corpus, *SLOW]
    out, sent = tmp_path / "out", tmp_path / "signal-sent"
    process = _start([*args, "-o", out], {"PREP_TEST_INTERRUPT_AFTER_UNITS": "2", "PREP_TEST_SIGNAL_SENT": str(sent)},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=120)  # EOF on the pipes: every worker has let go of them
    assert sent.exists(), "the run finished before it could be interrupted; make the corpus larger"
    assert time.time() - float(sent.read_text()) < 15
    assert process.returncode == 130 and stderr.strip().splitlines() == [
        "error: interrupted; what was committed is kept: rerun the same command to resume"]
    prep(*args, "-o", out)
    assert read_bytes(out) == slow_reference


def test_kill_mid_finalize_then_rerun_gives_same_bytes(tmp_path, corpus, reference):
    args = ["tokenize", corpus, *FAST]
    out = tmp_path / "out"
    # A test hook makes finalize die (os._exit) after the shards are written, before the manifest.
    crashed = prep(*args, "-o", out, check=False, env={"PREP_TEST_CRASH_IN_FINALIZE": "1"})
    assert crashed.returncode != 0
    assert (out / "text_document.bin").exists() and not (out / "manifest.json").exists()
    prep(*args, "-o", out)
    assert read_bytes(out) == reference


def test_rerun_of_a_complete_output_does_nothing(tmp_path, corpus):
    out = tmp_path / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    assert "already complete" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_second_run_into_a_busy_output_stops_with_one_line(tmp_path, corpus, reference):
    args = ["tokenize", corpus, *FAST]
    out = tmp_path / "out"
    with output_lock(out):  # as a first run of the same command holds it
        for task in ([], ["--task", "1/2"]):
            busy = prep(*args, "-o", out, *task, check=False)
            assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1
            assert "another prep run is writing" in busy.stderr and "Traceback" not in busy.stderr
    assert not out.exists()  # the refused runs wrote nothing
    with output_lock(out, 0, 2):  # array task 0 of 2 at work: task 1 goes on beside it, a whole run waits
        prep(*args, "-o", out, "--task", "1/2")
        assert prep(*args, "-o", out, "--task", "0/2", check=False).returncode == 2
        assert prep("finalize", out, check=False).returncode == 2
    prep(*args, "-o", out)
    assert read_bytes(out) == reference
    assert not (out / ".prep").exists()


def test_a_run_stopped_before_it_starts_leaves_no_output_folder(tmp_path, corpus):
    out = tmp_path / "out"
    refused = prep("tokenize", corpus, "-o", out, "--tokenizer", tmp_path / "no-such-tokenizer", check=False)
    assert refused.returncode == 2 and not out.exists()


def test_other_config_into_same_output_refuses_unless_overwrite(tmp_path, corpus):
    out = tmp_path / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2")
    refused = prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--no-eod", check=False)
    assert refused.returncode == 2
    assert "fingerprint" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--no-eod", "--overwrite")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["eod"] is False


def test_resume_refuses_when_inputs_changed(tmp_path, corpus):
    data = tmp_path / "c.jsonl"
    data.write_bytes(corpus.read_bytes())
    out = tmp_path / "out"
    crashed = prep("tokenize", data, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k",
                   check=False, env={"PREP_TEST_CRASH_IN_FINALIZE": "1"})
    assert crashed.returncode != 0
    original = data.read_bytes()
    with open(data, "ab") as f:
        f.write(b'{"text": "one more"}\n')
    refused = prep("tokenize", data, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k", check=False)
    assert refused.returncode == 2
    assert "inputs changed" in refused.stderr
    # rewritten with the same size (two letters swapped in the first record): changed all the same
    swapped = bytearray(original)
    swapped[20:40] = bytes(swapped[20:40]).translate(bytes.maketrans(b"ae", b"ea"))
    data.write_bytes(bytes(swapped))
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert data.stat().st_size == len(original) and data.read_bytes() != original
    refused = prep("tokenize", data, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k", check=False)
    assert refused.returncode == 2 and "inputs changed" in refused.stderr


def test_units_an_older_prep_left_are_redone(tmp_path, corpus, reference):
    """Done-records of an older part format (no "parts" field, .len.npy/.doc.npy files) are not
    trusted on resume: those units run again and the output is the same."""
    args = ["tokenize", corpus, *FAST]
    out = tmp_path / "out"
    prep(*args, "-o", out, check=False, env={"PREP_TEST_CRASH_IN_FINALIZE": "1"})
    records = sorted((out / ".prep" / "done").glob("*.json"))
    assert len(records) > 2
    for path in records[::2]:  # as the previous format wrote them
        record = json.loads(path.read_text())
        del record["parts"]
        path.write_text(json.dumps(record))
        stem = out / ".prep" / "parts" / f"{path.stem}.text"
        Path(f"{stem}.seq.npy").rename(f"{stem}.len.npy")
    prep(*args, "-o", out)  # finalize could not read those parts (.seq.npy is gone): they were redone
    assert read_bytes(out) == reference
