"""`prep merge A B ... -o OUT`: finished tokenize outputs combined without re-tokenizing.

Like Megatron-LM's tools/merge_datasets.py, but the result is the output one run over all the
inputs would have written: each input shard becomes a part (its `.bin` linked, its index read into
the part's sequence lengths) and the finalize merge of prep.writers runs over them in the order
given, so the bytes equal `prep tokenize` over A's inputs then B's (a run sorts its inputs by
path: give A B in that order), with the same shard size. Streams token bytes and indexes a shard
at a time (prep.writers.megatron_stream): memory flat in the size. Megatron and NanoGPT outputs
(NanoGPT's sequence lengths are one a shard); not packed SFT outputs
(packing is global to a run), retrieval tables or latent caches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from loaders import manifest as manifest_mod
from loaders.formats import indexed, nanogpt
from prep import manifest as writing
from prep.errors import PrepError
from prep.pipeline import durable
from prep.writers import megatron_stream, nanogpt as nanogpt_writer

SAME = (("tokenizer.sha256", "tokenizer"), ("tokenizer.dtype", "token dtype"), ("format", "format"),
        ("config.recipe", "recipe"), ("config.eod", "EOD setting (--eod)"), ("config.bos", "BOS setting (--bos)"),
        ("config.shard_tokens", "shard size (--shard-size / --shard-tokens)"), ("config.nanogpt_header", "NanoGPT header"),
        ("datasets", "dataset keys"))


def _field(m: dict, dotted: str):
    value = m
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return sorted(value) if dotted == "datasets" else value


def _check(manifests: list[dict], paths: list[Path]) -> None:
    first = manifests[0]
    for m, path in zip(manifests, paths):
        if m["kind"] != "tokens":
            raise PrepError(f"{path}: a {m['kind']} output; prep merge combines tokenize outputs")
        if "retrieval" in m:
            raise PrepError(f"{path}: a retrieval output (its table names rows across datasets); tokenize the inputs together")
        if (m["config"].get("pack")):
            raise PrepError(f"{path}: a packed SFT output (packing is global to a run); merge the unpacked outputs, or "
                            "tokenize the inputs together with --pack")
        for dotted, what in SAME:
            if _field(m, dotted) != _field(first, dotted):
                raise PrepError(f"{path}: made with another {what} than {paths[0]} ({dotted}: {_field(m, dotted)!r} "
                                f"against {_field(first, dotted)!r})")


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system: the parts are only read
        target.symlink_to(source.resolve())


def _parts_of(m: dict, key: str, parts: Path, start: int) -> int:
    """The input's shards of `key` as parts numbered from `start`; returns the next number."""
    root = Path(m["_dir"])
    for shard in m["datasets"][key]["shards"]:
        stem = parts / f"{start:06d}.{key}"
        if m["format"] == "nanogpt":
            _link(root / shard["path"], Path(f"{stem}.bin"))  # read after its header (finalize_key's part_header)
            lengths, documents = np.array([shard["tokens"]], np.int32), np.ones(1, np.int32)
            if "mask" in shard:
                _link(root / shard["mask"]["path"], parts / f"{start:06d}.loss_mask.bin")
                with open(parts / f"{start:06d}.loss_mask.seq.npy", "wb") as f:
                    np.save(f, lengths)
                    np.save(f, documents)
        else:
            ds = indexed.IndexedDataset(root / shard["prefix"])
            _link(indexed.bin_path(root / shard["prefix"]), Path(f"{stem}.bin"))
            lengths, documents = ds.sequence_lengths.astype(np.int32), np.diff(ds.document_indices).astype(np.int32)
        with open(f"{stem}.seq.npy", "wb") as f:
            np.save(f, lengths)
            np.save(f, documents)
        start += 1
    return start


def _histogram_sum(histograms: list[dict]) -> dict:
    """Power-of-two length histograms added bin by bin (the edges of the longest)."""
    edges = max((h["edges"] for h in histograms), key=len)
    counts = np.zeros(len(edges) - 1, np.int64)
    for h in histograms:
        counts[:len(h["counts"])] += h["counts"]
    return {"edges": edges, "counts": counts.tolist()}


def merge(inputs: list[str], output: str, overwrite: bool = False) -> dict:
    paths = [Path(p) for p in inputs]
    manifests = []
    for path in paths:
        try:
            manifests.append(manifest_mod.load(path))
        except manifest_mod.ManifestError as exc:
            raise PrepError(str(exc)) from None
    _check(manifests, paths)
    out = Path(output)
    if (out / manifest_mod.MANIFEST_NAME).exists() and not overwrite:
        raise PrepError(f"{out}: already holds an output; pass --overwrite to replace it")
    first = manifests[0]
    keys = list(first["datasets"])
    work = out / ".prep" / "merge"
    shutil.rmtree(work, ignore_errors=True)
    (work / "parts").mkdir(parents=True)
    datasets = {}
    nano = first["format"] == "nanogpt"
    for key in keys:
        count = 0
        for m in manifests:
            count = _parts_of(m, key, work / "parts", count)
        units = [SimpleNamespace(id=f"{i:06d}") for i in range(count)]
        dtype, shard_tokens = first["datasets"][key]["dtype"], first["config"].get("shard_tokens")
        if nano:
            masked = any("mask" in s for s in first["datasets"][key]["shards"])
            entry = nanogpt_writer.finalize_key(work, out, units, key, dtype, shard_tokens,
                                                first["tokenizer"]["bos_id"] if first["config"]["bos"] else None,
                                                first["config"].get("nanogpt_header") == "legacy", "loss_mask" if masked else None,
                                                part_header=nanogpt.HEADER_BYTES)
            entry["documents"] = sum(m["datasets"][key]["documents"] for m in manifests)
            entry["length_histogram"] = _histogram_sum([m["datasets"][key]["length_histogram"] for m in manifests])
        else:
            entry = megatron_stream.finalize_key(work, out, units, key, dtype, shard_tokens)
        datasets[key] = entry
    stats = _stats(manifests, datasets, keys)
    fingerprint = hashlib.sha256("merge:".join(m["fingerprint"] for m in manifests).encode()).hexdigest()[:32]
    inputs_list = [i for m in manifests for i in m["inputs"]]
    config = {**first["config"], "output": str(out), "merged": [str(p) for p in paths]}
    manifest = writing.build("tokens", first["format"], fingerprint, config, first["tokenizer"], inputs_list, datasets, stats,
                             {"merged_from": [m["fingerprint"] for m in manifests]})
    manifest["merged"] = [{"path": str(p.resolve()), "fingerprint": m["fingerprint"]} for p, m in zip(paths, manifests)]
    writing.write(out, manifest)
    shutil.rmtree(out / ".prep", ignore_errors=True)
    durable.fsync_dir(out)
    return manifest


def _stats(manifests: list[dict], datasets: dict, keys: list[str]) -> dict:
    stats = [m["stats"] for m in manifests]
    skipped: dict[str, int] = {}
    for s in stats:
        for reason, n in (s.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    first = datasets[keys[0]]
    return {"documents": sum(s["documents"] for s in stats),
            "tokens": sum(d["tokens"] for k, d in datasets.items() if k != "loss_mask"),
            "empty_documents": sum(s.get("empty_documents", 0) for s in stats),
            "skipped": skipped, "skipped_total": sum(skipped.values()),
            "skipped_examples": [e for s in stats for e in s.get("skipped_examples", [])][:5],
            "truncated": sum(s.get("truncated", 0) for s in stats), "dropped_overlong": sum(s.get("dropped_overlong", 0) for s in stats),
            "length_histogram": first.get("length_histogram")}
