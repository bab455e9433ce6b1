"""`prep verify` and `prep inspect`: check a finished output, and describe it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loaders.formats import nanogpt
from loaders.formats.indexed import IndexedDataset
from loaders.manifest import ManifestError, encoders_of, load
from prep.pipeline.checksum import file_checksum


def verify(out: Path, megatron: bool = True) -> list[str]:
    """Problems found (empty when all is well): sizes, checksums, counts, and a full read."""
    try:
        manifest = load(out)
    except ManifestError as exc:
        return [str(exc)]
    if manifest["kind"] == "latents":
        from prep.latents.verify import verify as verify_cache

        return verify_cache(out)
    problems = []
    if "retrieval" in manifest:
        problems += _check_table(out, manifest)
    reader = _megatron_reader() if megatron and manifest["format"] == "megatron" else None
    for key, dataset in manifest["datasets"].items():
        for shard in dataset["shards"]:
            files = {name: entry for name, entry in shard.items() if isinstance(entry, dict)}
            found = [_check_file(out / entry["path"], entry) for entry in files.values()]
            if any(found):
                problems += [p for p in found if p]
                continue
            if manifest["format"] == "nanogpt":
                problems += _check_nanogpt(out, shard, dataset, manifest["tokenizer"].get("bos_id") if manifest["config"]["bos"] else None)
                continue
            try:
                ds = IndexedDataset(out / shard["prefix"])
            except (OSError, ValueError) as exc:  # an empty or damaged .bin/.idx: a problem to report, not a traceback
                problems.append(f"{shard['prefix']}: unreadable ({exc})")
                continue
            counts = (ds.num_documents, len(ds), int(ds.sequence_lengths.sum(dtype=np.int64)))
            if counts != (shard["documents"], shard["sequences"], shard["tokens"]):
                problems.append(f"{shard['prefix']}: (documents, sequences, tokens) {counts} != manifest "
                                f"{(shard['documents'], shard['sequences'], shard['tokens'])}")
            if ds.dtype.name != dataset["dtype"]:
                problems.append(f"{shard['prefix']}: dtype {ds.dtype.name} != manifest {dataset['dtype']}")
            if reader is not None:
                problems += _check_with_megatron(reader, ds, out / shard["prefix"])
    return problems


def _check_table(out: Path, manifest: dict) -> list[str]:
    """A retrieval output's table: its files whole, and every row it names inside the datasets."""
    from loaders.formats.retrieval import Table

    files = manifest["retrieval"]["files"]
    problems = [p for p in (_check_file(out / entry["path"], entry) for entry in files.values()) if p]
    if problems:
        return problems
    table = Table(out)
    queries, documents = manifest["datasets"]["queries"]["sequences"], manifest["datasets"]["documents"]["sequences"]
    if len(table) != queries or len(table.document_ids) != documents:
        problems.append(f"{out}: the table has {len(table):,} queries and {len(table.document_ids):,} documents, "
                        f"the datasets {queries:,} and {documents:,}")
    for name, rows in (("table_positives", table.positives), ("table_negatives", table.negatives)):
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= documents):
            problems.append(f"{out / (name + '.npy')}: names a document outside 0..{documents - 1}")
    return problems


def _check_file(path: Path, entry: dict) -> str | None:
    if not path.exists():
        return f"{path}: missing"
    if path.stat().st_size != entry["bytes"]:
        return f"{path}: {path.stat().st_size} bytes, manifest says {entry['bytes']}"
    if file_checksum(path) != entry["xxh3_128"]:
        return f"{path}: checksum differs from the manifest"
    return None


def _check_nanogpt(out: Path, shard: dict, dataset: dict, bos_id: int | None) -> list[str]:
    path = out / shard["path"]
    try:
        tokens = nanogpt.read_shard(path)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    if len(tokens) != shard["tokens"] or tokens.dtype.name != dataset["dtype"]:
        problems.append(f"{path}: header says {len(tokens)} {tokens.dtype.name} tokens, manifest {shard['tokens']} {dataset['dtype']}")
    if "mask" in shard and nanogpt.mask_path(path).stat().st_size != len(tokens):
        problems.append(f"{nanogpt.mask_path(path)}: {nanogpt.mask_path(path).stat().st_size} mask bytes for {len(tokens)} tokens")
    if bos_id is not None:
        positions = nanogpt.read_bos_index(path)
        if not np.array_equal(positions, np.flatnonzero(np.asarray(tokens) == bos_id)):
            problems.append(f"{nanogpt.bos_index_path(path)}: does not list exactly the BOS positions of {path.name}")
    return problems


