"""Assistant-only masks for conversations under any chat template, generation markers or not.

Three ways to find each assistant turn (`METHODS`) are tried in order; the first that verifies on the row wins: the
template's `{% generation %}` markers; content offsets (each reply's text found in one render, from the assistant header
to the end-of-turn token, both read once per template off a probe); the prefix diff. A row is refused only when none
verifies (`ChatMask.problem`, with the fix). TRL's training copies of the templates it knows are not a way: they train
headers and the newline after the stop, which the rule below doesn't (the tests compare with them).

This module locates replies; where a reply starts (after what the generation prompt holds) and which stop token ends it
is one rule for every way, in `end_of_turn`: each way hands its turns to `end_of_turn.head_end` and `settle`, with the
run's stop set (`end_of_turn.Stops`).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import groupby
from typing import Any

from ..hints import Tokenizer
from ..masking import IGNORE_INDEX
from ..provenance import EARLIER_ASSISTANT, EMPTY_COMPLETION, END_OF_TURN, MERGED_HEADER, SYSTEM, TEMPLATE, TOOL, USER
from .controls import EMPTIED, Plan, apply_plan, plan
from .conversations import fit_content, is_empty_reply, message_spans, reads_parts, reasoning_text, unknown_roles
from .end_of_turn import (
    GIVEN,
    NO_FACTS,
    TEMPLATE_EOT,
    TOKENIZER_EOS,
    TRAINED,
    Stops,
    TurnFacts,
    ambiguous_end,
    cached,
    encode,
    final_stop,
    given_stops,
    head_end,
    is_trained,
    no_stop,
    probe,
    render,
    settle,
    special_token_ids,
    trailing_start,
    turn_end,
)

__all__ = ["METHODS", "ChatMask", "chat_labels", "given_stops", "is_trained", "special_token_ids"]

#: The reasons of a conversation's tokens (see `ChatMask.reasons`) are `provenance`'s: a new one goes there.
_ROLE_REASONS = {"system": SYSTEM, "user": USER, "tool": TOOL, "ipython": TOOL, "function": TOOL}
#: Row reason for a conversation where no token of the stop set can end a reply to train.
NO_STOP = "no stop token"
#: The ways to locate assistant turns, in the order they are tried.
MARKERS, OFFSETS, PREFIX_DIFF = "generation markers", "offsets", "prefix diff"
METHODS = (MARKERS, OFFSETS, PREFIX_DIFF)


class _NotLocated(Exception):  # one way to locate the turns does not verify on this row; the message says why
    pass


class _NoStop(Exception):  # the turns are located, but no stop token can end one: the row is refused (no other way)
    pass


@dataclass
class ChatMask:
    """Token ids of a rendered conversation, their labels, and how the assistant turns were found: `method` (one of
    `METHODS`), `note` (an appended end-of-turn token, reasoning the template leaves out, ...), `problem` (why
    nothing is trained). `reasons`, one per token (`TRAINED`, `USER`, `END_OF_TURN`, ...), is worked out when read."""

    input_ids: list[int]
    labels: list[int]
    problem: str | None = None
    method: str | None = None
    note: str | None = None
    merged: int = 0  # trained turns whose first reply token merged with the header (that token is not trained)
    explain: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)
    weights: list[float] | None = None  # per token, when a message carries a weight (`message_weight_key`)

    @cached_property
    def reasons(self) -> list[str]:
        return self.explain() if self.explain is not None else [TEMPLATE] * len(self.input_ids)

    @property
    def row_reason(self) -> str:
        """For the pre-flight audit: '' when trained, else `empty completion: ...` or `chat turns not located: ...`."""
        problem = self.problem or ""
        kept = not problem or problem.startswith((EMPTY_COMPLETION, EMPTIED))
        return problem if kept else f"chat turns not located: {problem}"


@dataclass
class _Located:
    ids: list[int]
    turns: list[tuple[int, int, int, int]]  # (message, start, eot_start, end); end-of-turn tokens: [eot_start, end)
    notes: list[str] = field(default_factory=list)
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None
    merged: list[int] = field(default_factory=list)  # tokens holding both header and reply bytes (not trained)


def chat_labels(
    tokenizer: Tokenizer,
    messages: Sequence[dict],
    *,
    assistant_turns: str = "all",
    train_eot: bool = True,
    ignore_index: int = IGNORE_INDEX,
    trainable_from: int = 0,
    methods: Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | Mapping[int, str] | None = None,
    controls: Any = None,
    where: str = "A conversation",
    **template_kwargs: Any,
) -> ChatMask:
    """Labels that train the assistant turns of `messages` (`[{"role", "content"}, ...]`, see
    `conversations.to_messages`) only, under the tokenizer's chat template or `chat_template=`.

    `assistant_turns` is `"all"` or `"last"`; `train_eot` (`True`/`"turn"`, `False`/`"none"`, `"last"`, `"all"`)
    trains each trained turn's end-of-turn token (inserted after a final reply the template leaves without one), none,
    the final one's or every one; `controls` (`controls.ChatControls`) and the messages' `train`/`weight` keys choose
    what trains (errors name the row as `where`); messages before `trainable_from` are context (prompt/completion rows
    pass `len(prompt)`); `methods` are the ways to try, in order (default `METHODS`); `stop_token_ids` are the ids
    that end generation (the model's `generation_config.eos_token_id`; a mapping gives each id's source), to which the
    tokenizer's eos is added; `None` means the tokenizer's eos and the template's end-of-turn tokens. `template_kwargs`
    go to `apply_chat_template` (`tools`, `enable_thinking`, ...). An empty reply to train is skipped; when nothing can
    be trained, every label is `ignore_index` and `problem` says why (`row_reason` for the pre-flight audit).
    """
    if assistant_turns not in ("all", "last"):
        raise ValueError(f"`assistant_turns` must be 'all' or 'last', got {assistant_turns!r}.")
    template = tokenizer.get_chat_template(template_kwargs.pop("chat_template", None), template_kwargs.get("tools"))
    options = {k: v for k, v in template_kwargs.items() if k != "tools"}  # rows' own tools: one probe for all
    key = (id(tokenizer), len(tokenizer), template, json.dumps(options, sort_keys=True, default=str))
    kwargs = {**template_kwargs, "chat_template": template}
    parts = cached(("parts", *key), lambda: reads_parts(lambda m: render(tokenizer, m, kwargs)), tokenizer)
    todo = plan(messages, controls, train_eot, where, assistant_turns=assistant_turns, trainable_from=trainable_from)
    messages = fit_content(todo.messages, parts=parts)
    chosen = [i for i in todo.chosen if messages[i].get("role") == "assistant"]
    empty = [i for i in chosen if is_empty_reply(messages[i])]
    given = dict(stop_token_ids) if isinstance(stop_token_ids, Mapping) else stop_token_ids
    given = None if given is None else given if isinstance(given, dict) else dict.fromkeys(given, GIVEN)
    ctx = _Context(tokenizer, messages, kwargs, key, parts, {i for i in chosen if i not in empty}, given)
    ctx.plan, todo.chosen = todo if todo.active else None, [i for i in todo.chosen if i not in empty]
    tried: list[tuple[str, Exception]] = []
    which = ", ".join(map(str, empty))
    if ctx.trained and (ambiguous := ambiguous_end(tokenizer, ctx.facts(required=False), template)):
        ids = encode(tokenizer, render(tokenizer, messages, kwargs))[0]
        return ChatMask(ids, [ignore_index] * len(ids), ambiguous)
    for method in (methods or METHODS) if ctx.trained or ctx.plan and todo.chosen else ():
        try:
            mask = _assemble(ctx, _LOCATE[method](ctx), method, todo.mode != "none", ignore_index)
        except _NoStop as error:  # every way finds the same turn ends: no other way can help
            ids = encode(tokenizer, render(tokenizer, messages, kwargs))[0]
            return ChatMask(ids, [ignore_index] * len(ids), f"{NO_STOP}: {error}", method)
        except Exception as error:  # noqa: BLE001 - jinja, type and value errors from templates all fall through
            tried.append((method, error))
            continue
        if empty:
            mask.note = "; ".join(filter(None, [mask.note, f"empty assistant reply (message {which}) skipped"]))
        return mask
    try:
        ids, unrenderable = encode(tokenizer, render(tokenizer, messages, kwargs))[0], None
    except Exception as error:  # noqa: BLE001 - the template can't render this row at all
        ids, unrenderable = [], error
    empty_reply = f"{EMPTY_COMPLETION}: the assistant reply to train (message {which}) has no content"
    nothing = f"{EMPTIED}: no message is left to train" if ctx.plan else "no assistant turn to train"
    problem = _refusal(tried, unrenderable) if ctx.trained or tried else empty_reply if empty else nothing
    return ChatMask(ids, [ignore_index] * len(ids), problem + unknown_roles(messages, template))


def _refusal(tried: list[tuple[str, Exception]], unrenderable: Exception | None) -> str:
    """What blocks each way, and the fix: make the row renderable, or give the template generation markers."""
    if unrenderable is not None:
        return (
            f"the chat template can't render this conversation ({type(unrenderable).__name__}: {unrenderable}). Fix: "
            "give the row the shape the template expects (e.g. tool-call `arguments` as a JSON string where it "
            "concatenates them, a user turn before the first reply), or train with a template that renders it "
            "(`chat_template_path`)."
        )
    said = "; ".join(f"{m}: {e if isinstance(e, _NotLocated) else f'{type(e).__name__}: {e}'}" for m, e in tried)
    return said + (
        ". Fix: pass a chat template whose assistant output is wrapped in {% generation %} ... {% endgeneration %} "
        "(`chat_template_path`), or drop such rows with `masked_row_policy='drop'`."
    )


@dataclass
class _Context:
    tokenizer: Any
    messages: list[dict]
    kwargs: dict
    key: tuple
    parts: bool
    trained: set[int]
    given: dict[int, str] | None = None
    plan: Plan | None = None  # the chat controls, when any is set (`controls.plan`)

    @cached_property
    def stops(self) -> Stops:
        """The run's stop set: the given ids and the tokenizer's eos; by default the eos and the template's closing."""
        eos = self.tokenizer.eos_token_id
        sources = {eos: TOKENIZER_EOS} if eos is not None else {}
        if self.given is None:
            sources |= {i: TEMPLATE_EOT for i in self.facts(required=False).closing if i not in sources}
        else:
            sources = {**sources, **self.given}
        return Stops(frozenset(sources), tuple(sources.items()), lenient=self.given is None)

    @cached_property
    def special(self) -> set[int]:
        return cached(("special", *self.key[:2]), lambda: special_token_ids(self.tokenizer), self.tokenizer)

    def facts(self, required: bool = True) -> TurnFacts:
        try:
            compute = lambda: probe(self.tokenizer, self.kwargs, self.parts, self.special)  # noqa: E731
            return cached(("facts", *self.key), compute, self.tokenizer)
        except Exception as error:
            if required:
                raise _NotLocated(f"the template can't render a user/assistant/user probe ({error})") from error
            return NO_FACTS

    def blank(self, ids: list[int]) -> Callable[[int], bool]:
        """`blank(i)`: token `i` of `ids` is whitespace, not a special token."""
        return lambda i: ids[i] not in self.special and not self.tokenizer.decode([ids[i]]).strip()

    def trailing_start(self, ids: list[int], start: int, end: int) -> int:
        return trailing_start(self.special, self.tokenizer.decode, ids, start, end)


