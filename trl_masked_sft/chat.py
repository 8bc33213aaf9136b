"""Assistant-only masks for conversations under any chat template, generation markers or not.

Four ways to find the tokens of each assistant turn are tried in order; the first one that can be verified on the row
wins, and `ChatMask.method` says which:

1. `MARKERS`: the template's own `{% generation %}` blocks. Authoritative. One render.
2. `TRL_TEMPLATE`: for a template TRL knows, its training copy with markers
   (`trl.chat_template_utils.get_training_chat_template`), used only when it renders exactly the token ids of the
   user's template. Two renders.
3. `OFFSETS`: one render of the whole conversation; each assistant message's text is found in it after the header the
   template opens every assistant turn with (read once per template from its generation prompt), and the turn runs to
   its end-of-turn token. Works on templates that rewrite earlier turns, add reasoning blocks or text after the last
   turn, or raise on a partial conversation. One render.
4. `PREFIX_DIFF`: each turn is what rendering `messages[:i + 1]` adds to `messages[:i]` plus the generation prompt,
   every prefix checked against the whole conversation. One render per message.

A template that raises falls through to the next way; a row is refused (`ChatMask.problem`, every label masked) only
when no way verifies, with what blocks each one and a fix. Every trained turn trains its end-of-turn token when
`train_eot` is on; when the template leaves it off the final turn, the template's end-of-turn token (or the eos) is
appended, as TRL appends the eos to text (`ChatMask.note` says so). An assistant reply with nothing in it is flagged as
an empty completion rather than trained on its end-of-turn token alone.
"""

from __future__ import annotations

import copy
import json
import os
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .conversations import fit_content, is_empty_reply, message_spans, reasoning_text

__all__ = ["METHODS", "ChatMask", "chat_labels"]

TRAINED = "trained"
#: Reason codes for masked tokens of a conversation (see `ChatMask.reasons`).
SYSTEM, USER, TOOL, TEMPLATE = "system turn", "user turn", "tool turn", "template"
EARLIER_ASSISTANT, END_OF_TURN = "earlier assistant turn", "end of turn (not trained)"
#: Row reason for a conversation whose replies to train are all empty (counted by the pre-flight audit).
EMPTY_COMPLETION = "empty completion"
#: The ways to locate assistant turns, in the order they are tried.
MARKERS, TRL_TEMPLATE, OFFSETS, PREFIX_DIFF = "generation markers", "TRL training template", "offsets", "prefix diff"
METHODS = (MARKERS, TRL_TEMPLATE, OFFSETS, PREFIX_DIFF)
_FIX = (
    "Fix: pass a chat template whose assistant output is wrapped in {% generation %} ... {% endgeneration %} "
    "(`chat_template_path`, or `chat_template` in the row's `chat_template_kwargs`), or drop such rows with "
    "`masked_row_policy='drop'`."
)


class _NotLocated(Exception):
    """One way to locate the turns does not verify on this row (the message says why)."""


@dataclass
class ChatMask:
    """Token ids of a rendered conversation, their labels, and how the assistant turns were found.

    `method` is the way that located the turns (one of `METHODS`), `note` what the caller should know about the row
    (an appended end-of-turn token, reasoning the template leaves out, ...), `problem` why nothing is trained.
    `reasons` (one per token: `TRAINED`, `USER`, `END_OF_TURN`, ...) is worked out when first read.
    """

    input_ids: list[int]
    labels: list[int]
    problem: str | None = None
    method: str | None = None
    note: str | None = None
    explain: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def reasons(self) -> list[str]:
        return self.explain() if self.explain is not None else [TEMPLATE] * len(self.input_ids)

    @property
    def row_reason(self) -> str:
        """The row's reason for the pre-flight audit: '' when trained, else `empty completion: ...` or
        `chat turns not located: ...`."""
        if not self.problem:
            return ""
        return self.problem if self.problem.startswith(EMPTY_COMPLETION) else f"chat turns not located: {self.problem}"


