"""Bring your own recipe: `--recipe my_pkg.my_mod:make_messages` (or `path/to/file.py:make_messages`).

The callable maps one raw record to what a built-in recipe takes, and that recipe does the rest
(templates, exact masks, packing): a `messages` list (or a record with `messages` and `tools`)
for chat; a dict with `context` / `question` / `answer` for instruction. A class with
`get_context` / `get_target` (NeMo AutoModel's minimal custom dataset pattern: each takes a batch,
a dict of lists; AutoModel's own `...llm.hellaswag:HellaSwag` works) feeds the completion recipe:
its context, then its target. Which recipe is
learned from the callable's answer on the corpus's first record. The callable runs in the
workers; the output's fingerprint covers its module's source; an exception inside it makes that
record a bad record (`path:line: the recipe ... raised ...`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from prep.errors import PrepError
from prep.quiet import quiet_import_warnings
from prep.recipes.templates import BadConversation

ROLES = {"context": "context", "question": "question", "answer": "answer"}


def is_custom(name: str) -> bool:
    return ":" in name


@functools.lru_cache(maxsize=8)
def resolve(spec: str):
    """The object `spec` names: `module.path:name` (importable, or from the working directory) or `file.py:name`."""
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise PrepError(f"--recipe {spec}: expected a built-in name or MODULE:CALLABLE (or FILE.py:CALLABLE)")
    quiet_import_warnings()  # a user's module may import AutoModel, and with it torchao
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise PrepError(f"--recipe {spec}: {where} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"prep_custom_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module  # as an import would (pickling, source lookups)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # `my_pkg.my_mod` next to where the command runs, as `python -m` would find it
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except PrepError:
        raise
    except Exception as exc:
        raise PrepError(f"--recipe {spec}: cannot import {where} ({type(exc).__name__}: {exc})") from None
    found = getattr(module, attribute, None)
    if found is None or not callable(found):
        raise PrepError(f"--recipe {spec}: {where} has no callable {attribute!r}")
    if isinstance(found, type) and hasattr(found, "get_context") != hasattr(found, "get_target"):
        has, missing = ("get_context", "get_target") if hasattr(found, "get_context") else ("get_target", "get_context")
        raise PrepError(f"--recipe {spec}: the class has {has} but no {missing} (AutoModel's custom dataset pattern needs both)")
    return found


def _is_dataset_class(target) -> bool:
    """AutoModel's minimal custom dataset pattern: a class with get_context and get_target."""
    return isinstance(target, type) and hasattr(target, "get_context") and hasattr(target, "get_target")


def source_sha256(spec: str) -> str:
    """The callable's module source (it decides the output's bytes, so the fingerprint covers it)."""
    module = sys.modules.get(getattr(resolve(spec), "__module__", ""))
    path = getattr(module, "__file__", None)
    return hashlib.sha256(Path(path).read_bytes() if path else spec.encode()).hexdigest()


def _transform(spec: str):
    """record -> the built-in recipe's record (exceptions become bad records)."""
    target = resolve(spec)
    if _is_dataset_class(target):
        try:
            instance = target()
        except TypeError:  # a dataset class whose constructor loads data (AutoModel's HellaSwag): its
            instance = target.__new__(target)  # get_context / get_target read only the batch

        def call(record):
            batch = {key: [value] for key, value in record.items()}
            return {"context": list(instance.get_context(batch))[0], "answer": list(instance.get_target(batch))[0]}
    else:
        call = target

    def transform(record: dict) -> dict:
        try:
            out = call(record)
        except Exception as exc:
            raise BadConversation(f"the recipe {spec} raised {type(exc).__name__}: {exc}") from None
        if isinstance(out, list):
            return {"messages": out}
        if not isinstance(out, dict):
            raise BadConversation(f"the recipe {spec} returned {type(out).__name__}, expected a messages list or a dict")
        return out
    return transform


def base_of(spec: str, first_record: dict | None) -> str:
    """The built-in recipe the callable feeds, from its answer on the first record."""
    if _is_dataset_class(resolve(spec)):
        return "completion"
    if first_record is None:
        raise PrepError(f"--recipe {spec}: the inputs hold no record to learn what the callable returns from")
    try:
        out = _transform(spec)(first_record)
    except BadConversation as exc:
        raise PrepError(f"--recipe {spec}: on the first record, {exc}") from None
    if "messages" in out or "conversations" in out:
        return "chat"
    if "answer" in out:
        return "instruction"
    raise PrepError(f"--recipe {spec}: the callable returned a dict with {sorted(out)}; expected `messages` (chat) "
                    "or `answer` (with `context` / `question`: instruction)")


@functools.lru_cache(maxsize=8)
def recipe_class(spec: str, base: str):
    """The built-in `base` recipe, reading each record through the callable."""
    from prep import recipes

    parent = recipes.get(base)

    class Custom(parent):
        name, help = spec, ""
        takes_columns = False

        def __init__(self, job: dict, tokenizer_json: str):
            if base != "chat":  # the callable's dict holds the roles under their own names
                job = {**job, "config": {**job["config"], "columns": ROLES}}
            super().__init__(job, tokenizer_json)
            self.transform = _transform(spec)

        def source_keys(self):
            return None  # the callable may read any column

        def samples(self, record: dict):
            return super().samples(self.transform(record))

    Custom.__name__ = Custom.__qualname__ = f"Custom{parent.__name__}"
    return Custom
