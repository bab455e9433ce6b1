"""Finalize a tokenize output: every unit's parts merged into shards in unit order, the
manifest written last; and the end-of-run summary."""

from __future__ import annotations

from pathlib import Path

from prep import manifest as manifest_mod, recipes
from prep.errors import PrepError
from prep.pipeline import faults, workdir as wd
from prep.pipeline.units import Unit
from prep.tokenize.pack import plan_packs
from prep.writers import megatron, megatron_stream
from prep.writers import nanogpt as nanogpt_writer


def _why_empty(job: dict, records: list[dict]) -> str:
    """What became of the records of an output with no tokens, and which option to look at."""
    c = job["config"]
    skipped, dropped = (sum(sum(r["skipped"].values()) for r in records), sum(r.get("dropped_overlong", 0) for r in records))
    kept = sum(r["records"] for r in records)
    what = f"{kept:,} record(s) written" + (f", {skipped:,} skipped as bad" if skipped else "") + \
        (f", {dropped:,} dropped as over --max-length {c.get('max_length')} with nothing to train left" if dropped else "")
    look = "--max-length" if dropped else "--text-key" if c.get("recipe") == "text" else "the inputs and --columns"
    return f"{what}; check {look}"


def finalize(job: dict, timings: dict, merged: dict | None = None) -> dict:
    """Merge every unit's parts into shards and write the manifest, last. Returns the manifest."""
    out, workdir = Path(job["out"]), Path(job["workdir"])
    records = wd.finished_records(workdir, job["fingerprint"], megatron.PARTS_FORMAT, out,
                                  lambda unit: f"{unit.path} [{unit.byte_range[0]}:{unit.byte_range[1]}]")
    empty = [key for key in job["keys"] if not any(r["keys"][key]["tokens"] for r in records)]
    if empty:  # Megatron-Core can't map an empty .bin: a dataset without tokens is no dataset
        raise PrepError(f"{out}: no tokens under {', '.join(map(repr, empty))}; nothing to write: {_why_empty(job, records)}")
    units = [Unit.from_json(r["unit"]) for r in records]
    shard_tokens = job["config"]["shard_tokens"]
    custom = recipes.of_job(job).finalize_parts(job, workdir, out, units)
    extra_stats, extra_fields = {}, {}
    if custom is not None:
        datasets, extra_stats, extra_fields = custom
    elif job["format"] == "nanogpt":
        legacy = job["config"]["nanogpt_header"] == "legacy"
        masked = "loss_mask" in job["keys"]  # SFT: the masks are each token shard's sidecar, not a dataset
        datasets = {key: nanogpt_writer.finalize_key(workdir, out, units, key, job["dtype"], shard_tokens, job["bos_id"], legacy,
                                                     "loss_mask" if masked else None)
                    for key in job["keys"] if key != "loss_mask"}
    else:
        packs = None
        if job["config"].get("pack"):
            lengths = megatron.part_lengths(workdir, units, job["keys"][0])
            packs = plan_packs(lengths, job["config"]["pack"], job["config"]["pack_window"], job["config"]["seed"])
        datasets = {key: megatron.finalize_key(workdir, out, units, key, job["dtypes"].get(key, job["dtype"]), shard_tokens, packs)
                    if packs is not None else  # a pack plan orders sequences across the dataset: in memory
                    megatron_stream.finalize_key(workdir, out, units, key, job["dtypes"].get(key, job["dtype"]), shard_tokens,
                                                 (merged or {}).get(key))  # memory flat in the dataset's size
                    for key in job["keys"]}
        if packs is not None:
            first = datasets[job["keys"][0]]
            first["packing"] = {"capacity": job["config"]["pack"], "packs": first["documents"], "samples": first["sequences"],
                                "efficiency": round(first["tokens"] / max(1, first["documents"] * job["config"]["pack"]), 6)}
    faults.crash_in_finalize()  # a crash after the shards, before the manifest
    plan = wd.read_plan(workdir)
    per_input: dict[str, int] = {}
    for r in records:
        per_input[r["unit"]["path"]] = per_input.get(r["unit"]["path"], 0) + r["records"]
    first = datasets[job["keys"][0]]
    stats = {
        "documents": first["documents"], "tokens": sum(d["tokens"] for key, d in datasets.items() if key != "loss_mask"),  # a mask is no tokens
        "empty_documents": sum(r["keys"][job["keys"][0]]["empty_documents"] for r in records),
        **wd.skipped_stats(records),
        "truncated": sum(r.get("truncated", 0) for r in records),
        "dropped_overlong": sum(r.get("dropped_overlong", 0) for r in records),
        "length_histogram": first.get("length_histogram"),
        **({"packing": first["packing"]} if "packing" in first else {}),
        **extra_stats,
    }
    inputs = [{"path": f["path"], "bytes": f["bytes"], "records": per_input.get(f["path"], 0)} for f in plan["inputs"]]
    manifest = manifest_mod.build("tokens", job["format"], job["fingerprint"], job["config"], job["tokenizer"],
                                  inputs, datasets, stats, timings)
    manifest["config"]["recipe"] = job["recipe"]
    if job.get("recipe_base"):  # the built-in recipe a user's callable feeds
        manifest["config"]["recipe_base"] = job["recipe_base"]
    manifest.update(extra_fields)
    manifest_mod.write(out, manifest)
    wd.remove_workdir(workdir)
    return manifest


