"""`prep verify OUT --resample N`: re-tokenize a seeded sample of N source records with HF
tokenizers (the reference backend) and the output's own recipe and options, and compare the ids
(and loss masks) with what the output holds.

Document i of an output is record i of its sorted inputs when no record was skipped or dropped
and samples were not packed or split into turns; other outputs are refused in one line. The
output's fingerprint is recomputed first: a tokenizer, template or recipe source changed since
is named rather than reported as a thousand differences.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from loaders.formats.indexed import IndexedDataset
from loaders.manifest import load
from prep import recipes, sources
from prep.errors import PrepError, Rejects

BATCH = 1 << 20


class _Collect:
    """A writer that keeps what a recipe writes."""

    def __init__(self):
        self.tokens: list[np.ndarray] = []

    def write(self, tokens, lengths, documents) -> None:
        self.tokens.append(np.asarray(tokens))


def _recipe(m: dict):
    from prep.tokenize.config import TokenizeConfig, tokenize_fingerprint
    from prep.tokenize.stage import chat_template_of, encoding_job
    from prep.tokenize.tokenizer import Encoder, load_spec

    c = m["config"]
    fields = {f.name for f in dataclasses.fields(TokenizeConfig)}
    config = TokenizeConfig(**{k: v for k, v in c.items() if k in fields})
    config.tokenizer = m["tokenizer"].get("source") or config.tokenizer  # resolved when it ran: from any folder now
    spec = load_spec(config.tokenizer, config.eod_token, config.bos_token)
    recipe = recipes.get(config.recipe)
    sft = recipe.loss_mask
    template = chat_template_of(config, spec)
    recipe_job = recipe.prepare(config, spec)
    eod, bos = (spec.eod_id if config.eod else None), (spec.bos_id if config.bos else None)
    fingerprint = tokenize_fingerprint(config, spec.sha256, eod, bos, m["tokenizer"]["dtype"], template if sft else None)
    if fingerprint != m["fingerprint"]:
        raise PrepError(f"--resample: the tokenizer ({config.tokenizer}), its template or the options differ from what made "
                        f"this output (fingerprint {fingerprint}, the manifest's {m['fingerprint']}); nothing to compare")
    job = encoding_job(config, spec, m["tokenizer"]["dtype"], template if sft else None, None, recipe_job)
    return recipe(job, spec.json), Encoder(spec.json, "hf", config.split_special_tokens)


def resample(out: Path, n: int, seed: int = 0) -> tuple[int, list[str], dict]:
    """(records compared, problems, chat outputs' mask coverage by role: role -> [trained, tokens])."""
    m = load(out)
    c, stats = m["config"], m["stats"]
    if m["kind"] != "tokens" or m["format"] != "megatron" or "retrieval" in m:
        raise PrepError(f"{out}: --resample compares Megatron tokenize outputs (not {m['kind']} / {m['format']} or retrieval)")
    if c.get("pack") or c.get("per_turn") or ":" in str(c.get("recipe")):
        raise PrepError(f"{out}: --resample needs document i to be record i: not a packed, --per-turn or custom-recipe output")
    if stats.get("skipped_total") or stats.get("dropped_overlong"):
        raise PrepError(f"{out}: {stats.get('skipped_total', 0) + stats.get('dropped_overlong', 0):,} record(s) were skipped or "
                        "dropped, so document i is not record i; --resample needs an output without")
    recipe, encoder = _recipe(m)
    root = Path(m["_dir"])
    datasets = {key: [IndexedDataset(root / s["prefix"]) for s in d["shards"]] for key, d in m["datasets"].items()}
    total = stats["documents"]
    picks = set(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False).tolist())
    problems, index, compared, coverage = [], 0, 0, {}
    for entry in m["inputs"]:
        path, count = entry["path"], entry["records"]
        if not any(index <= p < index + count for p in picks):
            index += count
            continue
        whole = ((records, locate) for start, stop in sources.plan_file(Path(path), 1 << 62)  # a unit's bounds are the reader's
                 for records, locate in sources.read_unit(path, start, stop, recipe.source_keys(), Rejects(False), BATCH))
        for records, locate in whole:
            for j, record in enumerate(records):
                if index in picks:
                    problems += _compare(recipe, encoder, record, locate(j), path, index, datasets)
                    compared += 1
                    if c["recipe"] == "chat":
                        _coverage(recipe, encoder, record, coverage)
                index += 1
    return compared, problems, coverage


def _coverage(recipe, encoder, record: dict, coverage: dict) -> None:
    """Add this record's content tokens, and how many are trained, by the role of their message
    (found in the render on their own, apart from the mask: a user turn trained shows here)."""
    from prep.recipes.chat import normalize
    from prep.recipes.templates import BadConversation

    try:
        text, spans = recipe.render(record)
        messages, _ = normalize(record)
    except BadConversation:
        return
    ids, _ = encoder.encode([text])
    mask = recipe.mask(text, spans, ids)
    starts, ends, raw = recipe.offsets(text, ids)
    position = 0
    for message in messages:
        content = (message.get("content") or "").strip()
        at = text.find(content, position) if content else -1
        if at < 0:
            continue
        lo, hi = (len(text[:at].encode()), len(text[:at + len(content)].encode())) if raw is not None else (at, at + len(content))
        inside = (ends > lo) & (starts < hi)
        counts = coverage.setdefault(message["role"], [0, 0])
        counts[0] += int(mask[inside].sum())
        counts[1] += int(inside.sum())
        position = at + len(content)


def _document(shards: list[IndexedDataset], d: int) -> np.ndarray:
    for ds in shards:
        if d < ds.num_documents:
            return np.concatenate([ds[s] for s in range(ds.document_indices[d], ds.document_indices[d + 1])] or [np.zeros(0)])
        d -= ds.num_documents
    raise IndexError(d)


def _compare(recipe, encoder, record, line, path, index, datasets) -> list[str]:
    writers = {key: _Collect() for key in datasets}
    recipe.encode_batch([record], lambda j: line, path, Rejects(False), writers, encoder, {"truncated": 0, "dropped_overlong": 0})
    problems = []
    for key, writer in writers.items():
        fresh = np.concatenate(writer.tokens) if writer.tokens else np.zeros(0, np.int64)
        stored = _document(datasets[key], index)
        if not np.array_equal(fresh.astype(np.int64), stored.astype(np.int64)):
            at = next((i for i in range(min(len(fresh), len(stored))) if fresh[i] != stored[i]), min(len(fresh), len(stored)))
            what = "loss mask" if key == "loss_mask" else f"{key} ids"
            problems.append(f"{path}:{line}: document {index:,}: the {what} differ from a fresh tokenization at position {at} "
                            f"({len(stored)} stored, {len(fresh)} fresh)")
    return problems