def _megatron_reader():
    import warnings

    try:
        with warnings.catch_warnings():  # megatron-core warns about optional GPU libraries on import
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    except Exception:  # megatron-core is an optional, heavy dependency
        return None
    return MegatronIndexedDataset


def _check_with_megatron(reader, ours: IndexedDataset, prefix: Path) -> list[str]:
    theirs = reader(str(prefix), mmap=True)
    if len(theirs) != len(ours) or not np.array_equal(theirs.document_indices, ours.document_indices):
        return [f"{prefix}: Megatron-Core reads {len(theirs)} sequences / other document indices"]
    if len(ours) and not np.array_equal(theirs.sequence_lengths, ours.sequence_lengths):
        return [f"{prefix}: Megatron-Core reads other sequence lengths"]
    return []


def describe(out: Path) -> str:
    manifest = load(out)
    stats = manifest["stats"]
    if manifest["kind"] == "latents":
        encoders = encoders_of(manifest)
        parts = [f"{role} {e.get('path', '')}" for role, e in encoders.items() if isinstance(e, dict) and "path" in e]
        return "\n".join([f"{out}: latents / {manifest['format']} ({encoders.get('family')}), fingerprint {manifest['fingerprint']}",
                          *(f"  {p}" for p in parts), *(line for line in _latents_summary(manifest) if not line.startswith("wall"))])
    lines = [f"{out}: {manifest['kind']} / {manifest['format']}, fingerprint {manifest['fingerprint']}",
             f"tokenizer {manifest['tokenizer']['source']} (sha256 {manifest['tokenizer']['sha256'][:16]}..., "
             f"vocab {manifest['tokenizer']['vocab_size']:,}, {manifest['tokenizer']['dtype']})",
             f"documents {stats['documents']:,}  tokens {stats['tokens']:,}  empty {stats['empty_documents']:,}  "
             f"skipped {stats['skipped_total']:,} {stats['skipped'] or ''}"]
    hist = stats["length_histogram"] or {"edges": [0], "counts": []}
    what = "document"
    if "retrieval" in manifest:  # the first dataset is the queries; the documents have their own histogram
        n = stats["negatives_per_query"]
        lines[2] = (f"queries {stats['queries']:,}  distinct documents {stats['distinct_documents']:,}  references "
                    f"{stats['documents_referenced']:,}  negatives a query {n['min']}..{n['max']} (mean {n['mean']})  "
                    f"skipped {stats['skipped_total']:,} {stats['skipped'] or ''}")
        hist, what = manifest["datasets"]["documents"]["length_histogram"], "retrieval document"
    peak = max(hist["counts"] or [1]) or 1
    lines.append(f"{what} length (tokens):")
    for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
        if n:
            lines.append(f"  [{lo:>8}, {hi:>8})  {n:>10,}  {'#' * max(1, round(40 * n / peak))}")
    root = Path(manifest["_dir"])
    for key, dataset in manifest["datasets"].items():
        if manifest["format"] == "nanogpt":
            masks = " with .mask sidecars" if dataset["shards"] and "mask" in dataset["shards"][0] else ""
            lines.append(f"shards for {key!r}: {root}/{key}_*.bin ({len(dataset['shards'])} of up to {dataset['shard_tokens']:,} tokens{masks})")
            continue
        path = " ".join(f"{s['tokens']} {root / s['prefix']}" for s in dataset["shards"])
        lines.append(f"--data-path for {key!r}: {path}")
    return "\n".join(lines)


def _latents_summary(manifest: dict) -> list[str]:
    from prep.latents.finalize import summary

    return summary(manifest, None, 0.0).splitlines()
