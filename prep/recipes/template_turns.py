"""Renders a chat template's spans in ways other than the one render of prep.recipes.templates:
a turn rebuilt as the model saw it when generating it (`--per-turn`), and NeMo AutoModel's
answer-only mask convention (`--mask-convention automodel`)."""

from __future__ import annotations

from prep.recipes.templates import CLOSE, OPEN, R_CLOSE, R_OPEN, REASONING_KEYS, BadConversation, ChatTemplate, _with_arguments


def turn_as_generated(self: ChatTemplate, messages: list[dict], tools) -> tuple[str, list[tuple[int, int]]]:
    """(text, [span]) of the last assistant turn as the model saw it when it generated it: the
    render of the conversation before it with the generation prompt, then the turn. That is the
    whole render when the render before it is a prefix of it; a template that rewrites earlier
    turns once this one exists (gpt-oss drops a tool call's reasoning once its final answer
    follows) gets that prompt plus the turn as the whole render writes it (after its
    generation prompt)."""
    messages = [_with_arguments(m, self.string_arguments) for m in messages]
    prompt, full = self.render(messages[:-1], tools, generation_prompt=True), self.render(messages, tools)
    if full.startswith(prompt):
        return self.spans(messages, tools, last_only=True)
    plain = self.render(messages[:-1], tools)
    opening = prompt[len(plain):] if prompt.startswith(plain) else ""
    at = _turn_start(self, messages, tools, full, opening) if opening else -1
    if at < 0:
        raise BadConversation("the chat template renders earlier turns differently once this one exists, and this turn "
                              "does not start with its generation prompt; it can't be rebuilt as it was generated")
    text = prompt + full[at + len(opening):]
    span = (len(prompt), self._end(text, self._after_content(text, len(prompt), messages[-1]), len(text)))
    return text, [s for s in [self._without_reasoning(text, span, messages[-1])] if s[1] > s[0]]

def _turn_start(self: ChatTemplate, messages, tools, full: str, opening: str) -> int:
    """Where the last turn starts in `full`: the last generation prompt before its reasoning or
    content (found by a render with those marked; gpt-oss opens several messages in one turn)."""
    last = dict(messages[-1])
    if last.get("content"):
        last["content"] = OPEN + last["content"] + CLOSE
    for key in REASONING_KEYS:
        if last.get(key):
            last[key] = R_OPEN + last[key] + R_CLOSE
    marked = self._render_or_none([*messages[:-1], last], tools=tools) if last != messages[-1] else None
    anchors = [marked.find(m) for m in (OPEN, R_OPEN) if marked and m in marked]
    if not anchors:
        return full.rfind(opening)
    at = marked.rfind(opening, 0, min(anchors))
    return at if at >= 0 and marked[:at] == full[:at] else -1

def automodel_spans(self: ChatTemplate, messages, tools, assistants):
    """NeMo AutoModel's answer-only mask (formatting_utils._build_multiturn_assistant_mask): each
    assistant turn from the end of the render of the messages before it (no generation prompt:
    the role header is trained) to the end of the render through it (the newline after the
    end-of-turn token too). Each such render must be a prefix of the whole, as AutoModel requires."""
    text = self.render(messages, tools)
    spans = []
    for i in assistants:
        bounds = []
        for k in (i, i + 1):
            prefix = self.render(messages[:k], tools) if k < len(messages) else text
            if not text.startswith(prefix):
                raise BadConversation("the chat template renders earlier turns differently once later turns exist; "
                                      "AutoModel's mask convention needs each prefix render to be a prefix of the whole")
            bounds.append(len(prefix))
        spans.append(tuple(bounds))
    return text, spans
