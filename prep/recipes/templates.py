"""Chat templates -> rendered text + the character spans to train on (the assistant turns).

The tokenizer's own chat template renders a conversation, in the environment transformers
renders templates in (prep.recipes.jinja), so the text is what `apply_chat_template` gives. The trained spans are the assistant turns: their
reasoning, content and tool calls, through the end-of-turn token the template emits after them.
They come from the template's `{% generation %}` blocks when it has them; otherwise from a
render in which each assistant content is wrapped in private-use markers, accepted only when
removing the markers gives exactly the plain render; otherwise from prefix renders (the
conversation up to each assistant turn with the generation prompt must be a prefix of the
whole). A template that rewrites earlier turns fails all three and the record is refused.
"""

from __future__ import annotations

import re

import orjson

from prep.errors import PrepError

OPEN, CLOSE, R_OPEN, R_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class BadConversation(ValueError):
    """A record that can't be rendered with exact masks; the message is the reason."""


class TemplateError(PrepError):
    """The template itself is unusable (it does not parse, breaks the sandbox, or refuses even a
    plain user/assistant exchange): one line before any record is read."""


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _template_fault(exc: BaseException) -> str | None:
    """The template's own fault, not the record's: a parse error (with its line) or the sandbox."""
    name = type(exc).__name__
    if name == "TemplateSyntaxError":
        return f"does not parse (line {getattr(exc, 'lineno', '?')}: {_reason(exc)})"
    if name == "SecurityError":
        return f"breaks the sandbox ({_reason(exc)})"
    return None


