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
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{path}: not a prep manifest (name a prep output folder or its manifest.json)") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        schema = manifest.get("schema") if isinstance(manifest, dict) else None
        raise ManifestError(f"{path}: schema {schema!r}, this reader knows {SCHEMA!r}")
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise ManifestError(f"{path}: fingerprint {manifest['fingerprint']} != expected {fingerprint}")
    manifest["_dir"] = str(path.parent.resolve())
    return manifest


def dataset_prefixes(manifest: dict, key: str | None = None) -> list[str]:
    """Absolute Megatron path prefixes of every shard, in order (of one key, or of the only key)."""
    datasets = manifest["datasets"]
    if key is None:
        if len(datasets) != 1:
            raise ManifestError(f"{manifest.get('_dir', 'the output')} holds datasets {sorted(datasets)}, not one token dataset "
                                f"(an SFT or retrieval output: read it with its own loader, or name a dataset key)")
        key = next(iter(datasets))
    root = Path(manifest["_dir"])
    return [str(root / shard["prefix"]) for shard in datasets[key]["shards"]]


def encoders_of(manifest: dict) -> dict:
    """A latent cache's VAE and text-encoder identities (weights hashes, settings): `encoders`,
    or `tokenizer` in caches made before prep 0.1's stage-driver restructure."""
    return manifest.get("encoders") or manifest.get("tokenizer") or {}


def check_tokenizer(manifest: dict, tokenizer, what: str = "the tokenizer") -> None:
    """Refuse a tokenizer (as a trainer passes it) whose vocabulary is not the one the output was
    tokenized with: ids past its vocabulary, or another model's, would train silently."""
    if tokenizer is None:
        return
    recorded = manifest.get("tokenizer", {})
    try:
        size = len(tokenizer)
    except TypeError:
        return
    if recorded.get("vocab_size") is not None and size != recorded["vocab_size"]:
        raise ManifestError(f"{manifest.get('_dir', 'the output')} was tokenized with {recorded.get('source', 'another tokenizer')} "
                            f"({recorded['vocab_size']:,} tokens); {what} has {size:,}: pass the tokenizer the output was made with")
