"""End of turn: what a chat template prints around an assistant reply, and the one rule for which of it is trained.

The rule, for every template and every way `chat` locates replies:

- trained: what the model must generate to end its reply, i.e. the end-of-turn/eos token(s) the template prints
  right after the reply's content, even after a space (Llama-2: `' ' + content + ' ' + eos_token`);
- never trained: the next turn's bos, header or separator, even when it is the same token as the eos (GPT-2-style
  bos == eos == `<|endoftext|>`; Mistral/Llama-2 `<s>` after `</s>`).

Why: at inference the model generates up to its stop token and the prompt builder writes the next turn; a next-turn
token that is trained teaches the model to open a turn it will never write (or, with bos == eos, to stop twice), a
stop token left out teaches it never to stop.

Which tokens close a reply is read once per template (`TurnFacts.closing`) off a probe conversation: user, assistant,
user. A token printed after the reply belongs to the reply when the template prints it also when the conversation
ends with that reply; what only appears once another turn follows belongs to that turn. A template that closes a
reply only when another turn follows (its last reply bare) has the tokens it prints right after the content, up to
the next turn's opening. When that opening is all there is and it is the eos (bos == eos, printed only before a
turn), the template doesn't say whether the model must generate it: `TurnFacts.ambiguous` says why, and such rows
are refused.
"""

from __future__ import annotations

import os
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..provenance import GENERATION_CONFIG, GIVEN, STOP_TOKEN, TEMPLATE_EOT, TOKENIZER_EOS, TRAINED, is_trained
from .conversations import fit_content, reads_parts

__all__ = [
    "GENERATION_CONFIG",
    "GIVEN",
    "STOP_TOKEN",
    "Stops",
    "TEMPLATE_EOT",
    "TOKENIZER_EOS",
    "TRAINED",
    "TurnFacts",
    "ambiguous_end",
    "cached",
    "encode",
    "final_stop",
    "given_stops",
    "head_end",
    "is_trained",
    "no_stop",
    "probe",
    "render",
    "settle",
    "special_token_ids",
    "template_closing",
    "turn_end",
]

_PROBE_ROLES = ("user", "assistant", "user")
_PROBE_TEXTS = ("Probe question one", "Probe answer two", "Probe question three")
_CACHE: dict[tuple, tuple[Callable[[], Any], Any]] = {}  # what a template does, read once (see `cached`)


@dataclass(frozen=True)
class TurnFacts:
    """What a template does around assistant replies, read once off a probe conversation."""

    header: str  # the text every assistant turn starts with (the generation prompt's part that turns render)
    closing: tuple[int, ...]  # the end-of-turn tokens right after a reply's content: trained (empty when none)
    stop_ids: frozenset[int]  # special tokens of turn headers (and a bos printed before turns): never trained
    opener_ids: frozenset[int]  # special tokens that open a turn (the first of a user's or an assistant's header)
    ambiguous: str | None = None  # why the rule can't tell the reply's stop from the next turn's opening
    generation: str = ""  # the whole generation prompt (Qwen3 without thinking: the header and an empty think block)


NO_FACTS = TurnFacts("", (), frozenset(), frozenset())

#: Where a stop token comes from (`Stops.sources`: `GENERATION_CONFIG`, `TOKENIZER_EOS`, `TEMPLATE_EOT`, `GIVEN`),
#: shown in per-token reasons as `STOP_TOKEN` with the source; these and `TRAINED` are `provenance`'s reasons.


@dataclass(frozen=True)
class Stops:
    """The stop set of a run: the token ids that end generation, each with where it came from (`sources`).

    `lenient` is the default set, when no stop set is given: the tokenizer's eos and the template's end-of-turn
    tokens, where a turn whose end holds neither keeps the special tokens the template prints there (as before)."""

    ids: frozenset[int]
    sources: tuple[tuple[int, str], ...] = ()
    lenient: bool = False

    def ends(self, token: int) -> bool:
        return token in self.ids

    def reason(self, token: int) -> str:
        return STOP_TOKEN.format(dict(self.sources).get(token, TEMPLATE_EOT))


