"""Finalize a latent cache: the metadata shards and metadata.json in AutoModel's layout (items in
plan order, absolute paths), then manifest.json, last; and the end-of-run summary."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from loaders.formats import latents as fmt
from loaders.manifest import MANIFEST_NAME
from prep import __version__
from prep import manifest as manifest_mod
from prep.latents.families import family_class
from prep.pipeline import durable, workdir as wd
from prep.pipeline.checksum import item_checksum


def metadata_entry(entry: dict, root: Path) -> dict:
    """AutoModel's metadata entry (absolute cache_file) plus our bytes/xxh64 for verify."""
    skip = {"index", "key", "frame_indices"}
    return {**{k: v for k, v in entry.items() if k not in skip}, "cache_file": str(root / entry["cache_file"])}


def finalize(job: dict, timings: dict) -> dict:
    """Metadata shards, metadata.json, then manifest.json (last). Returns the manifest."""
    out = Path(job["out"])
    records = wd.finished_records(Path(job["workdir"]), job["fingerprint"], None, out,
                                  lambda unit: f"items {unit.items.start}..{unit.items.stop - 1}")
    cfg = job["config"]
    entries = [metadata_entry(e, out) for r in records for e in r["items"]]
    for folder in sorted({Path(e["cache_file"]).parent for e in entries}):  # the item files' renames, made durable
        durable.fsync_dir(folder)
    shards = []
    for i, start in enumerate(range(0, max(len(entries), 1), fmt.SHARD_ITEMS)):
        part = entries[start:start + fmt.SHARD_ITEMS]
        path = out / fmt.shard_name(i)
        data = json.dumps(part, indent=1).encode()
        durable.write_bytes(path, data, sync_folder=False)
        shards.append({"path": path.name, "items": len(part), "bytes": len(data), "xxh64": item_checksum(data)})
    family = family_class(cfg["family"])
    family_video = family.video
    metadata = {"processor": cfg["family"], "model_name": cfg["model"] or job["components"]["vae"],
                "model_type": family.model_type,
                "total_items": len(entries), "num_shards": len(shards), "shard_size": fmt.SHARD_ITEMS,
                "shards": [s["path"] for s in shards], "max_pixels": job["max_pixels"], "caption_format": "sidecar/jsonl",
                "mode": "video" if family_video else "image", "target_frames": cfg["frames"] if family_video else None,
                "tool": f"prep {__version__}", "fingerprint": job["fingerprint"]}
    durable.write_json(out / fmt.METADATA, metadata)
    bucket_counts = collections.Counter(f"{e['bucket_resolution'][0]}x{e['bucket_resolution'][1]}" for e in entries)
    plan = wd.read_plan(Path(job["workdir"]))
    per_input = collections.Counter(e.get("image_path") or e.get("video_path") for e in entries)
    inputs = [{"path": i["path"], "bytes": i["bytes"], "records": per_input.get(i["path"], 0)} for i in plan["items"]]
    encode_s = sum(r["encode_s"] for r in records)
    datasets = {"latents": {"metadata": fmt.METADATA, "shards": shards, "items": len(entries),
                            "bytes": sum(e["bytes"] for e in entries), "buckets": dict(sorted(bucket_counts.items())),
                            "video": family_video, "root": str(out),
                            "inputs_sha256": job.get("inputs_sha256")}}  # files, sizes and captions: a rerun checks them
    stats = {"items": len(entries), **wd.skipped_stats(records),
             "bucket_table": job["table"], "encode_s": round(encode_s, 3)}
    encoders = {**job["encoders"], "family": cfg["family"], "settings": job["settings"]}
    manifest = manifest_mod.build("latents", "automodel", job["fingerprint"], cfg, None, inputs, datasets, stats, timings,
                                  encoders=encoders)
    manifest_mod.write(out, manifest)
    wd.remove_workdir(job["workdir"])
    return manifest


def summary(manifest: dict, totals: dict | None, wall: float) -> str:
    stats, dataset = manifest["stats"], manifest["datasets"]["latents"]
    lines = [f"items       {stats['items']:,} in {len(dataset['buckets'])} bucket(s): "
             + ", ".join(f"{k} {v:,}" for k, v in list(dataset["buckets"].items())[:8]),
             f"bytes out   {dataset['bytes'] / 1e6:,.1f} MB"]
    lines += wd.skipped_line(stats)
    if totals and totals["items"] and totals["wall_s"]:
        busy = totals["encode_s"] / totals["wall_s"]
        lines.append(f"this run    {totals['items']:,} items in {totals['wall_s']:.1f}s: {totals['items'] / totals['wall_s']:,.2f} items/s, "
                     f"encoder busy {busy:.0%}" + (f" ({totals['skipped_units']} unit(s) resumed)" if totals["skipped_units"] else ""))
    else:
        lines.append(f"wall        {wall:.2f}s")
    lines.append(f"fingerprint {manifest['fingerprint']}")
    lines.append(f"manifest    {Path(manifest['config']['output']) / MANIFEST_NAME}")
    return "\n".join(lines)
