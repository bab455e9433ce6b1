"""Pipeline files: `prep run FILE` runs the stages in order (relative paths against the file's
folder; rerunning resumes), mistakes are one line naming file:line, and `prep slurm` writes the
array, finalize and dependent jobs (split at MaxArraySize), or prints them with --dry-run. The
ready pipelines in pipelines/ run end to end on small data."""

import json
import re

import pytest
import yaml

from helpers import ROOT, TOKENIZERS, botchan_documents, prep, read_bytes, write_jsonl


def _pipeline(tmp_path, stages, slurm=None) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**({"slurm": slurm} if slurm else {}), "stages": stages}, sort_keys=False))
    return path


@pytest.fixture
def two_stages(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", botchan_documents(400, seed=1))
    return _pipeline(tmp_path, [
        {"tokenize": {"inputs": ["data/a.jsonl"], "output": "out/text", "tokenizer": str(TOKENIZERS / "gpt2"), "unit-size": "16k"}},
        {"index": {"outputs": ["out/text"], "seq-length": 64, "split": "99,1,0"}},
    ], slurm={"partition": "cpu", "cpus-per-task": 2, "tasks": 3, "setup": ["echo ready"]})


def test_prep_run_runs_the_stages_in_order_and_a_rerun_resumes(tmp_path, two_stages):
    prep("tokenize", tmp_path / "data" / "a.jsonl", "-o", tmp_path / "direct", "--tokenizer", TOKENIZERS / "gpt2")
    result = prep("run", two_stages)
    assert re.findall(r"== stage (\d)/2: prep (\w+)", result.stderr) == [("1", "tokenize"), ("2", "index")]
    out = tmp_path / "out" / "text"  # relative to the pipeline file, not to where prep ran
    assert read_bytes(out) == read_bytes(tmp_path / "direct")
    assert list(out.glob("**/*document_index*.npy")), "the index stage wrote its caches"
    again = prep("run", two_stages)
    assert "2 stage(s) done" in again.stderr


@pytest.mark.parametrize("text,line,reason", [
    ("stages:\n  - tokenize: {inputs: [a], output: o, tokenizer: t}\ncolour: red\n", 3, "unknown key 'colour'"),
    ("slurm:\n  partition: cpu\n  nodes: 3\nstages: []\n", 3, "unknown slurm key 'nodes'"),
    ("stages:\n  - tokenize:\n      inputs: [a]\n      output: o\n      tokeniser: t\n", 5, "unknown option 'tokeniser' for prep tokenize"),
    ("stages:\n  - tokenise: {output: o}\n", 2, "unknown stage 'tokenise'"),
])
def test_a_mistake_in_a_pipeline_file_is_one_line_naming_file_and_line(tmp_path, text, line, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in (["run", path], ["slurm", path, "--dry-run"]):
        result = prep(*command, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}:{line}: {reason}"), lines


def test_a_failing_stage_stops_the_pipeline_with_its_exit_code(tmp_path):
    path = _pipeline(tmp_path, [{"tokenize": {"inputs": ["missing.jsonl"], "output": "out", "tokenizer": str(TOKENIZERS / "gpt2")}},
                                {"index": {"outputs": ["out"], "seq-length": 8}}])
    result = prep("run", path, check=False)
    assert result.returncode == 2 and "== stage 2/2" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}:2: stage 1 (prep tokenize) stopped with exit code 2")


def test_prep_slurm_dry_run_splits_arrays_and_chains_dependencies(tmp_path, two_stages):
    result = prep("slurm", two_stages, "--tasks", "5", "--max-array-size", "2", "--dry-run")
    out = tmp_path / "out" / "text"
    commands = [line for line in result.stdout.splitlines() if line.startswith("# sbatch")]
    assert commands == [
        f"# sbatch --parsable --array=0-1 --export=ALL,PREP_TASK_OFFSET=0 {out}/.prep/slurm/prep-01-tokenize.array.sh",
        f"# sbatch --parsable --array=0-1 --export=ALL,PREP_TASK_OFFSET=2 {out}/.prep/slurm/prep-01-tokenize.array.sh",
        f"# sbatch --parsable --array=0-0 --export=ALL,PREP_TASK_OFFSET=4 {out}/.prep/slurm/prep-01-tokenize.array.sh",
        f"# sbatch --parsable --dependency=afterok:<prep-01-tokenize>:<prep-01-tokenize>:<prep-01-tokenize> "
        f"{out}/.prep/slurm/prep-01-tokenize.finalize.sh",
        f"# sbatch --parsable --dependency=afterok:<prep-01-tokenize-finalize> {out}/.prep/slurm/prep-02-index.sh"]
    assert '--task "$TASK/5" --workers "${SLURM_CPUS_PER_TASK:-1}"' in result.stdout
    assert "#SBATCH --partition=cpu" in result.stdout and "echo ready" in result.stdout
    assert not out.exists()  # nothing written


def test_prep_slurm_writes_scripts_that_finalize_keeps(tmp_path, two_stages):
    result = prep("slurm", two_stages)
    folder = tmp_path / "out" / "text" / ".prep" / "slurm"
    assert {p.name for p in folder.glob("*.sh")} == {"prep-01-tokenize.array.sh", "prep-01-tokenize.finalize.sh",
                                                     "prep-02-index.sh", "submit.sh"}
    assert f"bash {folder / 'submit.sh'}" in result.stdout
    prep("run", two_stages)  # the same stages here: finalize removes the work folder but the Slurm scripts
    assert (tmp_path / "out" / "text" / "manifest.json").exists() and (folder / "prep-01-tokenize.array.sh").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "text" / ".prep").iterdir()) == ["slurm"]


TEXT_PIPELINES = ["pretrain-megatron.yaml", "pretrain-nanogpt.yaml", "chat-sft-packed.yaml", "instruction-sft.yaml", "retrieval.yaml"]


@pytest.mark.parametrize("name", TEXT_PIPELINES)
def test_the_ready_pipelines_run_end_to_end_on_small_data(tmp_path, name):
    """Each ready pipeline with its inputs, tokenizer and outputs pointed at small local data."""
    from chat_cases import conversations
    from retrieval_data import inline_rows

    spec = yaml.safe_load((ROOT / "pipelines" / name).read_text())
    tokenizer = str(TOKENIZERS / ("gpt2" if "pretrain" in name else "smollm2-135m-instruct"))
    data = {"pretrain-megatron.yaml": botchan_documents(300), "pretrain-nanogpt.yaml": botchan_documents(300),
            "chat-sft-packed.yaml": conversations({"system": True}, 40),
            "instruction-sft.yaml": [{"input": f"Line {i}.", "instruction": "Repeat it.", "output": f"Line {i}."} for i in range(40)],
            "retrieval.yaml": inline_rows(40)}[name]
    corpus = write_jsonl(tmp_path / "in.jsonl", data)
    outputs = {}
    for stage in spec["stages"]:
        (command, options), = stage.items()
        if "inputs" in options:
            options["inputs"] = [str(corpus)]
        if "tokenizer" in options:
            options["tokenizer"] = tokenizer
        for key in ("output", "outputs"):
            if key in options:
                value = options[key]
                options[key] = [outputs.setdefault(v, str(tmp_path / f"out{len(outputs)}")) for v in value] if isinstance(value, list) \
                    else outputs.setdefault(value, str(tmp_path / f"out{len(outputs)}"))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    prep("run", path)
    for out in outputs.values():
        assert json.loads((tmp_path / out / "manifest.json").read_text())["stats"]
        assert prep("verify", out).returncode == 0