class ChatTemplate:
    """Renders conversations and finds their trained character spans."""

    def __init__(self, template: str, special_tokens: dict, added_tokens: list[str], mask_reasoning: bool = False,
                 last_turn_only: bool = False, source: str = "the chat template", convention: str = "prep"):
        self.template, self.special_tokens, self.source, self.convention = template, special_tokens, source, convention
        self.mask_reasoning, self.last_turn_only = mask_reasoning, last_turn_only
        self.generation = bool(GENERATION.search(template))
        try:
            if self.generation:  # the spans come from transformers' own generation tracker
                from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

                self._render_jinja, self._compiled = render_jinja_template, _compile_jinja_template(template)
            else:
                from prep.recipes.jinja import compile_template  # jinja2 only where a template renders

                self._compiled = compile_template(template)
        except Exception as exc:
            raise self._unusable(_template_fault(exc) or f"does not compile ({_reason(exc)})") from None
        # The probes below learn how the template renders. A strict template may refuse some of them
        # (a system turn, reasoning, tools): a refused probe says nothing and never fails the run; the
        # records themselves are refused one by one if the template refuses them.
        # Tool-call arguments: an object (HF's convention) or a JSON string (DeepSeek-V3 concatenates them).
        # The call must reach the template's tool branch (its name in the render): DeepSeek-V3's renders
        # tool calls only when the content is null.
        self.string_arguments = False
        for content in ("", None):
            call = [{"role": "user", "content": "U"}, {"role": "assistant", "content": content,
                     "tool_calls": [{"type": "function", "function": {"name": "f\ue007", "arguments": {"a": 1}}}]}]
            as_object, as_string = self._render_or_none(call), self._render_or_none([call[0], _with_arguments(call[1], True)])
            if as_object and "f\ue007" in as_object:
                break
            if as_string and "f\ue007" in as_string:
                self.string_arguments = True
                break
        # Does the template insert assistant content and reasoning verbatim? Then one marked
        # render per record is enough; otherwise every record is also rendered plain to check.
        # Each kind of probe must be answered by one of its shapes (with a system turn or not).
        verdicts = []
        for shapes in _PROBES:
            verdict = None
            for messages in shapes:
                try:
                    verdict = self._marks_round_trip(messages)
                    break
                except BadConversation:
                    continue
            verdicts.append(verdict)
        self.faithful = all(v is True for v in verdicts)
        # The end-of-turn tokens: the added tokens the template emits right after assistant content
        # (gpt-oss ends a final answer with <|return|> and earlier ones with <|end|>), and the last
        # one a tool-call turn ends with (<|call|>). A turn's span ends at the first of them.
        probe = None
        for head in ([], [{"role": "system", "content": "S"}]):
            exchange = [*head, {"role": "user", "content": "U"}, {"role": "assistant", "content": f"{OPEN}A{CLOSE}"}]
            try:
                probe = self.render(exchange, None)
                break
            except BadConversation as exc:
                refusal = exc
        if probe is None:
            reason = str(refusal).removeprefix("the chat template refused it (").removesuffix(")")
            raise self._unusable(f"refuses even a plain user/assistant exchange ({reason})")
        if OPEN not in probe:
            raise self._unusable("does not write the assistant's content (nothing to train on)")
        ends = set()
        two_turns = [*exchange[:-1], {"role": "assistant", "content": f"{OPEN}A{CLOSE}"}, {"role": "user", "content": "V"},
                     {"role": "assistant", "content": f"{OPEN}B{CLOSE}"}]
        for text in (probe, self._render_or_none(two_turns)):
            for at in [m.end() for m in re.finditer(CLOSE, text or "")]:
                after = text[at:].lstrip()
                ends.add(max((t for t in added_tokens if t and after.startswith(t)), key=len, default=""))
        tool_turn = self._render_or_none([*exchange[:-1], _with_arguments(call[1], self.string_arguments)])
        if tool_turn:
            ends.add(max((t for t in added_tokens if t and tool_turn.rstrip().endswith(t)), key=len, default=""))
        self.end_tokens = tuple(sorted(t for t in ends if t))
        # What the template writes between the generation prompt and the content (Qwen3's empty
        # think block, gpt-oss's channel header) is the model's output: trained from the prompt's end.
        thought = self._render_or_none([*exchange[:-1], {"role": "assistant", "content": "A", "reasoning_content": "R"}])
        self.renders_reasoning = bool(thought) and "R" in thought
        prompt = self._render_or_none(exchange[:-1], generation_prompt=True)
        self.output_gap = prompt is not None and probe.startswith(prompt) and probe.index(OPEN) > len(prompt)

    def _render_or_none(self, messages: list[dict], generation_prompt: bool = False, tools=None) -> str | None:
        try:
            return self.render(messages, tools, generation_prompt=generation_prompt)
        except BadConversation:
            return None

    def _unusable(self, what: str) -> TemplateError:
        """The one line for a template that can't be used, naming where it came from."""
        return TemplateError(f"{self.source}: the chat template {what}")

    def _accepts(self, messages: list[dict]) -> bool:
        try:
            self.render(messages, None)
            return True
        except BadConversation:
            return False

    @property
    def method(self) -> str:
        """How the trained spans are found, for the manifest."""
        if self.generation:
            return "generation blocks"
        if self.convention == "automodel":
            return "prefix renders, AutoModel's convention (role header and the newline after the end-of-turn token trained)"
        return "marked render" if self.faithful else "marked render checked against a plain render, else prefix renders"

    def render(self, messages: list[dict], tools, generation_prompt: bool = False, indices: bool = False):
        """The rendered text, or (text, generation spans) with `indices`: what transformers'
        `apply_chat_template` renders (our records are plain JSON already, so only the
        reasoning aliases it adds are needed before calling the compiled template)."""
        try:
            if not indices:
                return self._compiled.render(messages=_alias_reasoning(messages), tools=tools, documents=None,
                                             add_generation_prompt=generation_prompt, **self.special_tokens)
            rendered, spans = self._render_jinja([messages], tools=tools, chat_template=self.template,
                                                 add_generation_prompt=generation_prompt,
                                                 return_assistant_tokens_mask=indices, **self.special_tokens)
        except Exception as exc:  # raise_exception, an undefined name, a type error: this record's problem
            fault = _template_fault(exc)
            raise (self._unusable(fault) if fault else BadConversation(f"the chat template refused it ({_reason(exc)})")) from None
        return rendered[0], spans[0]

    def spans(self, messages: list[dict], tools, last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """(rendered text, trained character spans in order); `last_only`: the last assistant turn's only."""
        if self.convention != "automodel":  # AutoModel hands the template the record's arguments as they are
            messages = [_with_arguments(m, self.string_arguments) for m in messages]
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.convention == "automodel" and not self.generation:
            from prep.recipes.template_turns import automodel_spans

            text, spans = automodel_spans(self, messages, tools, assistants)
        elif self.generation:
            text, indices = self.render(messages, tools, indices=True)
            spans = [tuple(s) for s in indices]
            if len(spans) != len(assistants):
                raise BadConversation(f"the template's generation blocks give {len(spans)} spans for {len(assistants)} assistant turns")
            spans = [self._without_reasoning(text, s, messages[i]) for s, i in zip(spans, assistants)]
        else:
            text, spans = self._marked_spans(messages, tools, assistants)
            if spans is None:  # only the turns trained need their prefix renders
                text = self.render(messages, tools)
                spans = self._prefix_spans(messages, tools, text, assistants[-1:] if self.last_turn_only or last_only else assistants)
        if self.last_turn_only or last_only:
            spans, assistants = spans[-1:], assistants[-1:]
        if self.renders_reasoning:
            self._check_reasoning_kept(messages, tools, assistants)
        return text, [s for s in spans if s[1] > s[0]]

    def _check_reasoning_kept(self, messages: list[dict], tools, trained: list[int]) -> None:
        """A trained turn whose reasoning the render leaves out (Qwen3 and gpt-oss drop it from turns
        before the last user message) would teach the model to answer without it: refused. Seen in
        one render with each such turn's reasoning replaced by a marker (the final message's
        reasoning is always rendered: nothing later can drop it)."""
        check = [i for i in trained if i != len(messages) - 1 and messages[i].get("reasoning_content")]
        if not check:
            return
        probe = list(messages)
        for i in check:
            probe[i] = {**{k: v for k, v in messages[i].items() if k not in REASONING_KEYS}, "reasoning_content": f"\ue005{i}\ue006"}
        text = self.render(probe, tools)
        if any(f"\ue005{i}\ue006" not in text for i in check):
            raise BadConversation("the chat template drops this turn's reasoning once later turns exist; "
                                  "pass --per-turn for one sample per assistant turn, rendered as when it was generated")

    def _end(self, text: str, position: int, limit: int) -> int:
        """The end of the turn whose trained text runs to `position`: just past the first end-of-turn token."""
        if not self.end_tokens:
            return position
        found = [(at, len(t)) for t in self.end_tokens if (at := text.find(t, position, limit)) >= 0]
        if not found:
            raise BadConversation("no end-of-turn token after an assistant turn; the template makes the span ambiguous")
        at, length = min(found)
        return at + length

    def _marked(self, messages: list[dict]) -> list[dict] | None:
        """Messages with assistant content (and reasoning) wrapped in markers; None when a turn has no content."""
        marked = list(messages)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if not message.get("content"):
                return None  # tool-call-only turns: nothing to mark
            marked[i] = {**message, "content": OPEN + message["content"] + CLOSE}
            for key in REASONING_KEYS:  # under whichever name the template reads it
                if message.get(key):
                    marked[i][key] = R_OPEN + message[key] + R_CLOSE
        return marked

    def _marks_round_trip(self, messages: list[dict]) -> bool:
        return _strip_markers(self.render(self._marked(messages), None))[0] == self.render(messages, None)

    def _marked_spans(self, messages, tools, assistants):
        """(text, spans) from one render with marked assistant content, or (None, None) when the
        markers don't round-trip (checked on every record unless the template is faithful)."""
        marked = self._marked(messages)
        if marked is None:
            return None, None
        text, found = _strip_markers(self.render(marked, tools))
        if not self.faithful and text != self.render(messages, tools):
            return None, None
        positions = {OPEN: [], CLOSE: [], R_OPEN: [], R_CLOSE: []}
        for removed, (at, marker) in enumerate(sorted(found)):
            positions[marker].append(at - removed)  # where it was in the text without markers
        if len(positions[OPEN]) != len(assistants) or len(positions[CLOSE]) != len(assistants):
            return None, None
        reasoning = [bool(messages[i].get("reasoning_content")) for i in assistants]
        if len(positions[R_OPEN]) != sum(reasoning):
            return None, None
        r_starts = iter(positions[R_OPEN])
        spans = []
        for k, (start, end) in enumerate(zip(positions[OPEN], positions[CLOSE])):
            if reasoning[k]:
                r_start = next(r_starts)
                if not self.mask_reasoning:  # the turn's output: from the end of the generation prompt
                    start = self._output_start(messages, tools, text, assistants[k], min(start, r_start))
            elif self.output_gap:
                start = self._output_start(messages, tools, text, assistants[k], start)
            limit = positions[OPEN][k + 1] if k + 1 < len(assistants) else len(text)
            spans.append((start, self._end(text, self._after_calls(text, end, messages[assistants[k]]), limit)))
        return text, spans

    def _output_start(self, messages, tools, text: str, i: int, start: int) -> int:
        """Where assistant turn i's output begins: after the turns before it and the generation
        prompt, so that what the template writes around reasoning (think tags) is trained too;
        `start` when that render is not a prefix of `text` ending before it."""
        prompt = self.render(messages[:i], tools, generation_prompt=True)
        return len(prompt) if len(prompt) <= start and text.startswith(prompt) else start

    def _prefix_spans(self, messages, tools, text, assistants):
        spans = []
        for k, i in enumerate(assistants):
            prompt = self.render(messages[:i], tools, generation_prompt=True)
            if not text.startswith(prompt):
                raise BadConversation("the chat template renders earlier turns differently once later turns exist; "
                                      "assistant spans would be ambiguous (--per-turn renders each turn as when it was generated)")
            start = len(prompt)
            span = (start, self._end(text, self._after_content(text, start, messages[i]), len(text)))
            spans.append(self._without_reasoning(text, span, messages[i]))
        return spans

    @staticmethod
    def _after_content(text: str, start: int, message: dict) -> int:
        """Where turn `message`, rendered from `start`, has written its reasoning, content and tool
        calls: its end-of-turn token comes after that (gpt-oss closes the reasoning with an end
        token too; an argument may hold an end-of-turn token's text)."""
        position = start
        for part in ((message.get("reasoning_content") or "").strip(), (message.get("content") or "").strip()):
            at = text.find(part, position) if part else -1
            if at >= 0:
                position = at + len(part)
        return ChatTemplate._after_calls(text, position, message)

    @staticmethod
    def _after_calls(text: str, position: int, message: dict) -> int:
        """Past each tool call's name and argument strings, in order, where the render holds them."""
        for call in message.get("tool_calls") or ():
            arguments = call["function"].get("arguments")
            leaves = [arguments] if isinstance(arguments, str) else _strings(arguments)
            for part in (call["function"]["name"], *leaves):
                at = text.find(part, position) if part else -1
                if at >= 0:
                    position = at + len(part)
        return position

    def _without_reasoning(self, text: str, span: tuple[int, int], message: dict) -> tuple[int, int]:
        reasoning = message.get("reasoning_content")
        if not (self.mask_reasoning and reasoning):
            return span
        at = text.find(reasoning, span[0], span[1])
        if at < 0:
            return span  # the template does not render reasoning: nothing to mask
        # trained from the answer on: what closes the reasoning (think tags) is masked with it
        content = (message.get("content") or "").strip()  # as templates that trim it render it
        answer = text.find(content, at + len(reasoning), span[1]) if content else -1
        return (answer if answer >= 0 else at + len(reasoning), span[1])


# Conversations that expose templates which change assistant content: whitespace, think tags, reasoning.
# Each kind in two shapes, with a system turn and without (strict templates refuse one or the other).
_SPACING = [{"role": "user", "content": " u\n"}, {"role": "assistant", "content": "  a b \n"},
            {"role": "user", "content": "v"}, {"role": "assistant", "content": "\nc "}]
_THINKING = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "<think>t</think>a", "reasoning_content": " r "},
             {"role": "user", "content": "v"}, {"role": "assistant", "content": "x</think> y", "reasoning_content": "q"}]
