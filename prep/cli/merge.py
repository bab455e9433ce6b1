"""`prep merge A B ... -o OUT`: combine finished tokenize outputs without re-tokenizing."""

from __future__ import annotations

import time

import click

from prep.cli.errors import StageCommand
from prep.cli.options import CONTEXT


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The merged output folder (created).")
@click.option("--overwrite", is_flag=True, help="Replace an output already in OUTPUT.")
def merge(inputs, output, overwrite):
    """Combine finished Megatron or NanoGPT outputs (the same tokenizer, dtype, recipe and shard
    size) into one, in the order given, by copying token bytes and rewriting the indexes: the
    bytes one `prep tokenize` over their inputs in that order writes. Writes a manifest that names
    the merged ones."""
    from prep.merge import merge as run_merge

    started = time.time()
    manifest = run_merge(list(inputs), output, overwrite)
    stats = manifest["stats"]
    size = sum(f["bytes"] for d in manifest["datasets"].values() for s in d["shards"] for f in s.values() if isinstance(f, dict))
    click.echo(f"merged {len(inputs)} output(s): {stats['documents']:,} documents, {stats['tokens']:,} tokens, "
               f"{size / 1e6:,.1f} MB in {time.time() - started:.2f}s -> {output}/manifest.json")