def cached(key: tuple, compute: Callable[[], Any], owner: Any = None) -> Any:
    """`compute()` once per key (and live `owner`, the tokenizer); an exception is remembered and raised again."""
    hit = _CACHE.get(key)
    if hit is None or hit[0]() is not owner:
        if len(_CACHE) > 256:
            _CACHE.clear()
        try:
            value = compute()
        except Exception as error:  # noqa: BLE001 - a template may raise anything
            value = error
        hit = _CACHE[key] = (weakref.ref(owner) if owner is not None else lambda: None, value)
    if isinstance(hit[1], Exception):
        raise hit[1]
    return hit[1]


def special_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens, including added special tokens such as `<|im_end|>` the tokenizer doesn't name."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def render(tokenizer, messages, kwargs, prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=prompt, **kwargs)


def probe(tokenizer, kwargs: dict, parts: bool, special: set[int]) -> TurnFacts:
    """Read the assistant header, the turn openers and the end-of-turn tokens off user, assistant, user.

    Raises `LookupError` when the template does not render the probe's text."""
    kwargs = {k: v for k, v in kwargs.items() if k != "tools"}
    messages = [{"role": r, "content": t} for r, t in zip(_PROBE_ROLES, _PROBE_TEXTS, strict=True)]
    messages = fit_content(messages, parts=parts)
    alone, prompt = render(tokenizer, messages[:1], kwargs), render(tokenizer, messages[:1], kwargs, True)
    generation = prompt[len(os.path.commonprefix([alone, prompt])) :]
    full = render(tokenizer, messages, kwargs)
    a = full.find(_PROBE_TEXTS[0])
    b = full.find(_PROBE_TEXTS[1], a + 1)
    c = full.find(_PROBE_TEXTS[2], b + 1)
    if min(a, b, c) < 0:
        raise LookupError("the template does not render the text of a user/assistant/user conversation")
    gap = full[a + len(_PROBE_TEXTS[0]) : b]
    header = next((generation[:k] for k in range(len(generation), 0, -1) if generation[:k] in gap), "")
    ids, offsets = encode(tokenizer, full)
    starts = [s for s, _ in offsets]
    opening = [i for i in tokenizer(generation, add_special_tokens=False)["input_ids"] if i in special]
    opening = [next((i for i in opening if i in ids[: bisect_left(starts, a)]), opening[0])] if opening else []
    stop, j = set(opening), bisect_right(starts, c) - 1  # j: the token holding the next user's text
    while j > 0 and (ids[j - 1] in special or not full[slice(*offsets[j - 1])].strip()):
        j -= 1
        if ids[j] in special:  # the last special token of the user's header
            stop.add(ids[j])
            break
    head = [i for i in ids[bisect_left(starts, a + len(_PROBE_TEXTS[0])) : bisect_left(starts, b)] if i in special]
    if head and alone.endswith(tokenizer.decode(head[-1:])):  # GLM-Edge prints `<|assistant|>` after every render
        stop.add(head[-1])  # the assistant header's token, also after the last message: never a reply's end
    bos = tokenizer.bos_token_id
    if bos is not None and bos in ids[bisect_left(starts, b + len(_PROBE_TEXTS[1])) : j + 1]:
        stop.add(bos)  # a bos printed between turns opens the next one: never part of a reply's end
    k = after = bisect_left(starts, b + len(_PROBE_TEXTS[1]))  # k: the first token after the reply's text
    while after < len(ids) and ids[after] in special and ids[after] not in stop:
        after += 1
    openers = set(opening) | {next((i for i in ids[after:j] if i in special), -1)}  # assistant's and user's
    closing, ambiguous = _closing(tokenizer, kwargs, messages, full, (ids, offsets), k, special, stop)
    cut = header.find(tokenizer.decode(opening)) if opening else -1  # assistant turns start at the opening token
    head = header[cut:] if cut >= 0 else header  # DeepSeek's `<｜Assistant｜>` is an added token, not a special one
    whole = generation[generation.find(head) :] if head and head in generation else head
    facts = TurnFacts(head, closing, frozenset(stop), frozenset(openers), ambiguous, whole)
    return facts