_PROBES = [
    [[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]],
    [[{"role": "system", "content": " s "}, *_SPACING], _SPACING],
    [_THINKING, [{"role": "system", "content": "s"}, *_THINKING]],
]


def _strings(value) -> list[str]:
    """The strings inside a JSON value, in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _strip_markers(rendered: str) -> tuple[str, list[tuple[int, str]]]:
    """(the text without markers, (position, marker) of each in `rendered`): str.find and
    str.replace are several times faster than a regex here."""
    found, text = [], rendered
    for marker in (OPEN, CLOSE, R_OPEN, R_CLOSE):
        at = rendered.find(marker)
        if at >= 0:
            text = text.replace(marker, "")
        while at >= 0:
            found.append((at, marker))
            at = rendered.find(marker, at + 1)
    return text, found


def _alias_reasoning(messages: list[dict]) -> list[dict]:
    """transformers' aliasing: reasoning under any of its names is also `reasoning_content` and `thinking`."""
    out = []
    for message in messages:
        reasoning = next((message[k] for k in ("reasoning_content", "thinking", "reasoning") if message.get(k) is not None), None)
        out.append(message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning})
    return out


def _with_arguments(message: dict, as_string: bool) -> dict:
    """Tool-call arguments as the template takes them: a JSON string (DeepSeek-V3 concatenates
    it; a string in the record is kept exactly as written, as apply_chat_template passes it) or
    an object (HF's convention; a string is parsed)."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        arguments = call["function"]["arguments"]
        if as_string and not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        elif not as_string and isinstance(arguments, str):
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        calls.append({**call, "function": {**call["function"], "arguments": arguments}})
    return {**message, "tool_calls": calls}
