"""The same bytes whatever the number of workers, unit size or array tasks."""

import pytest

from helpers import TOKENIZERS, prep, read_bytes


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("ref") / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--workers", "1")
    return read_bytes(out)


@pytest.mark.parametrize("workers,unit", [(2, "64k"), (3, "100k"), (2, "1M"), (1, "8k")])
def test_output_bytes_do_not_depend_on_workers_or_units(tmp_path, corpus, reference, workers, unit):
    out = tmp_path / "out"
    prep("tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--workers", workers, "--unit-size", unit)
    assert read_bytes(out) == reference


def test_array_tasks_then_finalize_give_the_same_bytes(tmp_path, corpus, reference):
    out = tmp_path / "out"
    args = ["tokenize", corpus, "-o", out, "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k", "--workers", "1"]
    early = prep("finalize", out, check=False) if out.exists() else None
    for task in (2, 0):
        result = prep(*args, "--task", f"{task}/3")
        assert "prep finalize" in result.stderr
    assert not (out / "manifest.json").exists()
    incomplete = prep("finalize", out, check=False)
    assert incomplete.returncode == 2 and "not done yet" in incomplete.stderr
    # Slurm's variables work like --task.
    prep(*args, env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"})
    prep("finalize", out)
    assert read_bytes(out) == reference
    assert early is None


def test_config_file_gives_defaults_and_the_command_line_wins(tmp_path, corpus):
    config = tmp_path / "job.yaml"
    config.write_text("text-key: [text]\neod: false\nshard-size: 100k\nworkers: 2\n")
    prep("tokenize", corpus, "-o", tmp_path / "a", "--tokenizer", TOKENIZERS / "gpt2", "--config", config)
    prep("tokenize", corpus, "-o", tmp_path / "b", "--tokenizer", TOKENIZERS / "gpt2", "--no-eod", "--shard-size", "100k")
    assert read_bytes(tmp_path / "a") == read_bytes(tmp_path / "b")
    prep("tokenize", corpus, "-o", tmp_path / "c", "--tokenizer", TOKENIZERS / "gpt2", "--config", config, "--eod")
    assert read_bytes(tmp_path / "c") != read_bytes(tmp_path / "a")
    config.write_text("text-key: text\neod: false\nshard-size: 100k\n")  # one key, written as a scalar
    prep("tokenize", corpus, "-o", tmp_path / "scalar", "--tokenizer", TOKENIZERS / "gpt2", "--config", config)
    assert read_bytes(tmp_path / "scalar") == read_bytes(tmp_path / "b")
    config.write_text("no-such-option: 1\n")
    bad = prep("tokenize", corpus, "-o", tmp_path / "d", "--tokenizer", TOKENIZERS / "gpt2", "--config", config, check=False)
    assert bad.returncode == 2 and "no-such-option" in bad.stderr
    config.write_text("workers: [1\n")
    bad = prep("tokenize", corpus, "-o", tmp_path / "d", "--tokenizer", TOKENIZERS / "gpt2", "--config", config, check=False)
    assert bad.returncode == 2 and f"{config}:2:1: expected ',' or ']'" in bad.stderr and "Traceback" not in bad.stderr
