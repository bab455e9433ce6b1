"""What a recipe is, and the registry the CLI's --recipe choices and the workers' dispatch read.

A recipe turns one batch of records into documents for the writers. It is one file: a subclass
of Recipe with `@register`, named by `name`. Class methods answer the questions the stage asks
before any record is read (does it need a chat template? does it write a loss mask?); an
instance, built once per worker process, encodes batches.
"""

from __future__ import annotations

from prep.registry import Registry

RECIPES = Registry("prep.recipes", ("text", "chat", "instruction", "completion"))
register = RECIPES.register


class Recipe:
    name = ""
    help = ""  # one sentence for --recipe's help ("" to share the one before it)
    loss_mask = False  # writes `tokens` and a parallel `loss_mask` dataset (the SFT recipes)
    takes_columns = False  # reads --columns role=column pairs

    def __init__(self, job: dict, tokenizer_json: str):
        self.job = job

    @classmethod
    def needs_template(cls, config) -> bool:
        """Whether it renders records with a chat template (so one must exist)."""
        return False

    def source_keys(self) -> list[str] | None:
        """The record keys the sources need to read (None: every column)."""
        return self.job["keys"]

    def encode_batch(self, records: list[dict], locate, path: str, rejects, writers: dict, encoder, counts: dict) -> int:
        """Encode `records` (bad ones to `rejects`, `locate(j)` gives record j's line) and write
        them through `writers` (one per key); returns how many records were written."""
        raise NotImplementedError
