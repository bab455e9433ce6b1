"""The completion recipe: the context column as the prompt, the gold continuation after it as it
is; loss on the continuation.

With --mask-convention automodel it is NeMo AutoModel's SFTSingleTurnPreprocessor (its HellaSwag
dataset and its get_context / get_target pattern): context and target tokenized apart, each as
`tokenizer(text)` gives it, the context's last token dropped when it is special and the target's
first, then joined; loss on the target's tokens.
"""

from __future__ import annotations

import numpy as np

from prep.recipes.base import register
from prep.recipes.instruction import InstructionRecipe, instruction_spans


def special_ids(spec) -> list[int]:
    """transformers' `all_special_ids`: the ids of the tokens its special_tokens_map names."""
    from prep.tokenize.tokenizer import _vocabulary

    vocabulary, names = _vocabulary(spec.json), []
    for value in spec.special_tokens_map.values():
        names += value if isinstance(value, list) else [value]
    return sorted({vocabulary[name] for name in names if isinstance(name, str) and name in vocabulary})


@register
class CompletionRecipe(InstructionRecipe):
    name = "completion"
    help = ""

    @classmethod
    def prepare(cls, config, spec) -> dict:
        job = super().prepare(config, spec)
        if "automodel" in job:
            job["automodel"] = {**job["automodel"], "single_turn": True, "special_ids": special_ids(spec)}
        return job

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        if self.options.use_chat_template:
            return super().render(record)
        return instruction_spans(record, self.options.columns, "completion")

    def _single_turn(self) -> dict | None:
        convention = self.job.get("automodel")
        return convention if convention is not None and convention.get("single_turn") else None

    def encode_samples(self, rendered, encoder):
        convention = self._single_turn()
        if convention is None:
            return super().encode_samples(rendered, encoder)
        pieces = [piece for text, ((start, end), *_) in rendered for piece in (text[:start], text[start:end])]
        ids, offsets = encoder.encode(pieces)  # one call; `tokenizer(piece)` is the post-processor's tokens around these
        before, after = (np.asarray(convention[key], ids.dtype) for key in ("before", "after"))
        return [tuple(np.concatenate([before, ids[offsets[k]:offsets[k + 1]], after]) for k in (2 * i, 2 * i + 1))
                for i in range(len(rendered))]

    def sample_and_mask(self, text, spans, ids):
        convention = self._single_turn()
        if convention is None:
            return super().sample_and_mask(text, spans, ids)
        (context, target), special = ids, convention["special_ids"]
        if len(context) and context[-1] in special:
            context = context[:-1]
        if len(target) and target[0] in special:
            target = target[1:]
        sample = np.concatenate([context, target])
        return sample, (np.arange(len(sample)) >= len(context)).astype(np.uint8)
