"""Why each token of a prepared row is trained or masked: the reasons, and one small integer per token for them.

Preparation knows why every token is trained or masked (the prompt, the template, a role's turn, truncation, the
row's own problem); a pipeline built with `explain=True` keeps that as a column of codes beside the ids (`WHY`,
over the row before truncation, whose ids are kept in `FULL_IDS`). The inspector and the audit page read it instead
of working it out again; training never builds it. A new reason is one constant here, added to `REASONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = [
    "FULL_IDS",
    "REASONS",
    "ROW_REASONS",
    "WHY",
    "decode",
    "encode",
    "explain_row",
    "row_reason_of",
    "truncate_explained",
]

#: The column of reason codes (one per token of the row before truncation) and the column of that row's ids.
WHY, FULL_IDS = "_msft_why", "_msft_full_ids"

TRAINED, FIRST, PROMPT = "trained", "first token", "prompt"
#: A trained stop token, by where the stop set has it from: `STOP_TOKEN.format(source)`.
STOP_TOKEN = "stop token ({})"
GENERATION_CONFIG, TOKENIZER_EOS, TEMPLATE_EOT, GIVEN = (
    "generation_config",
    "tokenizer eos",
    "template",
    ("stop_token_ids"),
)
STOPS = tuple(STOP_TOKEN.format(source) for source in (GENERATION_CONFIG, TOKENIZER_EOS, TEMPLATE_EOT, GIVEN))
#: A conversation's tokens: the template's own, a turn by role, an assistant turn not trained, its end of turn.
TEMPLATE, SYSTEM, USER, TOOL = "template", "system turn", "user turn", "tool turn"
EARLIER_ASSISTANT, END_OF_TURN = "earlier assistant turn", "end of turn (not trained)"
#: A reply token merged with the header into one token: left untrained.
MERGED_HEADER = "merged with the header (not trained)"
#: A turn of a role the reasons have no name for (a role named by the data).
OTHER_TURN = "other turn"
#: Masked after the completion started: by the `labels` given, or by padding, or cut by truncation at `max_length`.
USER_LABELS, PADDING, TRUNCATED = "masked in labels", "padding", "truncated"
#: Reasons of a whole row: every token of it gets it.
TEMPLATE_NOT_FOUND, NOT_LOCATED, EMPTY_COMPLETION = (
    "response template not found",
    "chat turns not located",
    ("empty completion"),
)
#: The chat controls' reasons (`chat.controls`): a message's `train: false`, its weight 0, a reasoning block or a tool
#: call masked by `reasoning='mask'`/`tool_calls='mask'`; and the row reason of a conversation they leave with
#: nothing to train (a fully masked row, under `masked_row_policy`).
MASKED_BY_KEY, ZERO_WEIGHT = "message train: false", "message weight 0"
REASONING_MASKED, TOOL_CALL_MASKED = "reasoning (reasoning='mask')", "tool call (tool_calls='mask')"
EMPTIED = "masked by the chat controls"
ROW_REASONS = (TEMPLATE_NOT_FOUND, NOT_LOCATED, EMPTY_COMPLETION, EMPTIED)

#: Every reason; a token's code is its index here (new reasons go at the end, so codes never change meaning).
REASONS = (
    TRAINED,
    FIRST,
    PROMPT,
    TEMPLATE,
    SYSTEM,
    USER,
    TOOL,
    EARLIER_ASSISTANT,
    END_OF_TURN,
    USER_LABELS,
    PADDING,
    TRUNCATED,
    TEMPLATE_NOT_FOUND,
    NOT_LOCATED,
    EMPTY_COMPLETION,
    OTHER_TURN,
    MERGED_HEADER,
    *STOPS,
    MASKED_BY_KEY,
    ZERO_WEIGHT,
    REASONING_MASKED,
    TOOL_CALL_MASKED,
    EMPTIED,
)
_CODES = {reason: code for code, reason in enumerate(REASONS)}
_TRAINED_CODES = frozenset(_CODES[reason] for reason in (TRAINED, *STOPS))


def is_trained(reason: str) -> bool:
    """Whether a per-token reason is a trained token's: `TRAINED` or a stop token's (`STOP_TOKEN`)."""
    return reason == TRAINED or reason.startswith(STOP_TOKEN[: STOP_TOKEN.index("{")])


def encode(reasons: Sequence[str]) -> list[int]:
    """The codes of `reasons`; a turn of a role without a reason of its own is `OTHER_TURN`."""
    return [_CODES.get(reason, _CODES[OTHER_TURN]) for reason in reasons]


def decode(codes: Sequence[int]) -> list[str]:
    return [REASONS[code] for code in codes]


def row_reason_of(reason: str) -> str | None:
    """The reason every token of a row gets, from the row's problem (`None`: each token has its own)."""
    for name in ROW_REASONS:
        if reason.startswith(name):
            return name
    return None


def explain_row(
    labels: Sequence[int],
    kept: Sequence[int],
    *,
    row_reason: str | None,
    turn_codes: Sequence[int] | None,
    instruction_template: bool,
    ignore_index: int,
) -> list[int]:
    """The code of every token of a row before truncation.

    `labels` are the row's labels before truncation, `kept` the positions truncation keeps. A cut token is
    `TRUNCATED`; then the row's own problem (`row_reason`) covers every token; a token with a label is trained (the
    first position never is a target); a masked one takes its conversation turn's code (`turn_codes`) when the row is
    a conversation, else it is the prompt before the first trained token and, after it, a user turn (with an
    `instruction_template`) or masked by the labels given.
    """
    kept = set(kept)
    first = next((p for p, label in enumerate(labels) if label != ignore_index), len(labels))
    fixed = _CODES[row_reason] if row_reason else None
    after = _CODES[USER] if instruction_template else _CODES[USER_LABELS]
    codes = []
    for pos, label in enumerate(labels):
        if pos not in kept:
            codes.append(_CODES[TRUNCATED])
        elif fixed is not None:
            codes.append(fixed)
        elif label != ignore_index:  # a stop token says where the stop set has it from
            trained = turn_codes[pos] if turn_codes and turn_codes[pos] in _TRAINED_CODES else _CODES[TRAINED]
            codes.append(trained if pos > 0 else _CODES[FIRST])
        elif turn_codes:
            codes.append(turn_codes[pos])
        else:
            codes.append(_CODES[PROMPT] if pos < first else after)
    return codes


def truncate_explained(
    ids: list[int],
    labels: list[int],
    truncate: Callable[[list, list[int]], tuple[list, list[int]]],
    reason: str,
    turn_codes: Sequence[int] | None,
    instruction_template: bool,
    ignore_index: int,
) -> tuple[list[int], list[int], dict[str, list[int]]]:
    """`truncate` (`masking.truncate_row` with the row's settings) applied once, to the positions of a row, so the
    cut ones are known: the kept `(ids, labels)` and the columns `{WHY: codes, FULL_IDS: ids}` (see `explain_row`;
    `reason` is the row's problem, '' when none)."""
    kept, _ = truncate(list(range(len(ids))), labels)
    codes = explain_row(
        labels,
        kept,
        row_reason=row_reason_of(reason),
        turn_codes=turn_codes,
        instruction_template=instruction_template,
        ignore_index=ignore_index,
    )
    return [ids[p] for p in kept], [labels[p] for p in kept], {WHY: codes, FULL_IDS: ids}