def _by_markers(ctx: _Context) -> _Located:
    """Turns from `{% generation %}` blocks: one block per assistant message, or any number when all are trained."""
    from trl.chat_template_utils import has_generation_markers

    if not has_generation_markers(ctx.kwargs["chat_template"]):
        raise _NotLocated("the template has no {% generation %} markers")
    out = ctx.tokenizer.apply_chat_template(
        ctx.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **ctx.kwargs
    )
    ids, runs, pos = list(out["input_ids"]), [], 0
    for bit, group in groupby(out["assistant_masks"]):
        size = len(list(group))
        runs += [(pos, pos + size)] if bit else []
        pos += size
    assistant = [i for i, m in enumerate(ctx.messages) if m.get("role") == "assistant"]
    if len(runs) != len(assistant) and not (runs and ctx.trained == set(assistant)):
        raise _NotLocated(f"the template has {len(runs)} generation blocks for {len(assistant)} assistant messages")
    owners = assistant if len(runs) == len(assistant) else [assistant[-1]] * len(runs)
    text = render(ctx.tokenizer, ctx.messages, ctx.kwargs)
    rendered, offsets = encode(ctx.tokenizer, text)
    located = _Located(ids, [], [], text, offsets) if rendered == ids else _Located(ids, [])
    for n, (owner, (start, end)) in enumerate(zip(owners, runs, strict=True)):
        bound = runs[n + 1][0] if n + 1 < len(runs) else len(ids)
        _settle(ctx, located, owner, start, ctx.trailing_start(ids, start, end), (start, end), bound)
        if located.turns[-1][3] > end:
            located.notes.append(f"the generation block of message {owner} leaves out its stop token: trained too")
    return located


