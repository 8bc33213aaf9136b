"""Conversation shapes: the rows users bring, turned into the `[{"role", "content"}, ...]` messages a chat template
renders. Pure functions, no tokenizer.

Accepted shapes:
- a `messages` (or `conversations`) list of `{"role", "content"}` dicts; other keys (`tool_calls`, `name`,
  `reasoning_content`, `thinking`, ...) pass through unchanged, so the template renders them as it renders them for the
  model;
- ShareGPT rows: `conversations` (or `messages`) of `{"from", "value"}` dicts, roles `human`/`gpt`/`system`/`tool`/...
  mapped by `SHAREGPT_ROLES`;
- `content` as a list of parts (`[{"type": "text", "text": ...}]`): the text parts are joined (`content_text`); the
  chat masker turns them back into parts for templates that only read parts (vision-language templates).

What is trained in a conversation (see `chat.chat_labels`): every assistant turn as the template renders it, which
includes the reasoning block (`reasoning_content`/`thinking`, or `<think>...</think>` in the content) and the tool calls
(`tool_calls`) the template renders inside the turn; where a template leaves the reasoning of earlier turns out of the
render (Qwen3, DeepSeek-R1), there is nothing of it to train. An assistant reply with no text, no reasoning and no tool
call is flagged as an empty completion instead of training only its end-of-turn token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import DatasetFormatError, DatasetTypeError

__all__ = [
    "SHAREGPT_ROLES",
    "STANDARD_ROLES",
    "content_text",
    "conversation_of",
    "fit_content",
    "is_empty_reply",
    "message_spans",
    "reads_parts",
    "reasoning_text",
    "template_roles",
    "to_messages",
    "unknown_roles",
]

#: Roles every chat template is expected to handle.
STANDARD_ROLES = ("system", "user", "assistant", "tool")
#: ShareGPT `from` values and the role each becomes.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_ROLE_TEST = re.compile(
    r"role['\"\]]*\s*(?:==|!=)\s*['\"](\w+)['\"]|role['\"\]]*\s+(?:not\s+)?in\s*[\[(]([^\])]*)[\])]"
)


def template_roles(template: str | None) -> tuple[str, ...]:
    """The roles a chat template handles: the standard ones plus every role name its source compares `role` with."""
    found = set(STANDARD_ROLES)
    for single, group in _ROLE_TEST.findall(template or ""):
        found.update([single] if single else re.findall(r"['\"](\w+)['\"]", group))
    return tuple(sorted(found))


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string as is, the text parts of a list joined, `None` as ''."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    return str(content)


def unknown_roles(messages: Sequence[Mapping[str, Any]], template: str | None) -> str:
    """'' when every role is one the template handles, else a remark naming the others and the handled ones."""
    handled = template_roles(template)
    odd = sorted({str(m.get("role")) for m in messages} - set(handled))
    if not odd:
        return ""
    return f" (roles the template doesn't handle: {', '.join(map(repr, odd))}; it handles: {', '.join(handled)})"


def reads_parts(render: Callable[[list[dict]], str]) -> bool:
    """Whether a template (`render(messages) -> text`) renders text only from content parts, as vision-language
    templates do (they drop a plain string). A template that can't render a lone user message reads strings."""
    try:
        if "probe-string" in render([{"role": "user", "content": "probe-string"}]):
            return False
        return "probe-part" in render([{"role": "user", "content": [{"type": "text", "text": "probe-part"}]}])
    except Exception:  # noqa: BLE001 - any template error: the ways to locate turns report it on the rows
        return False


def reasoning_text(message: Mapping[str, Any]) -> str:
    """A message's reasoning: `reasoning_content`/`thinking`/`reasoning`, or the content before `</think>`."""
    for key in _REASONING_KEYS:
        if text := content_text(message.get(key)):
            return text
    content = content_text(message.get("content"))
    return content.split("</think>")[0] if "</think>" in content else ""


def message_spans(
    text: str, messages: Sequence[Mapping[str, Any]], header: str = ""
) -> list[tuple[int, int, int] | None]:
    """Where each message lies in `text`, a rendering of `messages`: `(turn start, text start, text end)` character
    positions, or `None` for a message whose text is not found. Messages are searched in order. An assistant turn
    starts after `header` (the text the template opens assistant turns with) when one comes before its text and after
    the previous message, else at its text (DeepSeek writes no header for a reply to a tool). A text may be rendered
    stripped, or cut to its part after `</think>`; a message with no text gets an empty span."""
    spans: list[tuple[int, int, int] | None] = []
    cursor = 0
    for i, message in enumerate(messages):
        pieces = _text_pieces(message.get("content"))
        found = _find(text, pieces, cursor)
        at = text.find(header, cursor) if header and message.get("role") == "assistant" and found else -1
        if at >= 0 and not pieces:  # no text of its own: the header counts if it comes before the next message's
            after = (
                _find(text, _text_pieces(messages[i + 1].get("content")), cursor) if i + 1 < len(messages) else None
            )
            at = at if after is None or at < after[0] or after[0] == after[1] else -1
            found = (at + len(header),) * 2 if at >= 0 else found
        elif at >= 0 and at <= found[0]:  # the header before the text (or the text found inside the header)
            found = found if found[0] >= at + len(header) else _find(text, pieces, at + len(header))
        else:
            at = -1
        if found is None:
            spans.append(None)
            continue
        spans.append((at + len(header) if at >= 0 else found[0], *found))
        cursor = found[1]
    return spans


def _text_pieces(content: Any) -> list[str]:
    if isinstance(content, list):
        return [p["text"] for p in content if _is_text_part(p) and isinstance(p["text"], str) and p["text"].strip()]
    return [content] if isinstance(content, str) and content.strip() else []


