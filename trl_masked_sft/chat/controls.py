"""The chat controls: which messages of a conversation train, with what weight, and which parts of a trained reply
(reasoning, tool calls) are masked. Message-level decisions and text-level spans; `chat` applies them to the tokens.

- a message's `train` key (`message_train_key`): `false` masks it, `true` trains it whatever its role (its text and
  the stop token the template prints after it); without the key its role decides (`train_roles`);
- a message's `weight` key (`message_weight_key`): a number ≥ 0, how many times its tokens count in the loss; `0` is
  `train: false`;
- `reasoning="mask"`: a trained reply's reasoning, and the wrapper the template renders around it, is masked;
- `tool_calls="mask"`: the tool-call part of a trained reply is masked (its stop token stays trained).

Spans are found in the rendered text (character offsets), so they hold for any template that renders the message.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DatasetFormatError, DatasetTypeError
from ..masking import IGNORE_INDEX
from ..provenance import EMPTIED, END_OF_TURN, MASKED_BY_KEY, REASONING_MASKED, TOOL_CALL_MASKED, ZERO_WEIGHT
from .conversations import SHAREGPT_ROLES, message_spans, reasoning_text
from .end_of_turn import TRAINED, encode, render, settle

__all__ = [
    "END_OF_TURN",
    "EMPTIED",
    "EOT_MODES",
    "Plan",
    "apply_plan",
    "Applied",
    "apply_controls",
    "carries_weights",
    "MASKED_BY_KEY",
    "REASONING_MASKED",
    "TOOL_CALL_MASKED",
    "ZERO_WEIGHT",
    "ChatControls",
    "answer_start",
    "choose",
    "eot_mode",
    "read_controls",
]

#: `train_on_eot` values, as Axolotl's `train_on_eos` names them; `True`/`False` are `"turn"`/`"none"`.
EOT_MODES = ("turn", "none", "last", "all")


def eot_mode(value: bool | str) -> str:
    """`train_on_eot` as one of `EOT_MODES`."""
    return "turn" if value is True else "none" if value is False else value


@dataclass(frozen=True)
class ChatControls:
    """What the chat controls ask of a conversation (the config fields of the same names)."""

    train_roles: tuple[str, ...] = ("assistant",)
    message_train_key: str = "train"
    message_weight_key: str = "weight"
    reasoning: str = "train"
    tool_calls: str = "train"

    @classmethod
    def of(cls, options: Any) -> ChatControls:
        """The controls of a `MaskingOptions` (or any object with the same fields)."""
        return cls(*(getattr(options, name) for name in cls.__dataclass_fields__))

    @property
    def roles(self) -> frozenset[str]:
        """`train_roles` with ShareGPT names (`gpt`, `human`, ...) also as the roles they become."""
        return frozenset(self.train_roles) | {SHAREGPT_ROLES[r] for r in self.train_roles if r in SHAREGPT_ROLES}


def read_controls(
    messages: Sequence[Mapping[str, Any]], controls: ChatControls, where: str = "A conversation"
) -> tuple[list[dict], list[bool | None], list[float | None]]:
    """`(messages without the control keys, each message's train flag, each message's weight)`; `None` where the
    message has no such key (or `None` under it, as Arrow fills missing keys).

    Raises:
        DatasetTypeError: a train flag that is not a bool, or a weight that is not a number.
        DatasetFormatError: a weight that is negative, NaN or infinite.
    """
    train_key, weight_key = controls.message_train_key, controls.message_weight_key
    out, flags, weights = [], [], []
    for j, message in enumerate(messages):
        flag, weight = message.get(train_key), message.get(weight_key)
        if flag is not None and not isinstance(flag, bool):
            raise DatasetTypeError(
                f"{where}: message {j} has `{train_key}` = {flag!r} ({type(flag).__name__}); it must be true or "
                f'false. Fix: write `"{train_key}": true` or `false`, or drop the key to let the role decide '
                "(`train_roles`); if the key means something else in your data, rename it with `message_train_key`."
            )
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise DatasetTypeError(
                    f"{where}: message {j} has `{weight_key}` = {weight!r} ({type(weight).__name__}); it must be a "
                    f'number ≥ 0. Fix: write e.g. `"{weight_key}": 0.5`, or drop the key (weight 1); if the key '
                    "means something else in your data, rename it with `message_weight_key`."
                )
            if not math.isfinite(weight) or weight < 0:
                raise DatasetFormatError(
                    f"{where}: message {j} has `{weight_key}` = {weight!r}; a weight must be a finite number ≥ 0. "
                    f'Fix: use 0 to mask the message (as `"{train_key}": false`), or a positive weight.'
                )
            weight = float(weight)
        flags.append(flag)
        weights.append(weight)
        keyed = train_key in message or weight_key in message
        out.append({k: v for k, v in message.items() if k not in (train_key, weight_key)} if keyed else message)
    return out, flags, weights


def carries_weights(dataset: Any, key: str) -> bool:
    """Whether any message of a dataset's conversation columns (`messages`, `conversations`, `prompt`, `completion`)
    has a weight under `key`. A column whose Arrow schema has no such message field is not read."""
    features = getattr(dataset, "features", None) or {}

    def may_hold(column: str) -> bool:  # the message struct's fields, where the schema says them
        feature = features.get(column)
        inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
        return not isinstance(inner, dict) or key in inner

    columns = [c for c in ("messages", "conversations", "prompt", "completion") if c in dataset.column_names]
    columns = [c for c in columns if may_hold(c)]
    return any(
        isinstance(m, Mapping) and m.get(key) is not None
        for column in columns
        for conversation in dataset[column]
        if isinstance(conversation, list)
        for m in conversation
    )


def choose(
    messages: Sequence[Mapping[str, Any]],
    flags: Sequence[bool | None],
    weights: Sequence[float | None],
    controls: ChatControls,
    *,
    assistant_turns: str = "all",
    trainable_from: int = 0,
) -> list[int]:
    """The messages to train: `train: true` ones, and those from `trainable_from` on whose role is in `train_roles`
    (of the assistant ones only the last with `assistant_turns="last"`), less `train: false` and weight 0."""
    roles = controls.roles
    by_role = [
        i
        for i, m in enumerate(messages)
        if i >= trainable_from and flags[i] is None and m.get("role") in roles and weights[i] != 0
    ]
    if assistant_turns == "last":
        replies = [i for i in by_role if messages[i].get("role") == "assistant"]
        by_role = [i for i in by_role if messages[i].get("role") != "assistant" or i == replies[-1]]
    return sorted(set(by_role) | {i for i, f in enumerate(flags) if f is True and weights[i] != 0})


def answer_start(text: str, message: Mapping[str, Any], span: tuple[int, int, int], header: str, limit: int) -> int:
    """Where the answer of an assistant turn starts in `text`, the render (`span`: its turn start, text start and
    text end, see `message_spans`; `limit`: where its end-of-turn token starts): what the turn renders before it is
    reasoning and its wrapper (`<think>...</think>`, the empty `<think></think>` a template inserts, gpt-oss' analysis
    channel up to the next assistant header). The turn start when the turn renders no reasoning."""
    turn_start, text_start, text_end = span
    answer = text_end > text_start  # a reply with text; else the reasoning/tool call runs up to its stop
    end = text_end if answer else limit
    close = text.rfind("</think>", turn_start, end)
    if close >= 0:  # `<think>...</think>` in the content, or the wrapper the template renders
        after = close + len("</think>")
        return after + len(text[after:end]) - len(text[after:end].lstrip())
    reasoning = reasoning_text(message).strip()
    at = text.find(reasoning, turn_start, end) if reasoning else -1
    if at < 0 or (answer and at >= text_start):
        return turn_start
    after = at + len(reasoning)
    again = text.find(header, after, text_start if answer else limit) if header else -1
    return again + len(header) if again >= 0 else text_start if answer else after


@dataclass
class Applied:
    """What the controls did to one conversation's labels: the labels, the per-token weights (`None` when no message
    carries one) and the token ranges whose reason changed, `(start, end, reason)`, in order."""

    labels: list[int]
    weights: list[float] | None
    marks: list[tuple[int, int, str]]

    def inserted(self, inserted: tuple[int, int] | None, weight: float | None) -> Applied:
        """After `chat` inserted a stop token (`(position, id)`, trained, with its reply's `weight`): the weights and
        marks moved past it."""
        if inserted is None:
            return self
        at, stop = inserted
        weights = None if self.weights is None else [*self.weights[:at], weight or 1.0, *self.weights[at:]]
        marks = [(a + (a >= at), b + (b > at), reason) for a, b, reason in self.marks]
        return Applied([*self.labels[:at], stop, *self.labels[at:]], weights, marks)

    @property
    def problem(self) -> str | None:
        """The row reason when the controls leave nothing to train (a fully masked row), else `None`."""
        return None if any(label != IGNORE_INDEX for label in self.labels) else f"{EMPTIED}: nothing left to train"

    def explain(self, reasons: list[str]) -> list[str]:
        """`reasons` with the controls' marks over them."""
        for start, end, reason in self.marks:
            reasons[start:end] = [reason] * (end - start)
        return reasons


def apply_controls(
    ids: list[int],
    labels: list[int],
    located: tuple[str, list[tuple[int, int]]] | None,
    messages: Sequence[Mapping[str, Any]],
    turns: Sequence[tuple[int, int, int, int]],
    picked: tuple[Sequence[int], Sequence[bool | None], Sequence[float | None]],
    controls: ChatControls,
    *,
    mode: str,
    header: str,
    stop: Callable[[int, int], tuple[int, int]],
    ignore_index: int,
) -> Applied:
    """The controls on labels built for the trained replies (`turns`: `(message, start, eot_start, end)` of every
    assistant message): other messages to train, reasoning and tool calls masked, `train_on_eot` modes `"last"` and
    `"all"`, weights. `located` is the render and its token offsets; `picked` the chosen messages, flags and weights;
    `stop(k, bound)` settles the end-of-turn tokens after a text ending before token `k`.

    Raises `LookupError` when a span to change is not in the render (that way of locating turns does not verify)."""
    chosen, flags, weights = picked
    labels, marks = list(labels), []
    needs_text = (
        any(messages[i].get("role") != "assistant" for i in chosen)
        or mode == "all"
        or "mask" in (controls.reasoning, controls.tool_calls)
    )
    if needs_text and located is None:
        raise LookupError("the marked render is not the text's tokenization, so spans can't be found in the text")
    text, offsets = located if located is not None else ("", [])
    spans = message_spans(text, messages, header) if located is not None else [None] * len(messages)
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]

    def stop_after(i: int) -> tuple[int, int, int]:
        span = spans[i]
        if span is None:
            raise LookupError(f"the text of message {i} is not in the render (the template rewrites it)")
        following = next((s[0] for s in spans[i + 1 :] if s is not None), len(text))
        first, k = bisect_right(ends, span[1]), bisect_left(starts, span[2])
        return (first, *stop(k, bisect_left(starts, following)))  # its closing may follow a wrapper

    ranges = {t[0]: (t[1], t[3]) for t in turns if t[0] in chosen}
    replies = [t for t in turns if t[0] in chosen]
    for i in (i for i in chosen if messages[i].get("role") != "assistant"):
        first, eot_start, end = stop_after(i)
        cut = eot_start if mode == "none" else end
        labels[first:cut] = ids[first:cut]
        ranges[i] = (first, cut)
        replies.append((i, first, eot_start, end))
        marks.append((first, cut, TRAINED))
    for owner, start, eot_start, _ in (t for t in replies if messages[t[0]].get("role") == "assistant"):
        span, message = spans[owner], messages[owner]
        if controls.reasoning == "mask" or (controls.tool_calls == "mask" and message.get("tool_calls")):
            if span is None:
                raise LookupError(f"the text of assistant message {owner} is not in the render")
        limit = starts[eot_start] if eot_start < len(starts) else len(text)
        answer = answer_start(text, message, span, header, limit) if span is not None else None
        if controls.reasoning == "mask" and answer is not None and answer > span[0]:
            cut = max(start, min(bisect_right(ends, answer), eot_start))
            labels[start:cut] = [ignore_index] * (cut - start)
            marks.append((start, cut, REASONING_MASKED))
        if controls.tool_calls == "mask" and message.get("tool_calls"):
            first = max(start, min(bisect_right(ends, max(span[2], answer)), eot_start))
            labels[first:eot_start] = [ignore_index] * (eot_start - first)
            marks.append((first, eot_start, TOOL_CALL_MASKED))
    if mode == "last":  # only the final trained turn's stop
        ends_of = sorted((end, eot_start) for _, start, eot_start, end in replies)
        for end, eot_start in ends_of[:-1]:
            labels[eot_start:end] = [ignore_index] * (end - eot_start)
            marks.append((eot_start, end, END_OF_TURN))
    if mode == "all":  # every stop token of the conversation, masked turns too
        stops = [(t[2], t[3]) for t in turns] + [
            stop_after(i)[1:] for i, m in enumerate(messages) if m.get("role") != "assistant" and spans[i]
        ]
        for eot_start, end in stops:
            labels[eot_start:end] = ids[eot_start:end]
            marks.append((eot_start, end, TRAINED))
    for i, flag in enumerate(flags):
        if (flag is False or weights[i] == 0) and i < len(spans) and spans[i] is not None:
            a, b = _token_range(messages, i, turns, spans, starts, ends)
            marks.insert(0, (a, b, MASKED_BY_KEY if flag is False else ZERO_WEIGHT))
    token_weights = None
    if any(w is not None for w in weights):
        token_weights = [1.0 if lab != ignore_index else 0.0 for lab in labels]
        for i, (a, b) in ranges.items():
            if weights[i] is not None:
                token_weights[a:b] = [weights[i] if lab != ignore_index else 0.0 for lab in labels[a:b]]
    return Applied(labels, token_weights, marks)