def _by_offsets(ctx: _Context) -> _Located:
    facts = ctx.facts()
    text = render(ctx.tokenizer, ctx.messages, ctx.kwargs)
    ids, offsets = encode(ctx.tokenizer, text)
    spans = message_spans(text, ctx.messages, facts.header)
    starts = [s for s, _ in offsets]
    located = _Located(ids, [], [], text, offsets)
    for i, message in ((i, m) for i, m in enumerate(ctx.messages) if m.get("role") == "assistant"):
        if spans[i] is None:
            raise _NotLocated(f"the text of assistant message {i} is not in the render (the template rewrites it)")
        region, text_start, text_end = spans[i]
        bound = bisect_left(starts, next((s[0] for s in spans[i + 1 :] if s is not None), len(text)))
        k = bisect_left(starts, text_end)
        found = turn_end(ctx.special, facts, ids, text, offsets, k, bound, text_end > text_start)
        start = bisect_right([e for _, e in offsets], region)
        if not _settle(ctx, located, i, start, k, found, bound) and message.get("tool_calls"):
            raise _NotLocated(f"assistant message {i} has tool calls but no end-of-turn token to bound them")
        if (reasoning := reasoning_text(message).strip()) and reasoning not in text[region:text_end]:
            located.notes.append(f"the template leaves the reasoning of message {i} out of the render: not trained")
    return located


