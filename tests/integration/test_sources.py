"""Every input kind gives the same documents; byte-range units read each line exactly once."""

import gzip
import json
import random

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from helpers import TOKENIZERS, botchan_documents, prep, read_bytes, write_jsonl
from prep.errors import Rejects
from prep.sources import jsonl


@pytest.mark.parametrize("seed", range(20))
def test_byte_range_units_read_every_line_exactly_once(tmp_path, seed):
    rng = random.Random(seed)
    records = [{"i": i, "text": "x" * rng.choice([0, 1, 5, 50, 300, 3000])} for i in range(rng.randint(1, 400))]
    raw = b"".join(orjson.dumps(r) + (b"\n" if rng.random() > 0.05 else b"\n\n") for r in records)
    if rng.random() < 0.5:
        raw = raw.rstrip(b"\n")  # no newline at the end of the file
    path = tmp_path / "c.jsonl"
    path.write_bytes(raw)
    unit = rng.choice([1, 7, 64, 500, 4096, 1 << 20])
    seen = []
    for start, stop in jsonl.plan(path, "jsonl", unit):
        for batch, _ in jsonl.read(path, "jsonl", start, stop, ["text"], Rejects(False), rng.choice([3, 100, 1 << 16])):
            seen += [r["i"] for r in batch]
    assert seen == list(range(len(records)))


def test_line_numbers_are_exact_in_byte_range_units(tmp_path):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(500)]
    lines[333] = '{"text": oops}'
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rejects = Rejects(skip=True)
    for start, stop in jsonl.plan(path, "jsonl", 97):
        for _ in jsonl.read(path, "jsonl", start, stop, ["text"], rejects, 50):
            pass
    assert len(rejects.examples) == 1
    assert rejects.examples[0].startswith(f"{path}:334: malformed JSON")


@pytest.fixture(scope="module")
def docs():
    return botchan_documents(500, seed=9) + [{"id": -1, "text": ["two ", "sentences"]}, {"id": -2, "text": ""}]


@pytest.fixture(scope="module")
def jsonl_reference(tmp_path_factory, docs):
    folder = tmp_path_factory.mktemp("src")
    path = write_jsonl(folder / "c.jsonl", docs)
    prep("tokenize", path, "-o", folder / "out", "--tokenizer", TOKENIZERS / "gpt2")
    return read_bytes(folder / "out")


