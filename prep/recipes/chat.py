"""The chat recipe: OpenAI `messages` (tools, reasoning) or ShareGPT `conversations` records,
rendered by the tokenizer's chat template, loss on the assistant turns (prep.recipes.templates)."""

from __future__ import annotations

import json

import orjson

from prep.recipes.base import register
from prep.recipes.sft import SFTRecipe
from prep.recipes.template_turns import turn_as_generated
from prep.recipes.templates import REASONING_KEYS, BadConversation

ROLES = {"system", "developer", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool", "function_call": "assistant", "observation": "tool"}


def normalize(record: dict) -> tuple[list[dict], list | None]:
    """(messages, tools) in OpenAI form from an OpenAI `messages` or ShareGPT `conversations` row."""
    messages = record.get("messages")
    if messages is None and isinstance(record.get("conversations"), list):
        messages = []
        for i, turn in enumerate(record["conversations"]):
            role = SHAREGPT_ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
            if role is None:
                raise BadConversation(f"conversations[{i}]: unknown ShareGPT role {turn.get('from') if isinstance(turn, dict) else turn!r}")
            messages.append({"role": role, "content": turn.get("value")})
    if not isinstance(messages, list) or not messages:
        raise BadConversation("no 'messages' (or ShareGPT 'conversations') list in the record")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadConversation(f"messages[{i}] is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise BadConversation(f"messages[{i}]: unknown role {role!r}")
        message = dict(message)
        message["content"] = _content(message.get("content"), i)
        if role == "tool" and not message.get("tool_call_id"):
            raise BadConversation(f"messages[{i}]: tool message without tool_call_id")
        if message.get("tool_calls"):
            message["tool_calls"] = [_tool_call(call, i) for call in message["tool_calls"]]
        for key in REASONING_KEYS:  # transformers' aliases: the first present is the reasoning
            reasoning = message.get(key)
            if reasoning is not None and not isinstance(reasoning, str):
                raise BadConversation(f"messages[{i}]: {key} is not a string")
            if reasoning is not None and message.get("reasoning_content") is None:
                message["reasoning_content"] = reasoning
        out.append(message)
    if out[-1]["role"] != "assistant":
        raise BadConversation("the conversation ends without an assistant turn")
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            raise BadConversation("'tools' is a string but not JSON") from None
    if tools is not None and not isinstance(tools, list):
        raise BadConversation("'tools' is not a list")
    return out, tools or None


def as_automodel(record: dict) -> dict:
    """The record as NeMo AutoModel's ChatDataset hands it to the template (its _normalize_messages):
    text parts joined with spaces, no content as "", tool calls given an id (call_N) and a type, and
    arguments that are not a string serialised with Python's json.dumps (so `| tojson` writes a string)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return record
    out = []
    for message in messages:
        if not isinstance(message, dict):
            return record  # normalize() says what is wrong with it
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = " ".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
        elif content is None:
            message["content"] = ""
        if message.get("role") == "assistant" and isinstance(message.get("tool_calls"), list):
            calls = []
            for k, call in enumerate(message["tool_calls"]):
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    function = dict(call["function"])
                    if "arguments" in function and not isinstance(function["arguments"], str):
                        function["arguments"] = json.dumps(function["arguments"])
                    call = {**call, "id": call.get("id") or f"call_{k}", "type": call.get("type") or "function", "function": function}
                calls.append(call)
            message["tool_calls"] = calls
        out.append(message)
    return {**record, "messages": out}


def _content(content, i: int):
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: text only, joined
        texts = []
        for j, part in enumerate(content):
            text = part.get("text") if isinstance(part, dict) and part.get("type", "text") == "text" else None
            if not isinstance(text, str):
                raise BadConversation(f"messages[{i}].content[{j}] is not a text part with a string 'text'")
            texts.append(text)
        return "".join(texts)
    raise BadConversation(f"messages[{i}].content is {type(content).__name__}, expected a string or text parts")


def _tool_call(call, i: int) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadConversation(f"messages[{i}]: a tool call without function.name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends a JSON string: kept as written (see _with_arguments)
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            raise BadConversation(f"messages[{i}]: tool call arguments are not JSON") from None
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        raise BadConversation(f"messages[{i}]: tool call arguments are not a JSON object")
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}


@register
class ChatRecipe(SFTRecipe):
    name = "chat"
    help = "chat: OpenAI `messages` or ShareGPT `conversations`, loss on assistant turns."

    @classmethod
    def needs_template(cls, config) -> bool:
        return True

    def source_keys(self):
        return None  # every column: messages, tools, conversations

    def conversation(self, record: dict) -> tuple[list[dict], list | None]:
        """(messages, tools) of a record, normalised as the mask convention's trainer reads it."""
        return normalize(as_automodel(record) if self.options.mask_convention == "automodel" else record)

    def render(self, record: dict) -> tuple[str, list[tuple[int, int]]]:
        return self.template.spans(*self.conversation(record))

    def samples(self, record: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        if not self.options.per_turn:
            return [self.render(record)]
        messages, tools = self.conversation(record)  # each turn as when it was generated: the conversation up to it
        return [turn_as_generated(self.template, messages[:i + 1], tools) for i, m in enumerate(messages) if m["role"] == "assistant"]
