"""Tokenizer loading (a folder `AutoTokenizer` loads, or a bare tokenizer.json) and batch encoding.

Ids are those of HF `tokenizers` encoding without added special tokens, which is what
Megatron-LM's `preprocess_data.py` gets from its HuggingFaceTokenizer. The effective
tokenizer (after `AutoTokenizer` applied its config) is serialised once to tokenizer.json and
every worker loads that. A faster backend (`fastokens`) is used only after it matched HF on a
probe set; otherwise we fall back to HF, loudly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from prep.errors import PrepError
from prep.pipeline import durable
from prep.pipeline.processes import die_with_parent

# Texts that exercise pre-tokenizer corners; the corpus's own first records are added to them.
PROBE_TEXTS = [
    "", " ", "  ", "\n", "\n\n\n", "\t \r\n", "a", "Hello, world!", "  leading and trailing  ",
    "don't won't I'm you'll they've", "12345 3.14159 1,000,000 0x1F", "CamelCaseWords snake_case",
    "Ünïcödé — 日本語のテキスト、中文 и русский 🚀👨‍👩‍👧 \u200b\u00a0", "ﬁ ﬂ Å Å e\u0301",
    "def f(x):\n    return x ** 2\n\n\tif x:  pass", "<html><body class=\"x\">&amp;</body></html>",
    "a" * 3000, "😀" * 200, " " * 100 + "x", "\u2028\u2029\x00\x1f",
]
EOS_NAMES = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<｜end▁of▁sentence｜>", "<|im_end|>"]
BOS_NAMES = ["<|begin_of_text|>", "<s>", "<bos>", "<｜begin▁of▁sentence｜>", "<|startoftext|>"]


@dataclass
class TokenizerSpec:
    """What workers need to encode exactly as the reference does; recorded in the manifest."""

    source: str
    json: str  # the effective tokenizer.json
    sha256: str
    vocab_size: int  # len(tokenizer): base vocabulary plus added tokens, as Megatron sizes its dtype
    eod_id: int | None
    bos_id: int | None
    special_ids: dict = field(default_factory=dict)
    chat_template: str | None = None
    special_tokens_map: dict = field(default_factory=dict)
    add_bos_token: bool = False  # the transformers tokenizer's attribute (AutoModel's prompt-completion mask reads it)

    def manifest(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "bos_id": self.bos_id, "special_ids": self.special_ids}


def _content(token) -> str | None:
    return token if token is None or isinstance(token, str) else token.get("content")


def _cache_dir() -> Path:
    root = os.environ.get("PREP_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "prep")
    return Path(root) / "tokenizers"


def _resolve_folder(source: Path) -> dict:
    """What AutoTokenizer makes of a folder: effective tokenizer.json, len(), EOS/BOS and special ids.

    Importing transformers costs seconds, so the answer is cached, keyed by the folder's files
    and the transformers version."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"resolved/4 transformers {version('transformers')}".encode())
    for f in sorted(p for p in source.iterdir() if p.is_file()):
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    cached = _cache_dir() / f"{digest.hexdigest()[:32]}.json"
    cached_json = cached.with_suffix(".tokenizer.json")  # kept apart: as a JSON string it parses 30x slower
    try:
        return {**json.loads(cached.read_text()), "json": cached_json.read_text(encoding="utf-8")}
    except (OSError, ValueError):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        try:
            auto = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        except Exception as exc:
            raise PrepError(f"{source}: transformers.AutoTokenizer can't load this folder ({str(exc).splitlines()[0]})") from None
    backend = getattr(auto, "backend_tokenizer", None) or getattr(auto, "_tokenizer", None)
    if backend is None:
        raise PrepError(f"{source}: {type(auto).__name__} has no fast (Rust) tokenizer to serialise")
    template = auto.chat_template if isinstance(auto.chat_template, str) else None
    resolved = {"json": backend.to_str(), "vocab_size": len(auto), "eos": auto.eos_token, "bos": auto.bos_token,
                "chat_template": template, "special_tokens_map": dict(auto.special_tokens_map),
                "special_ids": {name: getattr(auto, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")},
                "add_bos_token": bool(getattr(auto, "add_bos_token", False))}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((cached_json, resolved["json"]), (cached, json.dumps({k: v for k, v in resolved.items() if k != "json"}))):
            durable.write_bytes(path, text.encode())  # the tokenizer first: the metadata file says both are there
    except OSError:
        pass  # a read-only home only costs the next run the same seconds
    return resolved


@functools.lru_cache(maxsize=2)
def _tables(text: str) -> tuple[dict[str, int], list[dict], bool]:
    """(token -> id over the model vocabulary plus added tokens, the added tokens, whether it sets
    truncation or padding) from tokenizer.json, without building a tokenizer. Parsing a large
    vocabulary's JSON takes a fifth of a second, so the spec and the probe share one parse."""
    data = orjson.loads(text)
    vocab = data["model"]["vocab"]
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    added = data.get("added_tokens", [])
    sets_call = data.get("truncation") is not None or data.get("padding") is not None
    return {**vocab, **{t["content"]: t["id"] for t in added}}, added, sets_call


def _vocabulary(text: str) -> dict[str, int]:
    return _tables(text)[0]


def _without_call_settings(text: str) -> str:
    """The tokenizer.json without its `truncation` and `padding`: `tokenizer(text)` in transformers
    applies neither unless the call asks, so a file that sets them (max_length 512, say) must not
    cut or pad prep's documents."""
    if not _tables(text)[2]:  # the parse the vocabulary needs anyway says so
        return text
    data = orjson.loads(text)
    data["truncation"] = data["padding"] = None
    return orjson.dumps(data).decode()


def load_spec(path: str, eod_token: str | None = None, bos_token: str | None = None) -> TokenizerSpec:
    """Resolve the tokenizer at `path` (folder or tokenizer.json) into a TokenizerSpec."""
    source = given = Path(path)
    if source.is_file() and (source.parent / "tokenizer_config.json").exists():
        source = source.parent  # its EOS, BOS, special ids and chat template; the ids are the file's own
    if source.is_dir():
        resolved = _resolve_folder(source)
        text, vocab_size, special = resolved["json"], resolved["vocab_size"], resolved["special_ids"]
        if given.is_file():  # AutoTokenizer may rebuild the pipeline (e.g. drop the file's normalizer)
            text = given.read_text(encoding="utf-8")
            vocab_size = len(_vocabulary(text))
        eod, bos = resolved["eos"], resolved["bos"]
        vocabulary = _vocabulary(text)
        template, tokens_map = resolved["chat_template"], resolved["special_tokens_map"]
        add_bos = resolved.get("add_bos_token", False)
    elif source.is_file():
        text = source.read_text(encoding="utf-8")
        try:
            vocabulary = _vocabulary(text)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PrepError(f"{source}: not a tokenizer.json ({exc})") from None
        vocab_size = len(vocabulary)
        specials = [t["content"] for t in _tables(text)[1] if t.get("special")]
        eod = next((name for name in EOS_NAMES if name in specials), None)
        bos = next((name for name in BOS_NAMES if name in specials), None)
        special, template, tokens_map = {}, None, {k: v for k, v in (("eos_token", eod), ("bos_token", bos)) if v}
        add_bos = False
    else:
        raise PrepError(f"{path}: no such tokenizer folder or tokenizer.json")
    eod, bos = eod_token or eod, bos_token or bos
    spec = TokenizerSpec(
        source=str(Path(path).resolve()), json=_without_call_settings(text), sha256=hashlib.sha256(text.encode()).hexdigest(),
        vocab_size=vocab_size, eod_id=vocabulary.get(_content(eod)), bos_id=vocabulary.get(_content(bos)),
        special_ids={k: v for k, v in special.items() if v is not None}, chat_template=template,
        special_tokens_map=tokens_map, add_bos_token=add_bos,
    )
    if eod_token and spec.eod_id is None:
        raise PrepError(f"--eod-token {eod_token!r} is not in the tokenizer's vocabulary")
    if bos_token and spec.bos_id is None:
        raise PrepError(f"--bos-token {bos_token!r} is not in the tokenizer's vocabulary")
    spec.special_ids.update({"eod": spec.eod_id, "bos": spec.bos_id})
    return spec


class Encoder:
    """Batch encoder: `encode(texts)` -> (flat uint32 ids, int64 offsets of len(texts)+1)."""

    def __init__(self, spec_json: str, backend: str, split_special_tokens: bool):
        self.backend = backend
        self.spec_json = spec_json
        self.split_special_tokens = split_special_tokens
        if backend == "fastokens":
            import fastokens

            self._fast = fastokens.Tokenizer.from_json_str(spec_json)
        else:
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_str(spec_json)
            self._hf.encode_special_tokens = split_special_tokens

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "fastokens":
            ids, offsets = self._fast.encode_batch_flat(texts, add_special_tokens=False, split_special_tokens=self.split_special_tokens)
            return np.frombuffer(ids, np.uint32), np.frombuffer(offsets, np.uint64).astype(np.int64)
        encodings = self._hf.encode_batch_fast(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((i for e in encodings for i in e.ids), np.uint32, int(offsets[-1]))
        return ids, offsets


class BackendMismatch(Exception):
    """The fast backend gave other ids than HF tokenizers on a probe text."""


def load_encoder(spec_json: str, requested: str, split_special_tokens: bool) -> tuple[Encoder, str]:
    """(encoder, note): fastokens unless HF is requested or fastokens can't load the tokenizer.

    A fastokens encoder is not trusted until `probe_mismatch` found no difference. Loading
    starts no thread pool, so workers can be forked from this process and inherit it."""
    if requested == "hf":
        return Encoder(spec_json, "hf", split_special_tokens), "HF tokenizers (requested)"
    try:
        return Encoder(spec_json, "fastokens", split_special_tokens), "fastokens"
    except Exception as exc:
        if requested == "fastokens":
            raise PrepError(f"fastokens can't load this tokenizer ({exc})") from None
        return Encoder(spec_json, "hf", split_special_tokens), f"HF tokenizers (fastokens can't load this tokenizer: {exc})"


def probe_texts(spec_json: str, sample: list[str]) -> list[str]:
    """Built-in corner cases, every added token (alone, together, inside text), and `sample`."""
    specials = " x ".join(_special_strings(spec_json))
    return PROBE_TEXTS + sample + [specials, "a" + specials + " b", specials.replace(" x ", "")]


def reference_ids(spec_json: str, split_special_tokens: bool, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """HF tokenizers' ids for `texts`, as (flat ids, offsets) like `Encoder.encode`."""
    return Encoder(spec_json, "hf", split_special_tokens).encode(texts)


class ReferenceIds:
    """`reference_ids` computed in a forked process, started before the fast backend loads: on
    a machine of few cores the probe then costs the workers nothing (loading the fast backend
    is single-threaded and takes seconds for large vocabularies)."""

    def __init__(self, spec_json: str, split_special_tokens: bool, texts: list[str], ahead: bool = True):
        self.args = (spec_json, split_special_tokens, texts)
        self._pool = self._future = None
        if ahead and "fork" in mp.get_all_start_methods():
            self._pool = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"), initializer=die_with_parent)
            self._future = self._pool.submit(reference_ids, *self.args)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self._future is None:
            return reference_ids(*self.args)
        try:
            return self._future.result()
        except BrokenProcessPool:  # the helper process died (killed, out of memory): compute them here
            return reference_ids(*self.args)
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def probe_mismatch(encoder: Encoder, sample: list[str], reference: ReferenceIds | None = None) -> tuple[str | None, int]:
    """(description of the first difference or None, number of probe texts): the encoder's ids
    against HF tokenizers' on `probe_texts(sample)`, or on the texts of `reference`, HF's ids
    computed ahead."""
    if reference is None:
        reference = ReferenceIds(encoder.spec_json, encoder.split_special_tokens, probe_texts(encoder.spec_json, sample), ahead=False)
    texts = reference.args[2]
    expected, expected_offsets = reference.result()
    ids, offsets = encoder.encode(texts)
    if np.array_equal(ids, expected) and np.array_equal(offsets, expected_offsets):
        return None, len(texts)
    for i in range(len(texts)):
        if not np.array_equal(ids[offsets[i]:offsets[i + 1]], expected[expected_offsets[i]:expected_offsets[i + 1]]):
            return f"{encoder.backend} differs from HF tokenizers on probe text {texts[i][:60]!r}", len(texts)
    return None, len(texts)


def _special_strings(spec_json: str) -> list[str]:
    return [t["content"] for t in _tables(spec_json)[1][:50]]
