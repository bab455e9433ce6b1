"""`prep` command line: thin click commands that build a stage config and call the stage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import yaml

from prep import __version__
from prep.config import TokenizeConfig, parse_size
from prep.errors import PrepError, StageGroup


def _load_config_file(ctx: click.Context, param, value):
    """--config FILE.yaml: its keys (option names, - or _) become defaults; the command line wins."""
    if value:
        try:
            data = yaml.safe_load(Path(value).read_text()) or {}
        except OSError as exc:
            raise click.BadParameter(f"{value}: {exc.strerror}") from None
        except yaml.YAMLError as exc:  # one line: file:line:column: the problem
            mark = getattr(exc, "problem_mark", None)
            where = f"{value}:{mark.line + 1}:{mark.column + 1}" if mark else value
            raise click.BadParameter(f"{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise click.BadParameter(f"{value}: expected a mapping of option names to values")
        names = {opt.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for opt in p.opts}
        unknown = [k for k in data if k.replace("-", "_") not in names]
        if unknown:
            raise click.BadParameter(f"{value}: unknown option(s) {', '.join(unknown)}")
        multiple = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        defaults = {names[k.replace("-", "_")]: v for k, v in data.items()}
        # `text-key: title` means [title], as `--text-key title` does
        defaults = {k: [v] if k in multiple and not isinstance(v, list) else v for k, v in defaults.items()}
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _size(ctx, param, value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, cls=StageGroup)
@click.version_option(__version__, prog_name="prep")
def main():
    """Offline, deterministic, crash-safe preprocessing of training data.

    Every stage writes its outputs under temporary names and a manifest.json last; rerun the
    same command after a crash to resume, and get the same bytes whatever the worker count.
    """


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder (created).")
@click.option("--tokenizer", required=True, help="Folder that transformers.AutoTokenizer loads, or a tokenizer.json.")
@click.option("--recipe", type=click.Choice(["text", "chat", "instruction", "completion"]), default="text", show_default=True,
              help="text: each record's text is one pretraining document. chat: OpenAI `messages` or ShareGPT "
                   "`conversations`, loss on assistant turns. instruction / completion: --columns mapped, loss on the answer.")
@click.option("--chat-template", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A .jinja chat template to use instead of the tokenizer's.")
@click.option("--columns", default=None, help="instruction/completion: role=column pairs, e.g. context=input,question=instruction,answer=output.")
@click.option("--preset", type=click.Choice(["default", "squad"]), default="default", show_default=True,
              help="instruction prompt: default 'context question ' (AutoModel's); squad 'Context: .. Question: .. Answer: '.")
@click.option("--use-chat-template", is_flag=True, help="instruction: render context/question/answer as system/user/assistant turns.")
@click.option("--mask-reasoning", is_flag=True, help="chat: no loss on assistant reasoning_content either.")
@click.option("--last-turn-only", is_flag=True, help="chat: loss on the last assistant turn only.")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="SFT: longest sample in tokens (see --overlong).")
@click.option("--pack", type=click.IntRange(min=1), default=None,
              help="SFT: pack samples into packs of at most N tokens (best-fit decreasing; a pack is one Megatron document).")
@click.option("--pack-window", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="SFT: samples considered together when packing (bounds memory).")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed for packing order and tie-breaks.")
@click.option("--overlong", type=click.Choice(["truncate", "drop"]), default="truncate", show_default=True,
              help="SFT: what to do with a sample over --max-length; counted in the manifest either way.")
@click.option("--format", "format_", type=click.Choice(["megatron", "nanogpt"]), default="megatron", show_default=True,
              help="megatron: .bin/.idx indexed datasets. nanogpt: token shards with a 256-int32 header and .bos.idx.")
@click.option("--nanogpt-header", type=click.Choice(["current", "legacy"]), default="current", show_default=True,
              help="NanoGPT shard header: current (magic 278895051, uint16 or uint32) or legacy (20240520, uint16, llm.c/modded-nanogpt).")
@click.option("--text-key", "keys", multiple=True, default=["text"], show_default=True,
              help="Record key to tokenize; repeat for several (one dataset per key, like Megatron's --json-keys).")
@click.option("--eod/--no-eod", default=None,
              help="Append the tokenizer's EOS as EOD to every non-empty document. Default: on for megatron text, instruction "
                   "and completion; off for nanogpt, and for chat (the template ends each turn).")
@click.option("--bos/--no-bos", default=None,
              help="Prepend BOS to every non-empty document. Default: off for megatron; on for nanogpt when the tokenizer has a BOS.")
@click.option("--eod-token", default=None, help="Token to use as EOD instead of the tokenizer's EOS.")
@click.option("--bos-token", default=None, help="Token to use as BOS instead of the tokenizer's own.")
@click.option("--split-special-tokens", is_flag=True,
              help="Encode literal special-token strings in the text (e.g. '<|endoftext|>') as plain text. "
                   "Default: like HF and Megatron, such a string becomes its control id.")
@click.option("--shard-size", "--shard-tokens", "shard_tokens", callback=_size, default=None,
              help="Tokens per shard (e.g. 1G). megatron: a shard closes after the document that reaches it (default: "
                   "one dataset per key); nanogpt: shards of exactly this many tokens (default 100M, at most 2^31-1).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes. Default: the CPUs this process may use (affinity and Slurm aware).")
@click.option("--unit-size", "unit_bytes", callback=_size, default=None,
              help="Bytes of input per work unit (the grain of resume). Default: about 1/256 of the corpus, 8M..256M.")
@click.option("--skip-invalid", is_flag=True, help="Skip bad records (counted by reason in the manifest) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace output made with another configuration.")
@click.option("--task", default=None, help="Run only array task I of N (I/N, 0-based). Default: from SLURM_ARRAY_TASK_ID/COUNT.")
@click.option("--backend", type=click.Choice(["auto", "fastokens", "hf"]), default="auto", show_default=True,
              help="Tokenizer engine. auto: fastokens when it matches HF tokenizers on a probe, else HF.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), callback=_load_config_file, is_eager=True,
              expose_value=False, help="YAML file of options (names as on the command line).")
def tokenize(inputs, output, tokenizer, recipe, chat_template, columns, preset, use_chat_template, mask_reasoning,
             last_turn_only, max_length, pack, pack_window, seed, overlong, format_, nanogpt_header, keys, eod, bos, eod_token, bos_token, split_special_tokens,
             shard_tokens, workers, unit_bytes, skip_invalid, overwrite, task, backend, progress):
    """Tokenize INPUT files (JSONL[.gz|.zst], Parquet, HF save_to_disk folders) into Megatron datasets.

    \b
    Example:
      prep tokenize corpus/*.jsonl.zst -o out/ --tokenizer path/to/tokenizer_dir --workers 16
    """
    from prep import plan

    started = time.time()
    workers = workers or plan.default_workers()
    column_map = _columns(columns, recipe)
    config = TokenizeConfig(inputs=list(inputs), output=output, tokenizer=tokenizer, recipe=recipe,
                            chat_template=chat_template, columns=column_map, preset=preset, use_chat_template=use_chat_template,
                            mask_reasoning=mask_reasoning, last_turn_only=last_turn_only, max_length=max_length, overlong=overlong,
                            pack=pack, pack_window=pack_window, seed=seed, format=format_, nanogpt_header=nanogpt_header,
                            keys=list(keys), eod=eod, bos=bos, eod_token=eod_token, bos_token=bos_token,
                            split_special_tokens=split_special_tokens, shard_tokens=shard_tokens, unit_bytes=unit_bytes,
                            workers=workers, skip_invalid=skip_invalid, backend=backend)
    task_id, tasks = plan.parse_task(task)
    progress = sys.stderr.isatty() if progress is None else progress
    with plan.output_lock(Path(output), task_id, tasks):
        _tokenize(config, overwrite, task_id, tasks, workers, progress, started)


def _tokenize(config, overwrite: bool, task_id: int, tasks: int, workers: int, progress: bool, started: float) -> None:
    from prep import plan, run

    output = config.output
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    job = run.prepare(config, overwrite, log, alone=tasks == 1)
    if job["complete"]:
        log(f"{output}: already complete (same configuration); nothing to do")
        _summary(json.loads((Path(output) / "manifest.json").read_text()), None, time.time() - started)
        return
    units = plan.units_of(json.loads((Path(job["workdir"]) / "plan.json").read_text()))
    mine = plan.task_units(units, task_id, tasks)
    totals = run.run_units(job, mine, workers, progress, log, merge=tasks == 1)
    wall = time.time() - started
    if tasks > 1:
        log(f"task {task_id}/{tasks}: {totals['units']} unit(s) run, {totals['skipped_units']} already done, "
            f"{totals['records']:,} documents, {totals['tokens']:,} tokens in {wall:.1f}s")
        log(f"when every task is done: prep finalize {output}")
        return
    manifest = run.finalize(job, {"wall_s": round(wall, 3), "workers": workers}, totals.get("merged"))
    _summary(manifest, totals, time.time() - started)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
def finalize(output):
    """Merge the parts of a finished Slurm array into shards and write the manifest."""
    from prep import plan

    started = time.time()
    out = Path(output)
    if (out / "manifest.json").exists():
        click.echo(f"{output}: already complete", err=True)
        return
    job_file = out / plan.WORKDIR / "job.json"
    if not job_file.exists():
        raise PrepError(f"{output}: no prep run here (no {plan.WORKDIR}/job.json)")
    with plan.output_lock(out):
        job = {**json.loads(job_file.read_text()), "complete": False}
        if job.get("kind") == "latents":
            from prep.latents import stage

            click.echo(stage.summary(stage.finalize(job, {"wall_s": None}), None, time.time() - started))
            return
        from prep import run

        _summary(run.finalize(job, {"wall_s": None}), None, time.time() - started)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
@click.option("--megatron/--no-megatron", default=True, show_default=True,
              help="Also read every shard through Megatron-Core's IndexedDataset when it is installed.")
def verify(output, megatron):
    """Check checksums, sizes and counts of a finished output, and read it through the real reader."""
    from prep.verify import verify as run_verify

    problems = run_verify(Path(output), megatron)
    if problems:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        raise PrepError(f"{output}: {len(problems)} problem(s)")
    click.echo(f"{output}: OK")


@main.command()
@click.argument("output", type=click.Path(file_okay=False, exists=True))
def inspect(output):
    """Statistics of a finished output, and the Megatron --data-path string for it."""
    from loaders.manifest import ManifestError
    from prep.verify import describe

    try:
        click.echo(describe(Path(output)))
    except ManifestError as exc:
        raise PrepError(str(exc)) from None


def _columns(text: str | None, recipe: str) -> dict:
    """'context=input,answer=output' -> {"context": "input", "answer": "output"}, checked for the recipe."""
    if recipe not in ("instruction", "completion"):
        if text:
            raise click.BadParameter("--columns is for --recipe instruction or completion", param_hint="--columns")
        return {}
    if not text:
        raise click.BadParameter(f"--recipe {recipe} needs --columns, e.g. context=input,question=instruction,answer=output",
                                 param_hint="--columns")
    pairs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    unknown = set(pairs) - {"context", "question", "answer"}
    if unknown or "answer" not in pairs or len(pairs) != len(text.split(",")):
        raise click.BadParameter("expected role=column pairs with roles context, question, answer (answer required)",
                                 param_hint="--columns")
    return pairs


def _summary(manifest: dict, totals: dict | None, wall: float) -> None:
    stats = manifest["stats"]
    bytes_in = sum(i["bytes"] for i in manifest["inputs"])
    bytes_out = sum(f["bytes"] for d in manifest["datasets"].values() for s in d["shards"] for f in s.values() if isinstance(f, dict))
    lines = [
        f"documents   {stats['documents']:,}" + (f" ({stats['empty_documents']:,} empty)" if stats["empty_documents"] else ""),
        f"tokens      {stats['tokens']:,}",
        f"bytes in    {bytes_in / 1e6:,.1f} MB in {len(manifest['inputs'])} file(s)",
        f"bytes out   {bytes_out / 1e6:,.1f} MB in {sum(len(d['shards']) for d in manifest['datasets'].values())} shard(s)",
    ]
    if stats.get("packing"):
        p = stats["packing"]
        lines.append(f"packing     {p['samples']:,} samples in {p['packs']:,} packs of {p['capacity']:,}: {100 * p['efficiency']:.2f}% full")
    if stats.get("truncated") or stats.get("dropped_overlong"):
        lines.append(f"overlong    {stats['truncated']:,} truncated, {stats['dropped_overlong']:,} dropped")
    if stats["skipped_total"]:
        lines.append(f"skipped     {stats['skipped_total']:,}: " + ", ".join(f"{k} {v:,}" for k, v in stats["skipped"].items()))
    if totals is not None and totals["bytes"]:
        lines.append(f"this run    {totals['bytes'] / 1e6:,.1f} MB, {totals['tokens']:,} tokens in {wall:.2f}s: "
                     f"{totals['bytes'] / 1e6 / wall:,.1f} MB/s, {totals['tokens'] / wall:,.0f} tokens/s"
                     + (f" ({totals['skipped_units']} unit(s) resumed from an earlier run)" if totals["skipped_units"] else ""))
    else:
        lines.append(f"wall        {wall:.2f}s")
    for key, dataset in manifest["datasets"].items():
        names = [s.get("prefix") or s["path"] for s in dataset["shards"]]
        lines.append(f"{key:<11} {dataset['dtype']}, {len(names)} shard(s): " + " ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
    click.echo("\n".join(lines))
    click.echo(f"manifest    {Path(manifest['config']['output']) / 'manifest.json'}")


@main.command()
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


def _register_stages() -> None:
    from prep.latents.cli import latents  # a thin click command: heavy imports happen when it runs

    main.add_command(latents)


_register_stages()

if __name__ == "__main__":
    main()