def summary(manifest: dict, totals: dict | None, wall: float) -> str:
    """The end-of-run lines: counts, bytes, packing, skipped records, this run's speed, shards."""
    stats = manifest["stats"]
    bytes_in = sum(i["bytes"] for i in manifest["inputs"])
    bytes_out = sum(f["bytes"] for d in manifest["datasets"].values() for s in d["shards"] for f in s.values() if isinstance(f, dict))
    lines = [
        f"documents   {stats['documents']:,}" + (f" ({stats['empty_documents']:,} empty)" if stats["empty_documents"] else ""),
        f"tokens      {stats['tokens']:,}",
    ]
    if "distinct_documents" in stats:  # retrieval: queries are the documents counted above
        negatives = stats["negatives_per_query"]
        lines[0] = f"queries     {stats['queries']:,}"
        lines += [f"documents   {stats['distinct_documents']:,} distinct, stored once ({stats['documents_referenced']:,} references)",
                  f"negatives   {negatives['min']}..{negatives['max']} a query (mean {negatives['mean']}); table {stats['table_bytes'] / 1e6:,.2f} MB"]
    lines += [
        f"bytes in    {bytes_in / 1e6:,.1f} MB in {len(manifest['inputs'])} file(s)",
        f"bytes out   {bytes_out / 1e6:,.1f} MB in {sum(len(d['shards']) for d in manifest['datasets'].values())} shard(s)",
    ]
    if stats.get("packing"):
        p = stats["packing"]
        lines.append(f"packing     {p['samples']:,} samples in {p['packs']:,} packs of {p['capacity']:,}: {100 * p['efficiency']:.2f}% full")
    if stats.get("truncated") or stats.get("dropped_overlong"):
        lines.append(f"overlong    {stats['truncated']:,} truncated, {stats['dropped_overlong']:,} dropped")
    lines += wd.skipped_line(stats)
    if totals is not None and totals["bytes"]:
        lines.append(f"this run    {totals['bytes'] / 1e6:,.1f} MB, {totals['tokens']:,} tokens in {wall:.2f}s: "
                     f"{totals['bytes'] / 1e6 / wall:,.1f} MB/s, {totals['tokens'] / wall:,.0f} tokens/s"
                     + (f" ({totals['skipped_units']} unit(s) resumed from an earlier run)" if totals["skipped_units"] else ""))
    else:
        lines.append(f"wall        {wall:.2f}s")
    for key, dataset in manifest["datasets"].items():
        names = [s.get("prefix") or s["path"] for s in dataset["shards"]]
        lines.append(f"{key:<11} {dataset['dtype']}, {len(names)} shard(s): " + " ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
    lines.append(f"manifest    {Path(manifest['config']['output']) / 'manifest.json'}")
    return "\n".join(lines)
