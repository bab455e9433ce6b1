"""Bad input stops the run with `path:line: reason` and exit 2, or is skipped and counted."""

import gzip
import json
import zlib

import pytest
import zstandard

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl

GOOD = [json.dumps(d) for d in botchan_documents(30, seed=5)]


def _corpus(tmp_path, bad_line: str, at: int = 17, name: str = "c.jsonl"):
    lines = GOOD[:at - 1] + [bad_line] + GOOD[at - 1:]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


CASES = [
    ('{"text": "unterminated', "malformed JSON"),
    ('{"title": "no text key"}', "missing key 'text'"),
    ('{"text": 42}', "key 'text' is a number, expected a string"),
    ('{"text": null}', "key 'text' is null"),
    ('{"text": ["ok", 3]}', "key 'text' is a list of non-strings"),
    ('["not", "an", "object"]', "expected a JSON object, got list"),
    ('{"text": "bad utf8 \xff"}', "malformed JSON (not valid UTF-8)"),
]


def _tokenize(*args, check=False, **kwargs):
    return prep("tokenize", *args, "--tokenizer", TOKENIZERS / "gpt2", check=check, **kwargs)


@pytest.mark.parametrize("line,reason", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("unit", ["1M", "2k"])  # whole file, or the bad line deep in a byte-range unit
def test_bad_record_stops_with_path_line_reason(tmp_path, line, reason, unit):
    path = _corpus(tmp_path, line)
    if "\xff" in line:
        path.write_bytes(path.read_bytes().replace("\xff".encode(), b"\xff"))
    result = _tokenize(path, "-o", tmp_path / "out", "--unit-size", unit, "--workers", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # the whole of stderr: the one error line
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:17: {reason}"), result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "text_document.bin").exists()


def test_skip_invalid_counts_each_reason_in_the_manifest(tmp_path):
    lines = GOOD[:10] + [CASES[0][0], CASES[1][0], CASES[2][0], CASES[2][0]] + GOOD[10:]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _tokenize(path, "-o", tmp_path / "out", "--skip-invalid", check=True)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"malformed JSON": 1, "missing key 'text'": 1, "key 'text' is a number, expected a string": 2}
    assert manifest["stats"]["documents"] == len(GOOD)
    assert manifest["stats"]["skipped_examples"][0].startswith(f"{path}:11: malformed JSON")
    assert manifest["inputs"][0]["records"] == len(GOOD)


def test_record_bad_under_one_key_is_skipped_from_every_key(tmp_path):
    docs = [{"text": "a b", "title": "t"}, {"text": "c d", "title": 5}, {"text": "e", "title": "u"}]
    path = write_jsonl(tmp_path / "c.jsonl", docs)
    _tokenize(path, "-o", tmp_path / "out", "--text-key", "text", "--text-key", "title", "--skip-invalid", check=True)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["datasets"]["text"]["documents"] == manifest["datasets"]["title"]["documents"] == 2


def _truncated(tmp_path, kind):
    data = "\n".join(GOOD * 20).encode() + b"\n"
    packed = gzip.compress(data) if kind == "gz" else zstandard.ZstdCompressor().compress(data)
    path = tmp_path / f"c.jsonl.{kind}"
    path.write_bytes(packed[: len(packed) // 2])
    return path


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_truncated_compressed_file_stops_the_run(tmp_path, kind):
    path = _truncated(tmp_path, kind)
    result = _tokenize(path, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert f"error: {path}:" in result.stderr and "truncated or corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_truncated_compressed_file_names_the_line_where_it_breaks(tmp_path, kind):
    records = [{**json.loads(GOOD[i % len(GOOD)]), "n": i} for i in range(6000)]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()  # the break is far from the start
    packed = gzip.compress(data) if kind == "gz" else zstandard.ZstdCompressor().compress(data)
    cut = packed[: len(packed) * 3 // 5]
    path = tmp_path / f"c.jsonl.{kind}"
    path.write_bytes(cut)
    readable = (zlib.decompressobj(31).decompress(cut) if kind == "gz"
                else zstandard.ZstdDecompressor().decompressobj().decompress(cut))
    whole = readable.count(b"\n")  # the lines before the break
    assert 100 < whole < len(records)
    result = _tokenize(path, "-o", tmp_path / "out")
    assert result.returncode == 2 and f"error: {path}:{whole + 1}: truncated or corrupt" in result.stderr
    _tokenize(path, "-o", tmp_path / "kept", "--skip-invalid")
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["stats"]["documents"] == whole


def test_unreadable_parquet_stops_the_run_with_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    result = _tokenize(path, "-o", tmp_path / "out")
    assert result.returncode == 2 and f"error: {path}" in result.stderr
    assert "Traceback" not in result.stderr
    # a damaged page in a real file: pyarrow's reason spans lines, the error must not
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), tmp_path / "good.parquet", row_group_size=10)
    data = (tmp_path / "good.parquet").read_bytes()
    path.write_bytes(data[:len(data) // 2] + bytes(100) + data[len(data) // 2 + 100:])
    result = _tokenize(path, "-o", tmp_path / "out2")
    errors = result.stderr.splitlines()
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith(f"error: {path}")
    # --skip-invalid skips the unreadable file and counts it, as it does a truncated .gz
    kept = _tokenize(tmp_path / "good.parquet", path, "-o", tmp_path / "kept", "--skip-invalid")
    assert kept.returncode == 0, kept.stderr
    stats = json.loads((tmp_path / "kept" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 100 and stats["skipped"] == {"unreadable Parquet file": 1}


@pytest.mark.parametrize("args,message", [
    (["missing.jsonl"], "no such file or folder"),
    (["README.md"], "unknown input type"),
    (["examples/sample.jsonl", "--max-length", "10"], "--max-length is for the SFT recipes"),
    (["examples/sample.jsonl", "--format", "nanogpt", "--shard-tokens", "3G"], "a NanoGPT shard holds at most 2^31-1"),
    # an option the recipe does not read is a mistake, not a silent no-op
    (["examples/sample.jsonl", "--query-prefix", "q:"], "--query-prefix is for --recipe retrieval, not --recipe text"),
    (["examples/sample.jsonl", "--recipe", "instruction", "--columns", "answer=text", "--last-turn-only"],
     "--last-turn-only is for --recipe chat, not --recipe instruction"),
    (["examples/sample.jsonl", "--recipe", "completion", "--columns", "answer=text", "--preset", "squad"],
     "--preset is for --recipe instruction, not --recipe completion"),
])
def test_bad_arguments_give_one_line(tmp_path, args, message):
    result = _tokenize(*args, "-o", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_tokenizer_gives_one_line(tmp_path, corpus):
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", tmp_path / "nope", check=False)
    assert result.returncode == 2 and "no such tokenizer" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["inspect", "verify", "finalize"])
def test_commands_on_a_folder_that_is_no_prep_output_give_one_line(tmp_path, command):
    result = prep(command, tmp_path, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    assert not (tmp_path / ".prep").exists()


def test_a_config_file_value_of_the_wrong_shape_gives_one_line(tmp_path):
    """A list where an option takes one value is refused (not written into the data as "[1, 2]");
    a mapping for --columns means role=column pairs, as in a pipeline file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"recipe: retrieval\ntokenizer: {TOKENIZERS / 'gpt2'}\nquery_prefix: [1, 2]\n")
    result = _tokenize("examples/sample.jsonl", "--config", bad, "-o", tmp_path / "out")
    assert result.returncode == 2 and "query_prefix: expected one value, got a list" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(f"recipe: instruction\ntokenizer: {TOKENIZERS / 'gpt2'}\ncolumns: {{context: text, answer: text}}\n")
    done = _tokenize("examples/sample.jsonl", "--config", good, "-o", tmp_path / "cols")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cols" / "manifest.json").read_text())["config"]["columns"] == {"context": "text", "answer": "text"}


@pytest.mark.parametrize("args,message", [
    (["tokenize", "examples/sample.jsonl", "-o", "out", "--workers", "many"], "Invalid value for '--workers'"),
    (["tokenize", "examples/sample.jsonl", "-o", "out", "--bogus"], "No such option '--bogus'"),
    (["tokenize", "examples/sample.jsonl"], "Missing option '-o' / '--output'"),
    (["tokenize", "examples/sample.jsonl", "-o", "out", "--config", "missing.yaml"], "Invalid value for '--config'"),
    (["tokenize", "examples/sample.jsonl", "-o", "out", "--tokenizer", TOKENIZERS / "gpt2", "--columns", "a=b"],
     "--columns is for --recipe"),  # raised by the command itself
    (["tokenize", "examples/sample.jsonl", "-o"], "Option '-o' requires an argument"),  # a parse error without context
    (["tokenise"], "No such command 'tokenise'"),
])
def test_usage_mistakes_give_one_line_naming_the_help(tmp_path, args, message):
    """Not click's usage block: one line, exit code 2, saying where the help is."""
    result = prep(*args, check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[0].endswith("(see 'prep --help')" if message.startswith("No such command") else "(see 'prep tokenize --help')")


def test_a_command_given_nothing_shows_its_help():
    result = prep("tokenize", check=False)
    assert result.returncode == 2 and "Usage:" in result.stdout + result.stderr and "--output" in result.stdout + result.stderr


def test_a_max_length_that_leaves_nothing_to_train_says_so(tmp_path):
    from chat_cases import TEMPLATES, conversations

    chats = write_jsonl(tmp_path / "c.jsonl", conversations({"system": True}, 12))
    result = prep("tokenize", chats, "-o", tmp_path / "out", "--recipe", "chat", "--tokenizer", TEMPLATES["smollm2"],
                  "--max-length", "4", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].endswith("0 record(s) written, 12 dropped as over --max-length 4 with "
                                                         "nothing to train left; check --max-length"), result.stderr
