"""Read and check `manifest.json`, the record that an output directory is complete."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "prep.manifest/1"
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    pass


def manifest_path(path: str | Path) -> Path:
    """Accept an output directory or the manifest file itself."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def load(path: str | Path, fingerprint: str | None = None) -> dict:
    """The manifest as a dict; raises ManifestError if missing, of another schema, or of another fingerprint."""
    path = manifest_path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no manifest (the run is incomplete, or this is not a prep output)")
    manifest = json.loads(path.read_text())
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: schema {manifest.get('schema')!r}, this reader knows {SCHEMA!r}")
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise ManifestError(f"{path}: fingerprint {manifest['fingerprint']} != expected {fingerprint}")
    manifest["_dir"] = str(path.parent.resolve())
    return manifest


def dataset_prefixes(manifest: dict, key: str | None = None) -> list[str]:
    """Absolute Megatron path prefixes of every shard, in order (of one key, or of the only key)."""
    datasets = manifest["datasets"]
    if key is None:
        if len(datasets) != 1:
            raise ManifestError(f"manifest has datasets {sorted(datasets)}: name one")
        key = next(iter(datasets))
    root = Path(manifest["_dir"])
    return [str(root / shard["prefix"]) for shard in datasets[key]["shards"]]


def encoders_of(manifest: dict) -> dict:
    """A latent cache's VAE and text-encoder identities (weights hashes, settings): `encoders`,
    or `tokenizer` in caches made before prep 0.1's stage-driver restructure."""
    return manifest.get("encoders") or manifest.get("tokenizer") or {}
