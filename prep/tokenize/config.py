"""The tokenize stage's config and its fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from prep import __version__
from prep.pipeline.fingerprint import fingerprint


@dataclass
class TokenizeConfig:
    inputs: list[str]
    output: str
    tokenizer: str
    recipe: str = "text"
    format: str = "megatron"
    keys: list[str] = field(default_factory=lambda: ["text"])
    eod: bool | None = None  # None: the format's default (Megatron: EOD; NanoGPT: BOS)
    bos: bool | None = None
    eod_token: str | None = None
    bos_token: str | None = None
    split_special_tokens: bool = False
    shard_tokens: int | None = None
    nanogpt_header: str = "current"
    unit_bytes: int | None = None
    # SFT recipes (chat, instruction, completion)
    chat_template: str | None = None  # a .jinja file replacing the tokenizer's template
    columns: dict = field(default_factory=dict)  # role (context, question, answer) -> column
    preset: str = "default"
    use_chat_template: bool = False
    mask_reasoning: bool = False
    last_turn_only: bool = False
    mask_convention: str = "prep"  # chat: prep's spans, or NeMo AutoModel's (see prep.recipes.templates)
    per_turn: bool = False  # chat: one sample per assistant turn, rendered as when it was generated
    max_length: int | None = None
    overlong: str = "truncate"
    pack: int | None = None  # pack capacity in tokens
    pack_window: int = 20_000
    seed: int = 1234
    # retrieval
    query_prefix: str = ""
    passage_prefix: str = ""
    use_dataset_instruction: bool = False
    query_max_length: int | None = None
    doc_max_length: int | None = None
    workers: int = 1
    skip_invalid: bool = False
    backend: str = "auto"

    # Options that change no output byte: left out of the fingerprint so that a run can be
    # resumed with more workers, or with --skip-invalid after it stopped on a bad record.
    RUNTIME = ("inputs", "output", "workers", "skip_invalid", "backend", "unit_bytes", "tokenizer")

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize_fingerprint(config: TokenizeConfig, tokenizer_sha256: str, eod_id, bos_id, dtype: str,
                         chat_template: str | None = None, recipe_source_sha256: str | None = None) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in TokenizeConfig.RUNTIME + ("chat_template",)}
    values.update(tokenizer_sha256=tokenizer_sha256, eod_id=eod_id, bos_id=bos_id, dtype=dtype,
                  chat_template_sha256=hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None)
    if recipe_source_sha256:  # a user's recipe callable: its module's source (absent for built-ins: fingerprints unchanged)
        values["recipe_source_sha256"] = recipe_source_sha256
    return fingerprint({"tool": f"prep {__version__}", **values})


def parse_size(text: str | int | None) -> int | None:
    """'64M', '1G', '500k', '1000' -> int (powers of 1024 for k/M/G/T)."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    value = float(number) * scale
    if value <= 0 or value != int(value):
        raise ValueError(f"not a positive size: {text!r}")
    return int(value)