@dataclass
class _Located:
    """Where each assistant turn lies: `turns` holds `(message index, start, eot_start, end)` token positions, the
    turn's end-of-turn tokens being `[eot_start, end)`."""

    ids: list[int]
    turns: list[tuple[int, int, int, int]]
    notes: list[str] = field(default_factory=list)
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class _Facts:
    """What a template does around assistant replies, read once from a probe conversation."""

    header: str  # the text every assistant turn starts with (the generation prompt's part that turns render)
    eot_ids: tuple[int, ...]  # the end-of-turn tokens after a reply followed by a user turn ('' when none)
    stop_ids: frozenset[int]  # special tokens of turn headers: never part of an end-of-turn run
    opener_ids: frozenset[int]  # special tokens that open a turn (the first of a user's or an assistant's header)


_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _cached(key: tuple, compute: Callable[[], Any], owner: Any = None) -> Any:
    """`compute()` once per key (per live `owner`, the tokenizer, when given); an exception is remembered too."""
    ref = weakref.ref(owner) if owner is not None else None
    hit = _CACHE.get(key)
    if hit is None or (ref is not None and hit[0]() is not owner):
        if len(_CACHE) > 256:
            _CACHE.clear()
        try:
            value = compute()
        except Exception as error:  # noqa: BLE001 - a template may raise anything; remembered and re-raised
            value = error
        hit = _CACHE[key] = (ref or (lambda: None), value)
    value = hit[1]
    if isinstance(value, Exception):
        raise _NotLocated(_describe(value)) from value
    return value


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, _NotLocated) else f"the template raised {type(error).__name__}: {error}"


def special_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens, including added special tokens such as `<|im_end|>` the tokenizer doesn't name."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def _render(tokenizer, messages, kwargs, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt, **kwargs
    )


def _role_reason(role: str) -> str:
    return {"system": SYSTEM, "user": USER, "tool": TOOL, "ipython": TOOL, "function": TOOL}.get(role, f"{role} turn")


def chat_labels(
    tokenizer,
    messages: Sequence[dict],
    *,
    assistant_turns: str = "all",
    train_eot: bool = True,
    ignore_index: int = -100,
    trainable_from: int = 0,
    methods: Sequence[str] | None = None,
    **template_kwargs: Any,
) -> ChatMask:
    """Labels that train the assistant turns of `messages` only, for any chat template.

    Args:
        tokenizer: a fast tokenizer with a chat template (or pass `chat_template=` in `template_kwargs`).
        messages: `[{"role": ..., "content": ...}, ...]` (see `conversations.to_messages` for other shapes).
        assistant_turns: `"all"` trains every assistant turn, `"last"` only the final one.
        train_eot: whether each trained turn's end-of-turn token (e.g. `<|im_end|>`, `<|eot_id|>`) is trained.
        trainable_from: index of the first message that may be trained; earlier ones are context (prompt/completion
            rows given as messages pass `len(prompt)`).
        methods: the ways to try, in order (default `METHODS`).
        template_kwargs: passed to `apply_chat_template` (`chat_template`, `tools`, `enable_thinking`, ...).

    Returns a `ChatMask`. When no way locates the turns, `problem` says what blocks each and every label is
    `ignore_index`, so the pre-flight pass reports the row (`ChatMask.row_reason`).
    """
    if assistant_turns not in ("all", "last"):
        raise ValueError(f"`assistant_turns` must be 'all' or 'last', got {assistant_turns!r}.")
    methods = METHODS if methods is None else tuple(methods)
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"`methods` must be among {METHODS}, got {unknown}.")
    template = tokenizer.get_chat_template(template_kwargs.get("chat_template"), template_kwargs.get("tools"))
    options = json.dumps(
        {k: v for k, v in template_kwargs.items() if k != "chat_template"}, sort_keys=True, default=str
    )
    template_kwargs = {**template_kwargs, "chat_template": template}
    key = (id(tokenizer), len(tokenizer), template, options)
    try:
        parts = _cached(("parts", *key), lambda: _reads_parts(tokenizer, template_kwargs), tokenizer)
    except _NotLocated:
        parts = False
    messages = fit_content(messages, parts=parts)
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    chosen = [i for i in assistant if i >= trainable_from]
    chosen = chosen[-1:] if assistant_turns == "last" else chosen
    empty = [i for i in chosen if is_empty_reply(messages[i])]
    trained = [i for i in chosen if i not in empty]
    if not chosen:
        ids = _try_ids(tokenizer, messages, template_kwargs)
        return ChatMask(ids, [ignore_index] * len(ids), "no assistant turn in the conversation")
    ctx = _Context(tokenizer, messages, template_kwargs, key, parts, set(trained))
    tried: list[tuple[str, Exception]] = []
    for method in methods:
        try:
            located = _LOCATE[method](ctx)
        except Exception as error:  # noqa: BLE001 - jinja, type and value errors from templates all fall through
            tried.append((method, error))
            continue
        mask = _assemble(ctx, located, method, train_eot, ignore_index)
        if empty and not trained:
            mask.labels = [ignore_index] * len(mask.labels)
            mask.problem = f"{EMPTY_COMPLETION}: the assistant reply to train (message {_join(empty)}) has no content"
        elif empty:
            mask.note = "; ".join(filter(None, [mask.note, f"empty assistant reply (message {_join(empty)}) skipped"]))
        return mask
    ids = _try_ids(tokenizer, messages, template_kwargs)
    return ChatMask(ids, [ignore_index] * len(ids), _refusal(tried))