def _closing(tokenizer, kwargs, messages, full, encoded, k, special, stop) -> tuple[tuple[int, ...], str | None]:
    """The end-of-turn tokens of the probe's reply, whose text ends before token `k` of `full` (see module doc)."""
    ids, offsets = encoded
    p = k
    while p < len(ids) and ids[p] not in special and not full[slice(*offsets[p])].strip():
        p += 1  # Llama-2 writes a space between the reply and its eos
    end = p
    while end < len(ids) and ids[end] in special:
        end += 1
    run = ids[p:end]
    if not run:
        return (), None
    reply_end = full.find(_PROBE_TEXTS[1], full.find(_PROBE_TEXTS[0])) + len(_PROBE_TEXTS[1])
    try:  # the same reply, last: what the template prints after it then is the reply's own
        last = render(tokenizer, messages[:2], kwargs)
        at = last.rfind(_PROBE_TEXTS[1])
        tail = last[at + len(_PROBE_TEXTS[1]) :] if at >= 0 else None
    except Exception:  # noqa: BLE001 - a template may refuse to end on a reply
        tail = None
    if tail is not None:
        shared = reply_end + len(os.path.commonprefix([tail, full[reply_end:]]))
        own = [i for n, i in enumerate(run) if offsets[p + n][1] <= shared]
        if own:
            return tuple(own), None
    cut = next((n for n, i in enumerate(run) if i in stop), len(run))
    if cut:
        return tuple(run[:cut]), None
    eos = tokenizer.eos_token_id
    if eos is not None and eos in run:
        return (), (
            f"prints {tokenizer.decode([eos])!r} after a reply only as the opening of the next turn (the "
            "token is both its bos and its eos), so whether the model must generate it to end its reply is "
            "ambiguous"
        )
    return (), None


def settle(
    ids: list[int], k: int, found: tuple[int, int], bound: int, facts: TurnFacts, blank, stops: Stops
) -> tuple[int, int]:
    """The rule applied to one reply whose own tokens end before token `k`: `(eot_start, end)`, the tokens that end
    it, trained with it; `(k, k)` when no stop token can end it. `found` is what the way that located the reply
    proposes; `bound` the first token of the next message's text; `blank(i)`: token `i` is whitespace and not special.

    Exactly one stop token is trained: the first token after the reply (past blank tokens, which are trained with it)
    when it is in `stops`, be it the template's closing or the token that opens the next message (GLM's `<|user|>`);
    else the first stop before the next message's text and before any token that opens a turn (a tool call between
    the text and the stop is trained with the reply; GLM's `<|observation|>` after a tool call). Nothing after it is
    trained, and no token that is not a stop."""
    p = k
    while p < bound and blank(p):
        p += 1
    if p < len(ids) and stops.ends(ids[p]):
        return k, p + 1
    for q in range(k, bound):
        if stops.ends(ids[q]):
            return q, q + 1
        if ids[q] in facts.stop_ids:
            break
    start, end = found
    if stops.lenient:  # the default set: the special tokens the way proposes, without any that opens a turn
        return start, next((q for q in range(start, end) if ids[q] in facts.stop_ids), end)
    return k, k


def head_end(text: str, pos: int, facts: TurnFacts) -> int:
    """Where the reply's own text starts, for a turn located at character `pos` of `text`: after the generation
    prompt (or the shorter assistant header earlier turns render) that covers `pos`, else `pos`."""
    for header in sorted({facts.generation, facts.header} - {""}, key=len, reverse=True):
        for at in range(max(0, pos - len(header)), pos + 1):
            if text.startswith(header, at):
                return max(pos, at + len(header))
    return pos