def _by_prefix_diff(ctx: _Context) -> _Located:
    tokenizer, messages, kwargs = ctx.tokenizer, ctx.messages, ctx.kwargs
    full, prev_end = encode(tokenizer, render(tokenizer, messages, kwargs))[0], 0
    located = _Located(full, [])
    for i, message in enumerate(messages):
        upto = full if i == len(messages) - 1 else encode(tokenizer, render(tokenizer, messages[: i + 1], kwargs))[0]
        if full[: len(upto)] != upto:
            raise _NotLocated(f"the first {i + 1} messages render differently alone than inside the conversation")
        if message.get("role") == "assistant":
            head = encode(tokenizer, render(tokenizer, messages[:i], kwargs, True))[0] if i else []
            if upto[: len(head)] != head or len(head) < prev_end:
                raise _NotLocated(f"the generation prompt before assistant message {i} is not a prefix of that turn")
            k = ctx.trailing_start(full, len(head), len(upto))  # the reply's own tokens end here
            _settle(ctx, located, i, len(head), k, (k, len(upto)), len(upto))
        prev_end = len(upto)
    return located


def _settle(ctx: _Context, located: _Located, owner: int, start: int, k: int, found, bound: int) -> bool:
    """One located turn through the rule: its start moved past what the generation prompt holds (a token the reply
    shares with the header is not trained), its end at its stop token (`end_of_turn.settle`). False: no stop."""
    ids, offsets, facts = located.ids, located.offsets, ctx.facts(required=False)
    if offsets is not None and start < len(ids):
        head = head_end(located.text, offsets[start][0], facts)
        first = next((j for j in range(start, k) if offsets[j][0] >= head), k)
        if first > start and offsets[first - 1][1] > head and owner in ctx.trained:
            located.merged.append(first - 1)
        start = first
    eot_start, end = settle(ids, k, found, bound, facts, ctx.blank(ids), ctx.stops)
    located.turns.append((owner, start, eot_start, end))
    return eot_start < end


_LOCATE = {MARKERS: _by_markers, OFFSETS: _by_offsets, PREFIX_DIFF: _by_prefix_diff}


