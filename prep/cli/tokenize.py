"""`prep tokenize`: parse the options into a TokenizeConfig and run the tokenize stage."""

from __future__ import annotations

import time

import click

from prep import recipes
from prep.cli.errors import StageCommand
from prep.cli.options import CONTEXT, load_config_file, run_options, size
from prep.pipeline.driver import run_stage
from prep.pipeline.processes import default_workers
from prep.tokenize.config import TokenizeConfig
from prep.tokenize.stage import TokenizeStage


class RecipeName(click.ParamType):
    """A built-in recipe's name, or a user's MODULE:CALLABLE (prep.recipes.custom)."""

    name = "recipe"

    @property
    def choices(self) -> list[str]:
        return recipes.names()

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(recipes.names()) + "|MODULE:CALLABLE]"

    def convert(self, value, param, ctx):
        if value in recipes.names() or (isinstance(value, str) and ":" in value):
            return value
        self.fail(f"{value!r} is not one of {', '.join(map(repr, recipes.names()))}, nor a MODULE:CALLABLE", param, ctx)


@click.command(context_settings=CONTEXT, cls=StageCommand)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder (created).")
@click.option("--tokenizer", required=True, help="Folder that transformers.AutoTokenizer loads, or a tokenizer.json.")
@click.option("--recipe", type=RecipeName(), default="text", show_default=True,
              help=" ".join(recipes.get(name).help for name in recipes.names() if recipes.get(name).help)
              + " MODULE:CALLABLE (or FILE.py:CALLABLE): your function mapping a record to a `messages` list (chat) or "
                "a context/question/answer dict (instruction), or a class with get_context/get_target (completion).")
@click.option("--chat-template", type=click.Path(dir_okay=False), default=None,
              help="A .jinja chat template to use instead of the tokenizer's.")
@click.option("--columns", default=None, help="instruction/completion: role=column pairs, e.g. context=input,question=instruction,answer=output.")
@click.option("--preset", type=click.Choice(["default", "squad"]), default="default", show_default=True,
              help="instruction prompt: default 'context question ' (AutoModel's); squad 'Context: .. Question: .. Answer: ' "
                   "over SQuAD's rows (answers.text[0]; --columns defaults to context, question, answers).")
@click.option("--use-chat-template", is_flag=True, help="instruction: render context/question/answer as system/user/assistant turns.")
@click.option("--mask-reasoning", is_flag=True, help="chat: no loss on assistant reasoning_content either.")
@click.option("--last-turn-only", is_flag=True, help="chat: loss on the last assistant turn only.")
@click.option("--mask-convention", type=click.Choice(["prep", "automodel"]), default="prep", show_default=True,
              help="chat: which tokens of an assistant turn are trained. prep: from the end of the generation prompt through "
                   "the end-of-turn token. automodel: NeMo AutoModel ChatDataset's (the role header and the newline after "
                   "the end-of-turn token too), to train exactly as AutoModel would.")
@click.option("--per-turn", is_flag=True,
              help="chat: one sample per assistant turn, the conversation up to it rendered as the model saw it when "
                   "generating that turn, loss on that turn only (for templates that rewrite earlier turns: Qwen3 drops "
                   "their reasoning).")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="SFT: longest sample in tokens (see --overlong).")
@click.option("--pack", type=click.IntRange(min=1), default=None,
              help="SFT: pack samples into packs of at most N tokens (best-fit decreasing; a pack is one Megatron document).")
@click.option("--pack-window", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="SFT: samples considered together when packing (bounds memory).")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed for packing order and tie-breaks.")
@click.option("--overlong", type=click.Choice(["truncate", "drop"]), default="truncate", show_default=True,
              help="SFT: what to do with a sample over --max-length (truncate: one with no trained token left is dropped); "
                   "counted in the manifest either way.")
@click.option("--query-prefix", default="", help='retrieval: prefix joined to each query with a space (e.g. "query:"), as AutoModel\'s collator does.')
@click.option("--passage-prefix", default="", help='retrieval: prefix joined to each document with a space (e.g. "passage:").')
@click.option("--use-dataset-instruction", is_flag=True,
              help="retrieval: use each corpus's query_instruction / passage_instruction (merlin_metadata.json) instead of the prefixes.")
@click.option("--query-max-length", type=click.IntRange(min=1), default=None,
              help="retrieval: store at most N tokens a query (special tokens counted). Default: whole; the loader truncates.")
@click.option("--doc-max-length", type=click.IntRange(min=1), default=None,
              help="retrieval: store at most N tokens a document (special tokens counted). Default: whole.")
@click.option("--format", "format_", type=click.Choice(["megatron", "nanogpt"]), default="megatron", show_default=True,
              help="megatron: .bin/.idx indexed datasets. nanogpt: token shards with a 256-int32 header and .bos.idx (SFT: and a .mask).")
@click.option("--nanogpt-header", type=click.Choice(["current", "legacy"]), default="current", show_default=True,
              help="NanoGPT shard header: current (magic 278895051, uint16 or uint32) or legacy (20240520, uint16, llm.c/modded-nanogpt).")