def _find(text: str, pieces: list[str], start: int) -> tuple[int, int] | None:
    first, cursor = None, start
    for piece in pieces:
        for variant in (piece, piece.strip(), piece.rsplit("</think>", 1)[-1].strip()):
            at = text.find(variant, cursor) if variant else -1
            if at >= 0:
                first, cursor = (at if first is None else first), at + len(variant)
                break
        else:
            return None
    return (start, start) if first is None else (first, cursor)


def is_empty_reply(message: Mapping[str, Any]) -> bool:
    """An assistant message with no text, no reasoning and no tool call: nothing for the model to learn but a stop."""
    if message.get("tool_calls") or any(content_text(message.get(key)).strip() for key in _REASONING_KEYS):
        return False
    return not content_text(message.get("content")).strip()


def fit_content(messages: Sequence[Mapping[str, Any]], *, parts: bool) -> list[dict]:
    """`messages` with every `content` as the template reads it: text parts wrapped as `[{"type": "text", ...}]`
    (`parts=True`) or joined into one string (`parts=False`). Non-text parts are left as given."""
    out = []
    for message in messages:
        content = message.get("content")
        if parts and isinstance(content, str):
            message = {**message, "content": [{"type": "text", "text": content}]}
        elif not parts and isinstance(content, list) and all(_is_text_part(p) for p in content):
            message = {**message, "content": content_text(content)}
        out.append(dict(message))
    return out


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and (part.get("type") in (None, "text")) and "text" in part


def _where(row: int | None, dataset_name: str) -> str:
    return f"Row {row} of the {dataset_name} dataset" if row is not None else f"A row of the {dataset_name} dataset"


def to_messages(
    value: Any,
    *,
    roles: Iterable[str] | None = None,
    row: int | None = None,
    dataset_name: str = "train",
) -> list[dict]:
    """Messages from one conversation: a list of messages, or a row with a `messages` or `conversations` column.

    ShareGPT messages (`from`/`value`) are mapped to `role`/`content` (`SHAREGPT_ROLES`); content given as text parts
    is joined into a string; every other key passes through. With `roles` (`template_roles(template)`), a role
    outside them is refused; without, any role passes (templates like ChatML render every role as given, and
    `chat.chat_labels` names the roles the template doesn't handle when a row can't be trained).

    Raises:
        DatasetTypeError: the conversation is not a list of dicts, or a `content` is neither text, parts nor `None`.
        DatasetFormatError: a message has no role, or a role that neither ShareGPT nor the template knows.
    """
    where = _where(row, dataset_name)
    if isinstance(value, Mapping):
        column = next((c for c in ("messages", "conversations") if c in value), None)
        if column is None:
            raise DatasetFormatError(
                f"{where} has no `messages` or `conversations` column (keys: {sorted(value)}). Fix: put the "
                "conversation in a `messages` column of [{'role': ..., 'content': ...}] dicts."
            )
        value = value[column]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, Mapping) for m in value):
        raise DatasetTypeError(
            f"{where}: a conversation must be a list of {{'role', 'content'}} (or ShareGPT {{'from', 'value'}}) "
            f"dicts, got {type(value).__name__} {str(value)[:80]!r}. Fix: write each row as "
            "[{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}]."
        )
    accepted = tuple(sorted(set(roles))) if roles is not None else None
    out = []
    for j, message in enumerate(value):
        message = dict(message)
        if "role" not in message and "from" in message:
            source = message.pop("from")
            message["role"] = SHAREGPT_ROLES.get(str(source).lower(), source)
            message.setdefault("content", message.pop("value", None))
            message.pop("value", None)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise DatasetFormatError(
                f"{where}: message {j} has no `role` (keys: {sorted(message)}). Fix: give every message a role "
                f"({', '.join(accepted or STANDARD_ROLES)}), or a ShareGPT `from` ({', '.join(sorted(SHAREGPT_ROLES))})."
            )
        if accepted is not None and role not in accepted:
            raise DatasetFormatError(
                f"{where}: message {j} has role {role!r}, which the chat template does not handle (it handles: "
                f"{', '.join(accepted)}). Fix: rename the role, e.g. map it to 'assistant' for the model's replies "
                "or 'user' for the prompts, before training."
            )
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) for p in content):
                raise DatasetTypeError(
                    f"{where}: message {j} (role {role!r}) has `content` {str(content)[:80]!r}; a list of content "
                    "must hold parts like {'type': 'text', 'text': ...}. Fix: give the text as a string."
                )
            if all(_is_text_part(p) for p in content):
                message["content"] = content_text(content)
        elif content is not None and not isinstance(content, str):
            raise DatasetTypeError(
                f"{where}: message {j} (role {role!r}) has `content` of type {type(content).__name__} "
                f"({str(content)[:80]!r}); it must be a string or a list of text parts. Fix: convert it to text."
            )
        out.append(message)
    return out


def conversation_of(example: Mapping[str, Any], **kwargs: Any) -> tuple[list[dict], int]:
    """`(messages, trainable_from)` for one dataset row: `messages`/`conversations` rows train from message 0;
    prompt/completion rows given as messages train only the completion's replies (`trainable_from = len(prompt)`).
    `kwargs` go to `to_messages`."""
    if (
        "prompt" in example
        and "completion" in example
        and not any(c in example for c in ("messages", "conversations"))
    ):
        prompt = to_messages(example["prompt"], **kwargs)
        return prompt + to_messages(example["completion"], **kwargs), len(prompt)
    return to_messages(example, **kwargs), 0