def _join(indices: Sequence[int]) -> str:
    return ", ".join(map(str, indices))


def _refusal(tried: list[tuple[str, Exception]]) -> str:
    """Why no way located the turns, and the fix: a template that can't render the row needs the row (or the
    template) fixed; one that renders it in a way no method can read needs generation markers."""
    raised = [e for _, e in tried if not isinstance(e, _NotLocated)]
    if raised and len(raised) == len(tried):
        return (
            f"the chat template can't render this conversation ({type(raised[0]).__name__}: {raised[0]}). Fix: give "
            "the row the shape the template expects (e.g. tool-call `arguments` as a JSON string for templates that "
            "concatenate them, a user turn before the first reply), or train with a template that renders it "
            "(`chat_template_path`)."
        )
    return "; ".join(f"{method}: {_describe(error)}" for method, error in tried) + f". {_FIX}"


def _try_ids(tokenizer, messages, kwargs) -> list[int]:
    try:
        return _encode(tokenizer, _render(tokenizer, messages, kwargs))[0]
    except Exception:  # noqa: BLE001 - the template can't render this row at all
        return []


def _reads_parts(tokenizer, kwargs) -> bool:
    """Whether the template renders text only from content parts (vision-language templates drop plain strings)."""
    if "probe-string" in _render(tokenizer, [{"role": "user", "content": "probe-string"}], kwargs):
        return False
    return "probe-part" in _render(
        tokenizer, [{"role": "user", "content": [{"type": "text", "text": "probe-part"}]}], kwargs
    )


@dataclass
class _Context:
    tokenizer: Any
    messages: list[dict]
    kwargs: dict
    key: tuple
    parts: bool
    trained: set[int]

    @cached_property
    def special(self) -> set[int]:
        return _cached(
            ("special", id(self.tokenizer), len(self.tokenizer)),
            lambda: special_token_ids(self.tokenizer),
            self.tokenizer,
        )

    def facts(self) -> _Facts:
        return _cached(("facts", *self.key), lambda: _probe(self), self.tokenizer)