@click.option("--text-key", "keys", multiple=True, default=["text"], show_default=True,
              help="Record key to tokenize; repeat for several (one dataset per key, like Megatron's --json-keys).")
@click.option("--eod/--no-eod", default=None,
              help="Append the tokenizer's EOS as EOD to every non-empty document. Default: on for megatron text, instruction "
                   "and completion; off for nanogpt text, and for chat (the template ends each turn).")
@click.option("--bos/--no-bos", default=None,
              help="Prepend BOS to every non-empty document (SFT: unless its template already starts it with BOS). "
                   "Default: off for megatron; on for nanogpt when the tokenizer has a BOS.")
@click.option("--eod-token", default=None, help="Token to use as EOD instead of the tokenizer's EOS.")
@click.option("--bos-token", default=None, help="Token to use as BOS instead of the tokenizer's own.")
@click.option("--split-special-tokens", is_flag=True,
              help="Encode literal special-token strings in the text (e.g. '<|endoftext|>') as plain text. "
                   "Default: like HF and Megatron, such a string becomes its control id.")
@click.option("--shard-size", "--shard-tokens", "shard_tokens", callback=size, default=None,
              help="Tokens per shard (e.g. 1G). megatron: a shard closes after the document that reaches it (default: "
                   "one dataset per key); nanogpt: shards of exactly this many tokens (default 100M, at most 2^31-1).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes. Default: the CPUs this process may use (affinity and Slurm aware).")
@click.option("--unit-size", "unit_bytes", callback=size, default=None,
              help="Bytes of input per work unit (the grain of resume). Default: about 1/256 of the corpus, 8M..256M.")
@click.option("--skip-invalid", is_flag=True, help="Skip bad records (counted by reason in the manifest) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace output made with another configuration.")
@click.option("--backend", type=click.Choice(["auto", "fastokens", "hf"]), default="auto", show_default=True,
              help="Tokenizer engine. auto: fastokens when it matches HF tokenizers on a probe, else HF.")
@run_options
@click.option("--config", type=click.Path(dir_okay=False, exists=True), callback=load_config_file, is_eager=True,
              expose_value=False, help="YAML file of options (names as on the command line).")
def tokenize(inputs, output, tokenizer, recipe, chat_template, columns, preset, use_chat_template, mask_reasoning,
             last_turn_only, mask_convention, per_turn, max_length, pack, pack_window, seed, overlong, query_prefix, passage_prefix,
             use_dataset_instruction, query_max_length, doc_max_length, format_, nanogpt_header, keys, eod, bos, eod_token, bos_token, split_special_tokens,
             shard_tokens, workers, unit_bytes, skip_invalid, overwrite, task, backend, progress):
    """Tokenize INPUT files (JSONL[.gz|.zst], JSON, CSV/TSV, Parquet, HF save_to_disk folders) into Megatron datasets.

    \b
    Example:
      prep tokenize corpus/*.jsonl.zst -o out/ --tokenizer path/to/tokenizer_dir --workers 16
      prep tokenize train.jsonl -o out/retr --recipe retrieval --tokenizer DIR --query-prefix query: --passage-prefix passage:
    """
    started = time.time()
    workers = workers or default_workers()
    if preset == "squad" and not columns and recipe == "instruction":
        columns = "context=context,question=question,answer=answers"  # SQuAD's own columns
    column_map = _columns(columns, recipe)
    config = TokenizeConfig(inputs=list(inputs), output=output, tokenizer=tokenizer, recipe=recipe,
                            chat_template=chat_template, columns=column_map, preset=preset, use_chat_template=use_chat_template,
                            mask_reasoning=mask_reasoning, last_turn_only=last_turn_only, mask_convention=mask_convention, per_turn=per_turn, max_length=max_length, overlong=overlong,
                            pack=pack, pack_window=pack_window, seed=seed, query_prefix=query_prefix,
                            passage_prefix=passage_prefix, use_dataset_instruction=use_dataset_instruction,
                            query_max_length=query_max_length, doc_max_length=doc_max_length, format=format_, nanogpt_header=nanogpt_header,
                            keys=list(keys), eod=eod, bos=bos, eod_token=eod_token, bos_token=bos_token,
                            split_special_tokens=split_special_tokens, shard_tokens=shard_tokens, unit_bytes=unit_bytes,
                            workers=workers, skip_invalid=skip_invalid, backend=backend)
    run_stage(TokenizeStage(config), output, overwrite, task, progress, started)


def _columns(text: str | None, recipe: str) -> dict:
    """'context=input,answer=output' -> {"context": "input", "answer": "output"}, checked for the recipe."""
    if ":" in recipe or not recipes.get(recipe).takes_columns:
        if text:
            takers = " or ".join(n for n in recipes.names() if recipes.get(n).takes_columns)
            raise click.BadParameter(f"--columns is for --recipe {takers}", param_hint="--columns")
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
