"""`prep finalize`, `verify`, `inspect`, `index` and `status`: commands over finished (or array-run) outputs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from prep.cli.errors import StageCommand
from prep.cli.options import CONTEXT
from prep.errors import PrepError, VerifyFailed
from prep.pipeline.driver import finalize_output


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("output", type=click.Path(file_okay=False, exists=True))
def finalize(output):
    """Merge the parts of a finished Slurm array into shards and write the manifest."""
    finalize_output(output, time.time())


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--megatron/--no-megatron", default=True, show_default=True,
              help="Also read every shard through Megatron-Core's IndexedDataset when it is installed.")
@click.option("--resample", type=click.IntRange(min=1), default=None,
              help="Also re-tokenize a seeded sample of N source records (HF tokenizers, the output's recipe and options) "
                   "and compare their ids and masks with the output's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --resample sample.")
def verify(output, megatron, resample, seed):
    """Check checksums, sizes and counts of a finished output, and read it through the real reader."""
    from loaders.manifest import ManifestError, load
    from prep.verify import verify as run_verify

    try:
        load(Path(output))  # not an output at all: a usage error (2), not damage (1)
    except ManifestError as exc:
        raise PrepError(str(exc)) from None
    problems = run_verify(Path(output), megatron)
    if resample and not problems:
        from prep.resample import resample as run_resample

        compared, found, coverage = run_resample(Path(output), resample, seed)
        problems += found
        if not found:
            click.echo(f"{output}: {compared:,} resampled record(s) tokenize to the stored ids and masks")
        if coverage:
            click.echo("mask coverage by role (content tokens trained): " + ", ".join(
                f"{role} {100 * trained / max(1, total):.1f}% of {total:,}" for role, (trained, total) in sorted(coverage.items())))
    if problems:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        raise VerifyFailed(f"{output}: {len(problems)} problem(s)")
    click.echo(f"{output}: OK")


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Also draw the length histogram (packing efficiency for packed SFT, bucket occupancy for a latent "
                   "cache) into this PNG (needs matplotlib: pip install 'prep[plot]').")
def inspect(output, plot_file):
    """Statistics of a finished output, and the Megatron --data-path string for it."""
    from loaders.manifest import ManifestError
    from prep.verify import describe

    try:
        click.echo(describe(Path(output)))
        if plot_file:
            from prep.plot import plot

            click.echo(f"plot {plot(Path(output), Path(plot_file))}")
    except ManifestError as exc:
        raise PrepError(str(exc)) from None


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("outputs", nargs=-1, required=True)
@click.option("--weights", default=None, help="Comma-separated blend weights, one per OUTPUT (Megatron's --data-path weights).")
@click.option("--seq-length", type=click.IntRange(min=1), required=True, help="Training sequence length.")
@click.option("--num-samples", default=None,
              help="Samples per split: N, or train,valid,test with an empty entry for one epoch (e.g. 10000000,100000,0 "
                   "or 10000000,,). Default: one epoch.")
@click.option("--split", default="969,30,1", show_default=True, help="Megatron's split string.")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--no-extra-token", is_flag=True, help="Megatron's add_extra_token_to_sequence=False (windows of seq_length tokens).")
@click.option("--keep-partial-validation-sequence", is_flag=True,
              help="Megatron's drop_last_partial_validation_sequence=False (a padded last validation sample).")
@click.option("--surplus", type=click.FloatRange(min=0), default=0.005, show_default=True,
              help="Megatron's mid_level_dataset_surplus: extra samples asked of each dataset of a weighted blend.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Where the index caches go (default: beside the data).")
def index(outputs, weights, seq_length, num_samples, split, seed, no_extra_token, keep_partial_validation_sequence, surplus, cache_dir):
    """Build the GPT dataset's index caches (document, sample, shuffle, blend) ahead of training.

    loaders.gpt.GPTDataset with the same arguments then only memory-maps them.
    """
    from loaders.gpt import GPTDataset

    try:
        weight_list = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers", param_hint="--weights") from None
    samples = _num_samples(num_samples)
    started = time.time()
    try:
        first = GPTDataset.from_manifests(list(outputs), weight_list, seq_length=seq_length, num_samples=samples,
                                          split=split, seed=seed, cache_dir=cache_dir, split_index=_first_split(split),
                                          add_extra_token_to_sequence=not no_extra_token,
                                          drop_last_partial_validation_sequence=not keep_partial_validation_sequence,
                                          mid_level_dataset_surplus=surplus)
        splits = first.splits()  # builds (or finds) every split's caches
    except (ValueError, IndexError, FileNotFoundError) as exc:
        raise PrepError(str(exc)) from None
    click.echo(", ".join(f"{name} {len(d):,} samples" for name, d in zip(("train", "valid", "test"), splits) if d is not None)
               + f" of {seq_length} tokens; caches ready in {time.time() - started:.1f}s")
    if samples is not None and weight_list is None and len(outputs) > 1:
        click.echo("note: a blend without --weights gives each dataset's whole epoch, as Megatron's does; --num-samples "
                   "is not used (pass --weights to draw that many)")


def _num_samples(text: str | None):
    """None (one epoch), N, or [train, valid, test] with None for an empty entry."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) if p else None for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected N or train,valid,test (whole numbers; empty for one epoch)",
                                 param_hint="--num-samples") from None
    if len(values) > 3 or any(v is not None and v < 0 for v in values):
        raise click.BadParameter(f"{text!r}: at most 3 sizes (train,valid,test), none negative", param_hint="--num-samples")
    if len(values) == 1:
        return values[0]
    return values + [None] * (3 - len(values))


def _first_split(split: str) -> int:
    from loaders.gpt import parse_split, split_matrix

    return next(i for i, bounds in enumerate(split_matrix(parse_split(split))) if bounds is not None)


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Also show each of N array tasks' units (--task I/N).")
def status(output, tasks):
    """How far a run has got: units done and pending (per array task with --tasks), records and
    tokens so far, speed and ETA. Works while it runs and after a crash."""
    from prep.status import status as run_status

    click.echo("\n".join(run_status(Path(output), tasks)))