def turn_end(special, facts: TurnFacts, ids, text, offsets, k: int, bound: int, has_text: bool) -> tuple[int, int]:
    """`(eot_start, end)` proposed for the turn whose text ends at token `k`: the special tokens right after the
    text, else those before the next turn's opening token, else the template's closing tokens; `(k, k)` when none.
    `settle` decides from it."""
    j = k
    while has_text and j < bound and ids[j] in special and ids[j] not in facts.stop_ids:
        j += 1
    if j > k:
        return k, j
    opener = next((p for p in range(k, bound) if ids[p] in facts.opener_ids), None)
    if opener is not None:
        while opener > k and ids[opener - 1] not in special and not text[slice(*offsets[opener - 1])].strip():
            opener -= 1
        e = opener
        while e > k and ids[e - 1] in special and ids[e - 1] not in facts.stop_ids:
            e -= 1
        if e < opener:
            return e, opener
    n = len(facts.closing)
    at = next((p for p in range(k, bound - n + 1) if tuple(ids[p : p + n]) == facts.closing), None) if n else None
    return (at, at + n) if at is not None else (k, k)


def trailing_start(special, decode, ids: list[int], start: int, end: int) -> int:
    """Where the end-of-turn tokens closing `ids[start:end]` start: its trailing special and blank tokens, if one of
    them is special (`end` otherwise)."""
    e = end
    while e > start and (ids[e - 1] in special or not decode([ids[e - 1]]).strip()):
        e -= 1
    return e if special.intersection(ids[e:end]) else end


def given_stops(ids: Sequence[int] | None, sources: Sequence[str] = ()) -> dict[int, str] | None:
    """`{id: source}` for `chat_labels(stop_token_ids=...)` from `MaskingOptions.stop_token_ids`/`stop_sources`."""
    return None if ids is None else dict(zip(ids, list(sources) or [GIVEN] * len(ids), strict=True))


def final_stop(facts: TurnFacts, stops: Stops, eos: int | None) -> int | None:
    """The stop to train after a final reply the template leaves without one: the template's closing, else the eos
    (GLM-4.5, whose replies end with the next message's opener, ends its last reply with `<|endoftext|>`)."""
    return next((i for i in facts.closing if stops.lenient or stops.ends(i)), eos)


def no_stop(tokenizer, ids: list[int], k: int, owner: int, stops: Stops) -> str:
    """The refusal of a row where no stop token ends assistant message `owner`, whose reply ends before token `k`."""
    decode = tokenizer.decode
    after = decode(ids[k : k + 3]) if k < len(ids) else "nothing"
    name = getattr(tokenizer, "name_or_path", "") or ""
    names = ", ".join(f"{decode([i])!r} ({source})" for i, source in stops.sources)
    return (
        f"the chat template{f' of {name!r}' if name else ''} prints {after!r} after assistant message {owner}, and "
        f"none of it is in the stop set [{names}], so the model would never learn to end that reply. Fix: add the "
        "token that ends a turn to `stop_token_ids` (or to the model's `generation_config.eos_token_id`), end each "
        "reply with a stop token in the template (`chat_template_path`), or train only the last reply "
        "(`assistant_turns='last'`)."
    )


def template_closing(tokenizer, **template_kwargs) -> list[int]:
    """The end-of-turn tokens the chat template prints right after a reply (empty without a template, or when the
    template can't render a user/assistant/user probe)."""
    try:
        kwargs = {
            **template_kwargs,
            "chat_template": tokenizer.get_chat_template(template_kwargs.get("chat_template")),
        }
        parts = reads_parts(lambda m: render(tokenizer, m, kwargs))
        return list(probe(tokenizer, kwargs, parts, special_token_ids(tokenizer)).closing)
    except Exception:  # noqa: BLE001 - no template, or one that raises: nothing to add
        return []


def ambiguous_end(tokenizer, facts: TurnFacts, template: str) -> str | None:
    """The refusal for a template whose end of turn the rule can't read (`TurnFacts.ambiguous`); marked templates
    say it themselves."""
    from trl.chat_template_utils import has_generation_markers

    if facts.ambiguous is None or has_generation_markers(template):
        return None
    name = getattr(tokenizer, "name_or_path", "") or ""
    return (
        f"ambiguous end of turn: the chat template{f' of {name!r}' if name else ''} {facts.ambiguous}. Fix: end each "
        "assistant reply with its stop token in the template (e.g. `{{ message['content'] + eos_token }}`) and pass "
        "it with `chat_template_path`, or wrap each reply and its stop token in {% generation %} ... "
        "{% endgeneration %}."
    )
