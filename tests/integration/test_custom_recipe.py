"""Bring your own recipe: `--recipe module:callable` (or FILE.py:callable) maps each raw record to a
built-in recipe's input; the output is byte for byte the built-in recipe's over the mapped records.
The callable runs in the workers, its source is in the fingerprint, its exceptions are bad records."""

import json

import pytest

from chat_cases import TEMPLATES
from helpers import TOKENIZERS, prep, write_jsonl

MODULE = '''
class Boom(ValueError):
    pass


def make_messages(record):
    if record.get("broken"):
        raise Boom("no answer here")
    return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]


def make_instruction(record):
    return {"context": record["doc"], "question": record["q"], "answer": record["a"]}


class HellaSwagLike:
    """AutoModel's minimal custom dataset pattern: each method takes a batch (a dict of lists)."""

    def get_context(self, examples):
        return examples["ctx"]

    def get_target(self, examples):
        return [endings[int(label)] for endings, label in zip(examples["endings"], examples["label"])]
'''

ROWS = [{"q": f"Question {i}: what did Botchan say?", "a": f"Answer {i}, briefly.", "doc": f"Document {i}.",
         "ctx": f"He walked {i} steps and", "endings": [" fell.", " sat down.", " ran."], "label": str(i % 3)} for i in range(40)]


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "lib" / "my_recipes.py"
    path.parent.mkdir()
    path.write_text(MODULE)
    return path


def _same_bytes(a, b) -> None:
    names = sorted(p.name for p in a.glob("*_document.*"))
    assert names and names == sorted(p.name for p in b.glob("*_document.*"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_messages_callable_is_the_chat_recipe_over_its_messages(tmp_path, module):
    corpus = write_jsonl(tmp_path / "raw.jsonl", ROWS)
    mapped = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": r["q"]},
                                                                 {"role": "assistant", "content": r["a"]}]} for r in ROWS])
    tok = TEMPLATES["smollm2"]
    prep("tokenize", corpus, "-o", tmp_path / "ours", "--recipe", "my_recipes:make_messages", "--tokenizer", tok,
         "--workers", "2", "--unit-size", "1k", env={"PYTHONPATH": str(module.parent)})
    prep("tokenize", mapped, "-o", tmp_path / "builtin", "--recipe", "chat", "--tokenizer", tok)
    _same_bytes(tmp_path / "ours", tmp_path / "builtin")
    manifest = json.loads((tmp_path / "ours" / "manifest.json").read_text())
    assert manifest["config"]["recipe"] == "my_recipes:make_messages" and manifest["stats"]["documents"] == len(ROWS)


def test_an_instruction_dict_and_a_get_context_class_are_the_instruction_and_completion_recipes(tmp_path, module):
    corpus = write_jsonl(tmp_path / "raw.jsonl", ROWS)
    prep("tokenize", corpus, "-o", tmp_path / "inst", "--recipe", f"{module}:make_instruction", "--tokenizer", TOKENIZERS / "gpt2")
    prep("tokenize", corpus, "-o", tmp_path / "inst-builtin", "--recipe", "instruction", "--columns", "context=doc,question=q,answer=a",
         "--tokenizer", TOKENIZERS / "gpt2")
    _same_bytes(tmp_path / "inst", tmp_path / "inst-builtin")
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"ctx": r["ctx"], "ending": r["endings"][int(r["label"])]} for r in ROWS])
    prep("tokenize", corpus, "-o", tmp_path / "comp", "--recipe", f"{module}:HellaSwagLike", "--tokenizer", TOKENIZERS / "gpt2")
    prep("tokenize", gold, "-o", tmp_path / "comp-builtin", "--recipe", "completion", "--columns", "context=ctx,answer=ending",
         "--tokenizer", TOKENIZERS / "gpt2")
    _same_bytes(tmp_path / "comp", tmp_path / "comp-builtin")


def test_an_exception_in_the_callable_is_a_bad_record(tmp_path, module):
    rows = ROWS[:5] + [{"broken": True}] + ROWS[5:10]
    corpus = write_jsonl(tmp_path / "raw.jsonl", rows)
    args = ["tokenize", corpus, "--recipe", f"{module}:make_messages", "--tokenizer", TEMPLATES["smollm2"]]
    stopped = prep(*args, "-o", tmp_path / "out", check=False)
    assert stopped.returncode == 2 and stopped.stderr.strip().splitlines() == [
        f"error: {corpus}:6: the recipe {module}:make_messages raised Boom: no answer here"]
    prep(*args, "-o", tmp_path / "skip", "--skip-invalid")
    stats = json.loads((tmp_path / "skip" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 10 and stats["skipped"] == {f"the recipe {module}:make_messages raised Boom: no answer here": 1}


def test_the_fingerprint_covers_the_callables_source(tmp_path, module):
    corpus = write_jsonl(tmp_path / "raw.jsonl", ROWS)
    args = ["tokenize", corpus, "-o", tmp_path / "out", "--recipe", f"{module}:make_messages", "--tokenizer", TEMPLATES["smollm2"]]
    prep(*args)
    prep(*args)  # the same source: a finished output, nothing to redo
    module.write_text(MODULE.replace('record["a"]', 'record["a"].upper()'))
    changed = prep(*args, check=False)
    assert changed.returncode == 2 and "another configuration" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.parametrize("spec,reason", [
    ("no_such_module_here:f", "cannot import no_such_module_here (ModuleNotFoundError"),
    ("{module}:missing", "has no callable 'missing'"),
    ("{dir}/nope.py:f", "nope.py does not exist"),
])
def test_a_recipe_that_cannot_be_found_is_one_line(tmp_path, module, spec, reason):
    spec = spec.format(module=module, dir=tmp_path)
    corpus = write_jsonl(tmp_path / "raw.jsonl", ROWS[:3])
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", spec, "--tokenizer", TOKENIZERS / "gpt2", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --recipe {spec}: ") and reason in lines[0], lines


def test_a_class_with_only_one_of_get_context_get_target_is_one_line(tmp_path):
    module = tmp_path / "half.py"
    module.write_text("class OnlyContext:\n    def get_context(self, examples):\n        return examples['ctx']\n")
    corpus = write_jsonl(tmp_path / "raw.jsonl", ROWS[:3])
    result = prep("tokenize", corpus, "-o", tmp_path / "out", "--recipe", f"{module}:OnlyContext",
                  "--tokenizer", TOKENIZERS / "gpt2", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --recipe {module}:OnlyContext: the class has get_context but no get_target "
        "(AutoModel's custom dataset pattern needs both)"]
