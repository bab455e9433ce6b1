"""The completion recipe: the context column as the prompt, the gold continuation after it as it
is; loss on the continuation."""

from __future__ import annotations

from prep.recipes.base import register
from prep.recipes.instruction import InstructionRecipe, instruction_spans


@register
class CompletionRecipe(InstructionRecipe):
    name = "completion"
    help = ""

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        if self.options.use_chat_template:
            return super().render(record)
        return instruction_spans(record, self.options.columns, "completion")
