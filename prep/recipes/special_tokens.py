"""The special tokens a tokenizer's post-processor adds around one text (what `tokenizer(text)`
adds in transformers): read from a declared post-processor, else found by an HF probe."""

from __future__ import annotations

import orjson

from prep.errors import PrepError


def _declared_special_tokens(processor) -> tuple[list[int], list[int]] | None:
    """(before, after) as a post-processor declares them (ByteLevel, TemplateProcessing, a
    Sequence of those); None for any other, which the HF probe settles."""
    if processor is None or processor.get("type") == "ByteLevel":
        return [], []
    if processor.get("type") == "TemplateProcessing":
        before, after, seen = [], [], False
        for piece in processor["single"]:
            if "Sequence" in piece:
                seen = True
            else:
                (after if seen else before).extend(processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"])
        return before, after
    if processor.get("type") == "Sequence":
        found = [_declared_special_tokens(p) for p in processor["processors"]]
        if None in found or sum(1 for b, a in found if b or a) > 1:
            return None
        return next(((b, a) for b, a in found if b or a), ([], []))
    return None


def special_tokens(tokenizer_json: str, recipe: str = "retrieval") -> tuple[list[int], list[int]]:
    """(ids before, ids after) the text that the tokenizer's post-processor adds to one sequence."""
    declared = _declared_special_tokens(orjson.loads(tokenizer_json).get("post_processor"))
    if declared is not None:
        return declared
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    found = set()
    for text in ("hello world", "a", "Query: what is 2 + 2?", "ü"):
        plain = tokenizer.encode(text, add_special_tokens=False).ids
        full = tokenizer.encode(text, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                found.add((tuple(full[:start]), tuple(full[start + len(plain):])))
                break
        else:
            found.add(None)
    if len(found) != 1 or None in found:
        raise PrepError(f"--recipe {recipe}: the tokenizer's post-processor does not add the same special tokens "
                        "around every text; such a tokenizer is not supported")
    before, after = found.pop()
    return list(before), list(after)