def _write(kind, folder, docs):
    data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
    if kind == "gz":
        (folder / "c.jsonl.gz").write_bytes(gzip.compress(data))
        return folder / "c.jsonl.gz"
    if kind == "zst":
        # two frames, as concatenated .zst files are
        half = len(data) // 2
        cut = data.rfind(b"\n", 0, half) + 1
        z = zstandard.ZstdCompressor()
        (folder / "c.jsonl.zst").write_bytes(z.compress(data[:cut]) + z.compress(data[cut:]))
        return folder / "c.jsonl.zst"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_compressed_jsonl_gives_the_same_bytes(tmp_path, docs, jsonl_reference, kind):
    path = _write(kind, tmp_path, docs)
    prep("tokenize", path, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    assert read_bytes(tmp_path / "out") == jsonl_reference


@pytest.mark.parametrize("kind", ["jsonl", "gz"])
def test_a_byte_order_mark_and_crlf_line_ends_give_the_same_bytes(tmp_path, docs, jsonl_reference, kind):
    """Files saved by Windows tools: a UTF-8 BOM before the first record, CRLF after each (and a
    blank CRLF line). Python's text mode, which Megatron's script reads with, ends lines the same way."""
    data = b"\xef\xbb\xbf" + b"".join(orjson.dumps(d) + b"\r\n" for d in docs[:5]) + b"\r\n" + \
        b"".join(orjson.dumps(d) + b"\r\n" for d in docs[5:])
    path = tmp_path / "c.jsonl"
    path.write_bytes(data if kind == "jsonl" else gzip.compress(data))
    if kind == "gz":
        path = path.rename(path.with_suffix(".jsonl.gz"))
    prep("tokenize", path, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2", "--unit-size", "64k")
    assert read_bytes(tmp_path / "out") == jsonl_reference
    bad = b"\xef\xbb\xbf" + orjson.dumps(docs[0]) + b"\r\n\r\n{oops}\r\n"
    path = tmp_path / ("bad.jsonl" if kind == "jsonl" else "bad.jsonl.gz")
    path.write_bytes(bad if kind == "jsonl" else gzip.compress(bad))
    refused = prep("tokenize", path, "-o", tmp_path / "bad", "--tokenizer", TOKENIZERS / "gpt2", check=False)
    assert refused.returncode == 2 and f"{path.name}:3: malformed JSON" in refused.stderr  # lines counted as written


def test_parquet_gives_the_same_bytes(tmp_path, docs, jsonl_reference):
    string_docs = [d for d in docs if isinstance(d["text"], str)]
    jsonl_path = write_jsonl(tmp_path / "c.jsonl", string_docs)
    prep("tokenize", jsonl_path, "-o", tmp_path / "ref", "--tokenizer", TOKENIZERS / "gpt2")
    pq.write_table(pa.table({"text": [d["text"] for d in string_docs]}), tmp_path / "c.parquet", row_group_size=37)
    prep("tokenize", tmp_path / "c.parquet", "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2",
         "--unit-size", "8k", "--workers", "2")
    assert read_bytes(tmp_path / "out") == read_bytes(tmp_path / "ref")


def test_hf_save_to_disk_folder_gives_the_same_bytes(tmp_path, docs):
    import datasets

    string_docs = [d for d in docs if isinstance(d["text"], str)]
    jsonl_path = write_jsonl(tmp_path / "c.jsonl", [{"text": d["text"]} for d in string_docs])
    prep("tokenize", jsonl_path, "-o", tmp_path / "ref", "--tokenizer", TOKENIZERS / "gpt2")
    ds = datasets.Dataset.from_dict({"text": [d["text"] for d in string_docs]})
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    prep("tokenize", tmp_path / "saved", "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    assert read_bytes(tmp_path / "out") == read_bytes(tmp_path / "ref")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    result = prep("tokenize", tmp_path / "dict", "-o", tmp_path / "out2", "--tokenizer", TOKENIZERS / "gpt2", check=False)
    assert result.returncode == 2 and "DatasetDict" in result.stderr and "train" in result.stderr


def test_folder_input_reads_files_in_sorted_order(tmp_path, docs):
    (tmp_path / "in" / "b").mkdir(parents=True)
    write_jsonl(tmp_path / "in" / "b" / "2.jsonl", docs[250:])
    write_jsonl(tmp_path / "in" / "1.jsonl", docs[:250])
    write_jsonl(tmp_path / "all.jsonl", docs)
    prep("tokenize", tmp_path / "all.jsonl", "-o", tmp_path / "ref", "--tokenizer", TOKENIZERS / "gpt2")
    prep("tokenize", tmp_path / "in", "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    assert read_bytes(tmp_path / "out") == read_bytes(tmp_path / "ref")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["records"] for i in manifest["inputs"]] == [250, len(docs) - 250]


def test_a_saved_dataset_inside_a_folder_is_read_as_its_arrow_files(tmp_path, docs):
    """A `save_to_disk` folder below a folder input gives its rows (its state.json and
    dataset_info.json are metadata, not JSON lines); hidden files are passed over."""
    import datasets

    string_docs = [{"text": d["text"]} for d in docs if isinstance(d["text"], str)]
    write_jsonl(tmp_path / "all.jsonl", string_docs)
    prep("tokenize", tmp_path / "all.jsonl", "-o", tmp_path / "ref", "--tokenizer", TOKENIZERS / "gpt2")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "a.jsonl", string_docs[:100])
    datasets.Dataset.from_dict({"text": [d["text"] for d in string_docs[100:]]}).save_to_disk(str(corpus / "b_saved"), num_shards=2)
    (corpus / ".hidden.jsonl").write_text('{"not": "read"}\n')
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2")
    assert read_bytes(tmp_path / "out") == read_bytes(tmp_path / "ref")


def test_a_file_reached_twice_is_read_once(tmp_path, docs):
    """Through a symlink in the folder, or named twice: one input, as the manifest lists it."""
    (tmp_path / "in" / "real").mkdir(parents=True)
    write_jsonl(tmp_path / "in" / "real" / "a.jsonl", docs)
    (tmp_path / "in" / "b.jsonl").symlink_to(tmp_path / "in" / "real" / "a.jsonl")
    prep("tokenize", tmp_path / "in" / "real" / "a.jsonl", "-o", tmp_path / "ref", "--tokenizer", TOKENIZERS / "gpt2")
    for name, args in (("folder", [tmp_path / "in"]), ("twice", [tmp_path / "in" / "b.jsonl", tmp_path / "in" / "real" / "a.jsonl"])):
        prep("tokenize", *args, "-o", tmp_path / name, "--tokenizer", TOKENIZERS / "gpt2")
        assert read_bytes(tmp_path / name) == read_bytes(tmp_path / "ref")
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert [i["path"] for i in manifest["inputs"]] == [str((tmp_path / "in" / "real" / "a.jsonl").resolve())]
