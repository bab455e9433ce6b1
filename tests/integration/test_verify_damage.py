"""`prep verify` recomputes every checksum: a flipped byte, a truncated .bin and a missing shard
are each named in one FAIL line, exit code 1 (a folder that is no output is a usage error, 2)."""

import pytest

from helpers import TOKENIZERS, botchan_documents, prep, write_jsonl


@pytest.fixture
def sharded(tmp_path):
    corpus = write_jsonl(tmp_path / "t.jsonl", botchan_documents(300))
    prep("tokenize", corpus, "-o", tmp_path / "out", "--tokenizer", TOKENIZERS / "gpt2", "--shard-size", "20k")
    assert len(list((tmp_path / "out").glob("*.bin"))) >= 3
    return tmp_path / "out"


def _damage(out, how):
    path = out / "text_document_00001.bin"
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[123] ^= 0x40
        path.write_bytes(bytes(data))
        return f"FAIL {path}: checksum differs from the manifest"
    if how == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size - 2)
        return f"FAIL {path}: {size - 2} bytes, manifest says {size}"
    path.unlink()
    return f"FAIL {path}: missing"


@pytest.mark.parametrize("how", ["flip", "truncate", "missing"])
def test_damage_is_named_in_one_line_and_exit_1(sharded, how):
    expected = _damage(sharded, how)
    result = prep("verify", sharded, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines == [expected, f"error: {sharded}: 1 problem(s)"], lines