def _probe(ctx: _Context) -> _Facts:
    """Read the assistant header and end-of-turn tokens off a probe conversation: user, assistant, user."""
    tokenizer, kwargs = ctx.tokenizer, ctx.kwargs
    texts = ("Probe question one", "Probe answer two", "Probe question three")
    probe = fit_content(
        [{"role": r, "content": t} for r, t in zip(("user", "assistant", "user"), texts, strict=True)], parts=ctx.parts
    )
    alone, prompt = _render(tokenizer, probe[:1], kwargs), _render(tokenizer, probe[:1], kwargs, True)
    generation = prompt[len(os.path.commonprefix([alone, prompt])) :]
    full = _render(tokenizer, probe, kwargs)
    a = full.find(texts[0])
    b = full.find(texts[1], a + 1)
    c = full.find(texts[2], b + 1)
    if min(a, b, c) < 0:
        raise _NotLocated("the template does not render the text of a plain user/assistant/user conversation")
    gap = full[a + len(texts[0]) : b]
    header = next(
        (generation[:k] for k in range(len(generation), 0, -1) if generation[:k].strip() and generation[:k] in gap), ""
    )
    ids, offsets = _encode(tokenizer, full)
    special = ctx.special
    gen_ids = [i for i in tokenizer(generation, add_special_tokens=False)["input_ids"] if i in special]
    stop = set(gen_ids[:1])
    j = bisect_right([s for s, _ in offsets], c) - 1  # the token holding the next user's text
    while j > 0 and (ids[j - 1] in special or not full[offsets[j - 1][0] : offsets[j - 1][1]].strip()):
        j -= 1
        if ids[j] in special:
            stop.add(ids[j])
            break
    k = bisect_left([s for s, _ in offsets], b + len(texts[1]))
    eot = []
    while k < len(ids) and ids[k] in special and ids[k] not in stop:
        eot.append(ids[k])
        k += 1
    openers = set(gen_ids[:1]) | {next((i for i in ids[k:j] if i in special), gen_ids[0] if gen_ids else -1)}
    return _Facts(header, tuple(eot), frozenset(stop), frozenset(openers))


def _by_markers(ctx: _Context) -> _Located:
    from trl.chat_template_utils import has_generation_markers

    if not _cached(
        ("markers", ctx.kwargs["chat_template"]), lambda: has_generation_markers(ctx.kwargs["chat_template"])
    ):
        raise _NotLocated("the template has no {% generation %} markers")
    return _marked(ctx, ctx.kwargs)


def _by_trl_template(ctx: _Context) -> _Located:
    training = _cached(
        ("trl", ctx.kwargs["chat_template"]), lambda: _training_template(ctx.tokenizer, ctx.kwargs["chat_template"])
    )
    if training is None:
        raise _NotLocated("TRL has no training copy of this template")
    located = _marked(ctx, {**ctx.kwargs, "chat_template": training})
    own = _encode(ctx.tokenizer, _render(ctx.tokenizer, ctx.messages, ctx.kwargs))[0]
    if own != located.ids:
        raise _NotLocated("TRL's training copy of this template renders this conversation differently")
    return located


def _training_template(tokenizer, template: str) -> str | None:
    from trl.chat_template_utils import get_training_chat_template

    if tokenizer.chat_template != template:
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = template
    return get_training_chat_template(tokenizer)


