"""What a recipe is, and the registry the CLI's --recipe choices and the workers' dispatch read.

A recipe turns one batch of records into documents for the writers. It is one file: a subclass
of Recipe with `@register`, named by `name`. Class methods answer the questions the stage asks
before any record is read (does it need a chat template? does it write a loss mask?); an
instance, built once per worker process, encodes batches.
"""

from __future__ import annotations

from prep.registry import Registry

RECIPES = Registry("prep.recipes", ("text", "chat", "instruction", "completion", "retrieval"))
register = RECIPES.register


class Recipe:
    name = ""
    help = ""  # one sentence for --recipe's help ("" to share the one before it)
    loss_mask = False  # writes `tokens` and a parallel `loss_mask` dataset (the SFT recipes)
    takes_columns = False  # reads --columns role=column pairs
    min_unit_bytes: int | None = None  # the smallest default work unit, when 8 MiB is too small for it
    keys: list[str] | None = None  # the datasets it writes, when not one per --text-key (nor tokens + loss_mask)

    def __init__(self, job: dict, tokenizer_json: str):
        self.job = job

    @classmethod
    def needs_template(cls, config) -> bool:
        """Whether it renders records with a chat template (so one must exist)."""
        return False

    def source_keys(self) -> list[str] | None:
        """The record keys the sources need to read (None: every column)."""
        return self.job["keys"]

    @classmethod
    def prepare(cls, config, spec) -> dict:
        """Check and settle the config for this recipe before the plan; returns fields for the job."""
        return {}

    @classmethod
    def finalize_parts(cls, job: dict, workdir, out, units) -> tuple[dict, dict, dict] | None:
        """(datasets, stats, manifest fields) when the recipe merges its own parts; None: the
        standard merge of each key's parts."""
        return None

    @classmethod
    def probe_keys(cls) -> list[str] | None:
        """Record keys whose texts probe the fast tokenizer backend (None: the datasets' keys)."""
        return None

    def open_unit(self, parts, unit) -> None:
        """Called before a unit's first batch (a recipe writing more than token datasets opens its parts)."""

    def close_unit(self) -> dict:
        """Called once a unit's datasets are committed: commit the rest; returns fields for its done-record."""
        return {}

    def abort_unit(self) -> None:
        """Called when a unit fails: drop what open_unit started."""

    def encode_batch(self, records: list[dict], locate, path: str, rejects, writers: dict, encoder, counts: dict) -> int:
        """Encode `records` (bad ones to `rejects`, `locate(j)` gives record j's line) and write
        them through `writers` (one per key); returns how many records were written."""
        raise NotImplementedError