def _assemble(ctx: _Context, located: _Located, method: str, train_eot: bool, ignore_index: int) -> ChatMask:
    """Labels from located turns; a final reply without a stop token gets one right after it, trained."""
    ids, notes, stops = list(located.ids), list(located.notes), ctx.stops
    labels = [ignore_index] * len(ids)
    trained = [t for t in located.turns if t[0] in ctx.trained]
    if any(start >= end for _, start, _, end in trained):
        raise _NotLocated("an assistant turn to train renders to no tokens")
    for _, start, eot_start, end in trained:
        labels[start : end if train_eot else eot_start] = ids[start : end if train_eot else eot_start]
    applied = apply_plan(ctx, located, labels, ignore_index) if ctx.plan else None
    labels = applied.labels if applied else labels
    trained = trained[-1:] if applied and ctx.plan.mode == "last" else trained
    inserted, bare = None, [t for t in trained if t[2] == t[3]] if train_eot else []
    tail = ids[bare[-1][3] :] if bare else []
    if bare and bare[-1][0] == len(ctx.messages) - 1 and not any(stops.ends(i) for i in tail):
        stop = final_stop(ctx.facts(required=False), stops, ctx.tokenizer.eos_token_id)
        if stop is not None:  # the stop after the final reply (and any whitespace after it), before what follows
            end = len(ids) if not ctx.tokenizer.decode(tail).strip() else bare[-1][3]
            labels[bare[-1][3] : end] = ids[bare[-1][3] : end]
            inserted, bare = (end, stop), bare[:-1]
            ids, labels = ids[:end] + [stop] + ids[end:], labels[:end] + [stop] + labels[end:]
            notes.append(
                f"the last reply has no end-of-turn token in the render: {ctx.tokenizer.decode([stop])!r} appended"
            )
    if bare and not stops.lenient:
        raise _NoStop(no_stop(ctx.tokenizer, located.ids, bare[0][2], bare[0][0], stops))
    if bare:
        notes.append(f"assistant message {', '.join(str(t[0]) for t in bare)} has no end-of-turn token in the render")
    applied = applied.inserted(inserted, ctx.plan.weights[trained[-1][0]] if inserted else None) if applied else None
    explain = lambda: (applied.explain if applied else list)(_reasons(ctx, located, train_eot, inserted))  # noqa: E731
    problem, weights = (applied.problem, applied.weights) if applied else (None, None)
    return ChatMask(ids, labels, problem, method, "; ".join(notes) or None, len(located.merged), explain, weights)


def _reasons(ctx: _Context, located: _Located, train_eot: bool, inserted: tuple[int, int] | None) -> list[str]:
    """Why each token is trained or not: the turn whose text it holds, the stop token that ends it (and where that
    stop comes from); the template's own tokens are `TEMPLATE`."""
    ids, text, offsets = located.ids, located.text, located.offsets
    reasons = [TEMPLATE] * len(ids)
    if text is None:  # the prefix diff: render the text once more
        try:
            text = render(ctx.tokenizer, ctx.messages, ctx.kwargs)
            rendered, offsets = encode(ctx.tokenizer, text)
        except Exception:  # noqa: BLE001 - reasons are a courtesy; the labels stand
            rendered = None
        text = text if rendered == ids else None
    spans = message_spans(text, ctx.messages) if text is not None else [None] * len(ctx.messages)
    for message, span in zip(ctx.messages, spans, strict=True):
        if span is not None and message.get("role") != "assistant":
            a, b = bisect_right([e for _, e in offsets], span[1]), bisect_left([s for s, _ in offsets], span[2])
            reasons[a:b] = [_ROLE_REASONS.get(message["role"], f"{message['role']} turn")] * (b - a)
    for owner, start, eot_start, end in located.turns:
        if owner not in ctx.trained:
            reasons[start:end] = [EARLIER_ASSISTANT] * (end - start)
            continue
        cut = end if train_eot else eot_start
        reasons[start:end] = [TRAINED] * (cut - start) + [END_OF_TURN] * (end - cut)
        if cut == end and end > eot_start and ctx.stops.ends(ids[end - 1]):
            reasons[end - 1] = ctx.stops.reason(ids[end - 1])
    for at in located.merged:
        reasons[at] = MERGED_HEADER
    if inserted is not None:
        at, stop = inserted
        reasons.insert(at, ctx.stops.reason(stop))
    return reasons