def _marked(ctx: _Context, kwargs: dict) -> _Located:
    """Turns from `{% generation %}` blocks: one block per assistant message, or every block when all are trained."""
    out = ctx.tokenizer.apply_chat_template(
        ctx.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    runs, start = [], None
    for pos, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = pos
        elif not bit and start is not None:
            runs.append((start, pos))
            start = None
    assistant = [i for i, m in enumerate(ctx.messages) if m.get("role") == "assistant"]
    if len(runs) == len(assistant):
        owners = assistant
    elif ctx.trained == set(assistant) and runs:
        owners = [assistant[-1]] * len(runs)  # every block is trained; only the last one may need an end of turn
    else:
        raise _NotLocated(f"the template has {len(runs)} generation blocks for {len(assistant)} assistant messages")
    special, turns, notes = ctx.special, [], []
    for owner, (start, end) in zip(owners, runs, strict=True):
        eot_start = end
        while eot_start > start and (
            ids[eot_start - 1] in special or not ctx.tokenizer.decode(ids[eot_start - 1]).strip()
        ):
            eot_start -= 1
        if not any(i in special for i in ids[eot_start:end]):
            eot_start = end  # no end-of-turn token inside the block: maybe right after it
            facts = _try_facts(ctx)
            if facts and facts.eot_ids and tuple(ids[end : end + len(facts.eot_ids)]) == facts.eot_ids:
                end += len(facts.eot_ids)
                notes.append(f"the generation block of message {owner} leaves out its end-of-turn token; trained too")
        turns.append((owner, start, eot_start, end))
    return _Located(ids, turns, notes)


def _try_facts(ctx: _Context) -> _Facts | None:
    try:
        return ctx.facts()
    except _NotLocated:
        return None


def _by_offsets(ctx: _Context) -> _Located:
    facts = ctx.facts()
    text = _render(ctx.tokenizer, ctx.messages, ctx.kwargs)
    ids, offsets = _encode(ctx.tokenizer, text)
    spans = message_spans(text, ctx.messages, facts.header)
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    turns, notes = [], []
    for i, message in enumerate(ctx.messages):
        if message.get("role") != "assistant":
            continue
        if spans[i] is None:
            raise _NotLocated(f"the text of assistant message {i} is not in the render (the template rewrites it)")
        region, text_start, text_end = spans[i]
        bound_char = next((s[0] for s in spans[i + 1 :] if s is not None), len(text))
        first, k, bound = bisect_right(ends, region), bisect_left(starts, text_end), bisect_left(starts, bound_char)
        eot_start, end = _turn_end(ctx, facts, ids, text, offsets, k, bound, text_end > text_start)
        if eot_start == end and message.get("tool_calls"):
            raise _NotLocated(f"assistant message {i} has tool calls but no end-of-turn token to bound them")
        reasoning = reasoning_text(message).strip()
        if reasoning and reasoning not in text[region:text_end]:
            notes.append(f"the template leaves the reasoning of message {i} out of the render: not trained")
        turns.append((i, first, eot_start, end))
    return _Located(ids, turns, notes, text, offsets)


def _turn_end(ctx, facts: _Facts, ids, text, offsets, k: int, bound: int, has_text: bool) -> tuple[int, int]:
    """`(eot_start, end)` of the turn whose text ends at token `k`: the special tokens right after the text, else
    those before the next turn's opening token, else the template's end-of-turn tokens; `(k, k)` when none."""
    special, stop = ctx.special, facts.stop_ids
    j = k
    while has_text and j < bound and ids[j] in special and ids[j] not in stop:
        j += 1
    if j > k:
        return k, j
    opener = next((p for p in range(k, bound) if ids[p] in facts.opener_ids), None)
    if opener is not None:
        while opener > k and ids[opener - 1] not in special and not text[slice(*offsets[opener - 1])].strip():
            opener -= 1
        e = opener
        while e > k and ids[e - 1] in special and ids[e - 1] not in stop:
            e -= 1
        if e < opener:
            return e, opener
    n = len(facts.eot_ids)
    at = next((p for p in range(k, bound - n + 1) if tuple(ids[p : p + n]) == facts.eot_ids), None) if n else None
    return (at, at + n) if at is not None else (k, k)


def _by_prefix_diff(ctx: _Context) -> _Located:
    tokenizer, messages, kwargs, special = ctx.tokenizer, ctx.messages, ctx.kwargs, ctx.special
    full = _encode(tokenizer, _render(tokenizer, messages, kwargs))[0]
    turns, prev_end = [], 0
    for i, message in enumerate(messages):
        upto = full if i == len(messages) - 1 else _encode(tokenizer, _render(tokenizer, messages[: i + 1], kwargs))[0]
        if full[: len(upto)] != upto:
            raise _NotLocated(
                f"the first {i + 1} messages render differently alone than inside the whole conversation"
            )
        if message.get("role") == "assistant":
            head = _encode(tokenizer, _render(tokenizer, messages[:i], kwargs, True))[0] if i else []
            if upto[: len(head)] != head or len(head) < prev_end:
                raise _NotLocated(f"the generation prompt before assistant message {i} is not a prefix of that turn")
            start, end = len(head), len(upto)
            while end > start and full[end - 1] not in special and not tokenizer.decode([full[end - 1]]).strip():
                end -= 1
            if end == start:
                raise _NotLocated(f"assistant message {i} renders to no tokens")
            eot_start = end
            while eot_start > start and full[eot_start - 1] in special:
                eot_start -= 1
            turns.append((i, start, eot_start, end))
        prev_end = len(upto)
    return _Located(full, turns)


_LOCATE = {MARKERS: _by_markers, TRL_TEMPLATE: _by_trl_template, OFFSETS: _by_offsets, PREFIX_DIFF: _by_prefix_diff}


def _assemble(ctx: _Context, located: _Located, method: str, train_eot: bool, ignore_index: int) -> ChatMask:
    """Labels from located turns; the final turn gets its end-of-turn token appended when the template leaves it off."""
    ids, notes = list(located.ids), list(located.notes)
    labels = [ignore_index] * len(ids)
    trained_turns = [t for t in located.turns if t[0] in ctx.trained]
    for _, start, eot_start, end in trained_turns:
        stop = end if train_eot else eot_start
        labels[start:stop] = ids[start:stop]
    appended = 0
    if train_eot and trained_turns:
        owner, start, eot_start, end = trained_turns[-1]
        if eot_start == end and owner == len(ctx.messages) - 1:
            tail = ctx.tokenizer.decode(ids[end:]) if end < len(ids) else ""
            facts = _try_facts(ctx)
            eot = list(facts.eot_ids) if facts and facts.eot_ids else [ctx.tokenizer.eos_token_id]
            if not tail.strip() and eot[0] is not None:
                appended = len(eot)
                ids += eot
                labels[end:] = ids[end : len(labels)]
                labels += eot
                notes.append(
                    f"the template ends the last reply without an end-of-turn token: {ctx.tokenizer.decode(eot)!r} appended"
                )
        bare = [t[0] for t in (trained_turns[:-1] if appended else trained_turns) if t[2] == t[3]]
        if bare:
            notes.append(f"assistant message {', '.join(map(str, bare))} has no end-of-turn token in the render")
    explain = lambda: _reasons(ctx, located, train_eot, appended)  # noqa: E731
    return ChatMask(ids, labels, None, method, "; ".join(notes) or None, explain)


def _reasons(ctx: _Context, located: _Located, train_eot: bool, appended: int) -> list[str]:
    n = len(located.ids)
    reasons = [TEMPLATE] * n
    text, offsets = located.text, located.offsets
    if text is None:
        try:
            text = _render(ctx.tokenizer, ctx.messages, ctx.kwargs)
            ids, offsets = _encode(ctx.tokenizer, text)
            text = text if ids == located.ids else None
        except Exception:  # noqa: BLE001 - reasons are a courtesy; the labels stand
            text = None
    if text is not None:
        starts, turn_ends = [s for s, _ in offsets], {t[0]: t[3] for t in located.turns}
        prev = 0
        for i, (message, span) in enumerate(zip(ctx.messages, message_spans(text, ctx.messages), strict=True)):
            if message.get("role") == "assistant":
                prev = max(prev, turn_ends.get(i, prev))
                continue
            if span is None:
                continue
            end = bisect_left(starts, span[2])
            while end < n and located.ids[end] in ctx.special:
                end += 1
            reasons[prev:end] = [_role_reason(message.get("role"))] * max(0, end - prev)
            prev = max(prev, end)
    for owner, start, eot_start, end in located.turns:
        trained = owner in ctx.trained
        for j in range(start, end):
            if j >= eot_start and not (trained and train_eot):
                reasons[j] = END_OF_TURN if trained else EARLIER_ASSISTANT
            else:
                reasons[j] = TRAINED if trained else EARLIER_ASSISTANT
    return reasons + [TRAINED] * appended
