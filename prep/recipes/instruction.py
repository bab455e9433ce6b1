"""The instruction recipe: --columns mapped to context, question and answer; loss on the answer.

The prompt is AutoModel's ColumnMappedTextInstructionDataset's (context and question joined by
spaces, then a space), SQuAD's with --preset squad, or a chat-template render of system / user /
assistant turns with --use-chat-template (with --preset squad, SQuAD's: the prompt as the user turn).
--preset squad reads SQuAD's rows as they are: an `answers` column {"text": [...]} is its first
text, stripped (empty when there is none), as AutoModel's make_squad_dataset takes it.
"""

from __future__ import annotations

import numpy as np

from prep.errors import PrepError
from prep.recipes.base import register
from prep.recipes.sft import SFTRecipe
from prep.recipes.special_tokens import special_tokens
from prep.recipes.templates import BadConversation


def instruction_spans(record: dict, columns: dict, preset: str) -> tuple[str, list[tuple[int, int]]]:
    """Prompt + answer text and the answer's span, for the instruction and completion recipes.

    default: the prompt is context and question joined by spaces, then a space (AutoModel's
    ColumnMappedTextInstructionDataset); squad: "Context: {c} Question: {q} Answer: ";
    completion: the context, then the gold continuation as it is."""
    values = {}
    for role, column in columns.items():
        value = record.get(column)
        if preset == "squad" and role == "answer" and isinstance(value, dict):
            texts = value.get("text")
            got = type(texts).__name__ if not isinstance(texts, list) else f"of {type(texts[0]).__name__}" if texts else ""
            if got and got != "of str":
                raise BadConversation(f"column {column!r}: expected SQuAD's answers {{\"text\": [strings, ...]}}, got text {got}")
            value = texts[0].strip() if texts else ""
        if value is not None and not isinstance(value, str):
            raise BadConversation(f"column {column!r} is {type(value).__name__}, expected a string")
        values[role] = value
    answer = values.get("answer")
    if answer is None:
        raise BadConversation(f"missing answer column {columns.get('answer')!r}")
    if preset == "squad":
        prompt = f"Context: {values.get('context') or ''} Question: {values.get('question') or ''} Answer: "
    elif preset == "completion":
        prompt = values.get("context") or ""
    else:
        prompt = " ".join(v for v in (values.get("context"), values.get("question"), "") if v is not None)
    return prompt + answer, [(len(prompt), len(prompt) + len(answer))]


@register
class InstructionRecipe(SFTRecipe):
    name = "instruction"
    help = "instruction / completion: --columns mapped, loss on the answer."
    takes_columns = True

    @classmethod
    def needs_template(cls, config) -> bool:
        return bool(config.use_chat_template)

    @classmethod
    def prepare(cls, config, spec) -> dict:
        if config.mask_convention != "automodel" or config.use_chat_template:
            return {}
        if config.eod or config.bos:
            raise PrepError("--mask-convention automodel: AutoModel adds no EOD or BOS of its own (the tokenizer's "
                            "post-processor decides); drop --eod / --bos")
        config.eod = config.bos = False
        before, after = special_tokens(spec.json, config.recipe)
        return {"automodel": {"before": before, "after": after, "prompt_bos": int(spec.add_bos_token)}}

    def encode_samples(self, rendered, encoder):
        if self.job.get("automodel") is None:
            return super().encode_samples(rendered, encoder)
        n = len(rendered)  # one call: the samples, then each prompt alone (its token count is all that is kept)
        ids, offsets = encoder.encode([text for text, _ in rendered] + [text[:spans[0][0]] for text, spans in rendered])
        return [(ids[offsets[k]:offsets[k + 1]], int(offsets[n + k + 1] - offsets[n + k])) for k in range(n)]

    def sample_and_mask(self, text, spans, ids):
        """With --mask-convention automodel, NeMo AutoModel's format_prompt_completion: the ids of
        `tokenizer(prompt + answer)` (its post-processor's special tokens around the text), trained
        from the token count of the prompt tokenized alone (plus BOS when the tokenizer's
        `add_bos_token` says so), which may start a token early or late where the prompt's last
        token merges with the answer's first."""
        convention = self.job.get("automodel")
        if convention is None:
            return super().sample_and_mask(text, spans, ids)
        ids, prompt = ids[0], ids[1] + convention["prompt_bos"]
        sample = np.concatenate([np.asarray(convention["before"], ids.dtype), ids, np.asarray(convention["after"], ids.dtype)])
        return sample, (np.arange(len(sample)) >= prompt).astype(np.uint8)

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        o = self.options
        if o.use_chat_template and o.preset == "squad":  # AutoModel's SQuAD: one user turn, the answer
            text, ((start, end),) = instruction_spans(record, o.columns, "squad")
            return self.template.spans([{"role": "user", "content": text[:start]},
                                        {"role": "assistant", "content": text[start:end]}], None)
        if o.use_chat_template:
            text, _ = instruction_spans(record, o.columns, "default")  # validates the columns
            get = lambda role: record.get(o.columns[role]) if role in o.columns else None  # noqa: E731
            messages = [{"role": "system", "content": get("context") or ""}, {"role": "user", "content": get("question") or ""},
                        {"role": "assistant", "content": get("answer")}]
            return self.template.spans(messages, None)
        return instruction_spans(record, o.columns, o.preset)
