"""`prep verify` of a latent cache: manifest, metadata shards, every item file, and the weights."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from loaders.formats import latents as fmt
from loaders.manifest import ManifestError, encoders_of, load as load_manifest
from prep.latents.families import family_class, names
from prep.latents.settings import fingerprint_of
from prep.pipeline.checksum import WEIGHTS, folder_checksum, item_checksum


def verify(out: Path, rehash: bool = True) -> list[str]:
    """Problems of a finished cache: manifest, metadata shards (xxh64), every item file (bytes,
    xxh64, loadable with weights_only=True), and, where the recorded VAE / text-encoder folders
    still exist, weights that changed since (a cache made with other weights)."""
    try:
        manifest = load_manifest(out)
    except (ManifestError, json.JSONDecodeError) as exc:
        return [str(exc)]
    if manifest.get("kind") != "latents":
        return [f"{out}: manifest kind {manifest.get('kind')!r}, not a latent cache"]
    problems = []
    encoders = encoders_of(manifest)
    settings = encoders.get("settings", {})
    if fingerprint_of(settings) != manifest["fingerprint"]:
        problems.append(f"{out}: the fingerprint does not match the recorded settings (edited manifest?)")
    for role, identity in encoders.items():
        if not isinstance(identity, dict) or WEIGHTS not in identity:
            continue
        path = Path(identity["path"])
        if rehash and path.is_dir() and folder_checksum(path) != identity[WEIGHTS]:
            problems.append(f"{role} {path}: its files changed since the cache was made (other weights); re-run prep latents --overwrite")
    dataset = manifest["datasets"]["latents"]
    family = encoders.get("family") or manifest["config"].get("family")
    fields = family_class(family).fields if family in names() else ()
    problems += _check_metadata(out, manifest)
    seen, listed = 0, set()
    for shard in dataset["shards"]:
        path = out / shard["path"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        if item_checksum(data) != shard["xxh64"]:
            problems.append(f"{path}: checksum differs from the manifest")
            continue
        for entry in json.loads(data):
            seen += 1
            listed.add(Path(*Path(entry["cache_file"]).parts[-2:]))
            problems.extend(_check_item(out, entry, fields))
    if seen != dataset["items"]:
        problems.append(f"{out}: {seen} items in the metadata shards, the manifest says {dataset['items']}")
    # bucket-shaped folders the cache does not use count too (left by another run, copied in)
    folders = set(dataset["buckets"]) | {p.name for p in out.iterdir() if p.is_dir() and re.fullmatch(r"\d+x\d+", p.name)}
    stray = sorted(str(p.relative_to(out)) for bucket in sorted(folders) for p in (out / bucket).glob("*")
                   if p.relative_to(out) not in listed)
    if stray:
        problems.append(f"{out}: {len(stray)} file(s) in bucket folders that no metadata shard lists (first: {stray[0]})")
    return problems


def _check_metadata(out: Path, manifest: dict) -> list[str]:
    """metadata.json is what AutoModel's loaders open first: it must list the manifest's shards."""
    path = out / fmt.METADATA
    try:
        metadata = json.loads(path.read_text())
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    except ValueError:
        return [f"{path}: not JSON"]
    dataset = manifest["datasets"]["latents"]
    expected = {"shards": [s["path"] for s in dataset["shards"]], "total_items": dataset["items"],
                "fingerprint": manifest["fingerprint"]}
    found = {k: metadata.get(k) if isinstance(metadata, dict) else None for k in expected}
    wrong = [k for k in expected if found[k] != expected[k]]
    return [f"{path}: {', '.join(wrong)} differ from the manifest"] if wrong else []


def _check_item(out: Path, entry: dict, fields: tuple[str, ...]) -> list[str]:
    import torch

    path = out.joinpath(*Path(entry["cache_file"]).parts[-2:])  # <W>x<H>/<name>: the folder may have moved
    try:
        data = path.read_bytes()
    except OSError:
        return [f"{path}: missing"]
    if len(data) != entry["bytes"] or item_checksum(data) != entry["xxh64"]:
        return [f"{path}: bytes differ from the metadata (changed after finalize)"]
    try:
        item = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any load failure is the item's problem
        return [f"{path}: not loadable with weights_only=True ({type(exc).__name__})"]
    missing = [f for f in fields if f not in item]
    return [f"{path}: lacks the family's field(s) {', '.join(missing)}"] if missing else []
