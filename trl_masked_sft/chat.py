"""Assistant-only masks for conversations under any chat template, found without `{% generation %}` markers.

Each assistant turn is located by rendering the conversation prefix by prefix and diffing the token ids: the turn's
tokens are those that rendering `messages[:i + 1]` adds to rendering `messages[:i]` with the generation prompt.
The result is verified (every prefix must be a prefix of the whole conversation, and, where the template has
generation markers, the two masks must agree); a row that fails is reported, never silently masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatMask", "chat_labels"]

TRAINED = "trained"
#: Reason codes for masked tokens of a conversation (see `ChatMask.reasons`).
SYSTEM, USER, TOOL, TEMPLATE = "system turn", "user turn", "tool turn", "template"
EARLIER_ASSISTANT, END_OF_TURN = "earlier assistant turn", "end of turn (not trained)"


@dataclass
class ChatMask:
    """Token ids of a rendered conversation, their labels, a reason per token, and what went wrong (if anything)."""

    input_ids: list[int]
    labels: list[int]
    reasons: list[str] = field(default_factory=list)
    problem: str | None = None


def _render(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool, **kwargs: Any) -> list[int]:
    if not messages and not add_generation_prompt:
        return []
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True, **kwargs
    )
    return list(out["input_ids"])


def _role_reason(role: str) -> str:
    return {"system": SYSTEM, "user": USER, "tool": TOOL, "ipython": TOOL, "function": TOOL}.get(role, f"{role} turn")


def special_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens, including added special tokens such as `<|im_end|>` the tokenizer doesn't name."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def _turn_end(tokenizer, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """`(content_end, eot_end)`: trailing whitespace after the turn's last special token is not part of the turn."""
    special = special_token_ids(tokenizer)
    eot_end = end
    while eot_end > start and ids[eot_end - 1] not in special and not tokenizer.decode([ids[eot_end - 1]]).strip():
        eot_end -= 1
    if eot_end == start or ids[eot_end - 1] not in special:
        eot_end = end  # no special end-of-turn token: keep the turn as rendered
    content_end = eot_end
    while content_end > start and ids[content_end - 1] in special:
        content_end -= 1
    return content_end, eot_end


def chat_labels(
    tokenizer,
    messages: Sequence[dict],
    *,
    assistant_turns: str = "all",
    train_eot: bool = True,
    ignore_index: int = -100,
    trainable_from: int = 0,
    **template_kwargs: Any,
) -> ChatMask:
    """Labels that train the assistant turns of `messages` only, for any chat template.

    Args:
        tokenizer: a tokenizer with a chat template (or pass `chat_template=` in `template_kwargs`).
        messages: `[{"role": ..., "content": ...}, ...]`.
        assistant_turns: `"all"` trains every assistant turn, `"last"` only the final one.
        train_eot: whether each trained turn's end-of-turn token (e.g. `<|im_end|>`, `<|eot_id|>`) is trained.
        trainable_from: index of the first message that may be trained; earlier ones are context (prompt/completion
            rows given as messages pass `len(prompt)`).
        template_kwargs: passed to `apply_chat_template` (`chat_template`, `tools`, ...).

    Returns a `ChatMask`. When a turn can't be located consistently, `problem` says why and every label is
    `ignore_index`, so the pre-flight pass reports the row.
    """
    if assistant_turns not in ("all", "last"):
        raise ValueError(f"`assistant_turns` must be 'all' or 'last', got {assistant_turns!r}.")
    full = _render(tokenizer, messages, add_generation_prompt=False, **template_kwargs)
    reasons = [TEMPLATE] * len(full)
    trained = [False] * len(full)
    assistant_idx = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i >= trainable_from]

    def failed(problem: str) -> ChatMask:
        return ChatMask(full, [ignore_index] * len(full), reasons, problem)

    if not assistant_idx:
        return failed("no assistant turn in the conversation")
    prev_end = 0
    for i, message in enumerate(messages):
        last = i == len(messages) - 1  # the whole conversation is already rendered
        upto = full if last else _render(tokenizer, messages[: i + 1], add_generation_prompt=False, **template_kwargs)
        if full[: len(upto)] != upto:
            return failed(
                f"the first {i + 1} messages render differently alone than inside the whole conversation, so turn "
                f"{i} can't be located"
            )
        role = message.get("role")
        if role != "assistant":
            reasons[prev_end : len(upto)] = [_role_reason(role)] * (len(upto) - prev_end)
            prev_end = len(upto)
            continue
        head = _render(tokenizer, messages[:i], add_generation_prompt=True, **template_kwargs)
        if upto[: len(head)] != head or len(head) < prev_end:
            return failed(f"the generation prompt before assistant turn {i} is not a prefix of that turn")
        start, end = len(head), len(upto)
        if start >= end:
            return failed(f"assistant turn {i} renders to no tokens")
        content_end, eot_end = _turn_end(tokenizer, full, start, end)
        train_end = eot_end if train_eot else content_end
        if train_end <= start:
            return failed(f"assistant turn {i} has no content tokens")
        is_trained = i >= trainable_from and (assistant_turns == "all" or i == assistant_idx[-1])
        for j in range(start, eot_end):
            if j >= train_end:
                reasons[j] = END_OF_TURN
            elif is_trained:
                reasons[j], trained[j] = TRAINED, True
            else:
                reasons[j] = EARLIER_ASSISTANT
        prev_end = end
    labels = [token if keep else ignore_index for token, keep in zip(full, trained, strict=True)]
    mask = ChatMask(full, labels, reasons)
    context_replies = any(m.get("role") == "assistant" for m in messages[:trainable_from])
    marker_problem = (
        None
        if context_replies
        else _check_against_markers(tokenizer, messages, mask, assistant_turns, train_eot, template_kwargs)
    )
    if marker_problem:
        return failed(marker_problem)
    return mask


def _check_against_markers(
    tokenizer, messages, mask: ChatMask, assistant_turns, train_eot, template_kwargs
) -> str | None:
    """Where the template has `{% generation %}` markers and every assistant turn is trained, the masks must agree."""
    from trl.chat_template_utils import has_generation_markers

    template = template_kwargs.get("chat_template") or tokenizer.chat_template
    if not template or not has_generation_markers(template) or assistant_turns != "all" or not train_eot:
        return None
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **template_kwargs
    )
    marked = list(out["assistant_masks"])
    ours = [1 if reason == TRAINED else 0 for reason in mask.reasons]
    if marked != ours:
        differ = [i for i, (a, b) in enumerate(zip(marked, ours, strict=True)) if a != b]
        return (
            f"the template's generation markers and the prefix diff disagree on {len(differ)} tokens (first at "
            f"position {differ[0]})"
        )
    return None