def _token_range(messages, i, turns, spans, starts, ends) -> tuple[int, int]:
    turn = next((t for t in turns if t[0] == i), None)
    if turn is not None:
        return turn[1], turn[3]
    return bisect_right(ends, spans[i][1]), bisect_left(starts, spans[i][2])


@dataclass
class Plan:
    """The controls of one conversation, read once (`plan`): the messages without the control keys, the messages to
    train (`chosen`, assistant or not), each message's flag and weight, the `train_on_eot` mode. `active` is false
    when no control changes anything: then the labels are built exactly as without controls."""

    messages: list[dict]
    chosen: list[int]
    flags: list[bool | None]
    weights: list[float | None]
    controls: ChatControls
    mode: str

    @property
    def active(self) -> bool:
        keyed = any(f is not None for f in self.flags) or any(w is not None for w in self.weights)
        return keyed or self.controls != ChatControls() or self.mode not in ("turn", "none")


def plan(messages, controls, train_eot, where, *, assistant_turns: str, trainable_from: int) -> Plan:
    """Read a conversation's controls (`read_controls`) and choose what it trains (`choose`)."""
    controls = controls or ChatControls()
    messages, flags, weights = read_controls(messages, controls, where)
    chosen = choose(messages, flags, weights, controls, assistant_turns=assistant_turns, trainable_from=trainable_from)
    return Plan(messages, chosen, flags, weights, controls, eot_mode(train_eot))


def apply_plan(ctx: Any, located: Any, labels: list[int], ignore_index: int) -> Applied:
    """`apply_controls` for `chat`'s located turns (`ctx`: its context, with the render and the end-of-turn rule)."""
    text, offsets = located.text, located.offsets
    if text is None:  # the prefix diff: the render's offsets, if its tokenization is the located ids
        try:
            text = render(ctx.tokenizer, ctx.messages, ctx.kwargs)
            rendered, offsets = encode(ctx.tokenizer, text)
        except Exception:  # noqa: BLE001 - no text: the spans that need it can't be found
            rendered = None
        text = text if rendered == located.ids else None
    facts, blank = ctx.facts(required=False), ctx.blank(located.ids)
    return apply_controls(
        located.ids,
        labels,
        (text, offsets) if text is not None else None,
        ctx.messages,
        located.turns,
        (ctx.plan.chosen, ctx.plan.flags, ctx.plan.weights),
        ctx.plan.controls,
        mode=ctx.plan.mode,
        header=facts.header,
        stop=lambda k, bound: settle(located.ids, k, (k, bound), bound, facts, blank, ctx.stops),
        ignore_index=ignore_index,
    )
