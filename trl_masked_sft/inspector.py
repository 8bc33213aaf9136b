"""The mask inspector: every token of a few rows, whether it is trained, and why not.

Rows are prepared exactly as `MaskedSFTTrainer` prepares them (same code path), then each token gets a reason:
`trained`, `prompt`, `system turn`, `user turn`, `tool turn`, `template`, `earlier assistant turn`,
`end of turn (not trained)`, `masked in labels`, `padding`, `truncated`, `response template not found`,
`chat turns not located`, `empty completion`, `first token`.

Token text is each token's share of whole characters (`trl_masked_sft.text`): a character split over several tokens
is shown on the first, the others drawn `⋯`, so no token reads `�` and no token boundary is hidden.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from .hints import Collator, Config, Rows, Tokenizer
from .masking import IGNORE_INDEX, WEIGHTS
from .provenance import (
    EMPTIED,
    EMPTY_COMPLETION,
    FIRST,
    FULL_IDS,
    MASKED_BY_KEY,
    NOT_LOCATED,
    PADDING,
    PROMPT,
    REASONING_MASKED,
    TEMPLATE_NOT_FOUND,
    TOOL_CALL_MASKED,
    TRAINED,
    TRUNCATED,
    USER_LABELS,
    WHY,
    ZERO_WEIGHT,
    decode,
    is_trained,
)
from .text import CONTINUATION, shown_alone, token_texts, visible

__all__ = [
    "RowMarks",
    "TokenMark",
    "html_page",
    "inspect_rows",
    "render_html",
    "render_legend_html",
    "render_row_html",
    "render_terminal",
]


# One background colour per reason, for the page and the terminal alike (the terminal takes the nearest of its 256
# colours); any other reason is a generic masked token.
_HTML = {
    TRAINED: "#b7f0b1",
    PROMPT: "#e2e2e2",
    "user turn": "#bfe6f5",
    "system turn": "#e8c8f0",
    "tool turn": "#f5e3a8",
    "template": "#f0f0f0",
    PADDING: "#ffffff",
    TRUNCATED: "#f7b3b3",
    USER_LABELS: "#ffd8a8",
    REASONING_MASKED: "#d9d2f6",
    TOOL_CALL_MASKED: "#f6e0d2",
}
_MASKED_HTML = "#f6d2d2"


def _colour(reason: str) -> str:
    """The page's colour for a reason: a stop token's (`stop token (generation_config)`) is a trained token's."""
    return _HTML.get(TRAINED if is_trained(reason) else reason, _MASKED_HTML)


_CUBE = (0, 95, 135, 175, 215, 255)


def _xterm_index(colour: str) -> int:
    """The xterm 256-colour index nearest to `#rrggbb` (the 6×6×6 cube or the 24 greys)."""
    rgb = [int(colour[k : k + 2], 16) for k in (1, 3, 5)]
    cube = [min(range(6), key=lambda i, v=v: abs(_CUBE[i] - v)) for v in rgb]
    choices = {16 + 36 * cube[0] + 6 * cube[1] + cube[2]: [_CUBE[i] for i in cube]}
    grey = min(23, max(0, round((sum(rgb) / 3 - 8) / 10)))
    choices[232 + grey] = [8 + 10 * grey] * 3
    return min(choices, key=lambda k: sum((a - b) ** 2 for a, b in zip(choices[k], rgb, strict=True)))


def _ansi(reason: str) -> str:
    """The terminal style of a reason: black on the page's colour for it; trained bold, truncated struck through."""
    extra = {TRAINED: "1;", TRUNCATED: "9;"}.get(TRAINED if is_trained(reason) else reason, "")
    return f"\033[{extra}30;48;5;{_xterm_index(_colour(reason))}m"


# CSS class per reason: a fixed set, so nothing from the data (a role name) ever reaches a `class` attribute.
_REASON_CLASSES = {
    TRAINED: "trained",
    FIRST: "first",
    PROMPT: "prompt",
    "system turn": "system",
    "user turn": "user",
    "tool turn": "tool",
    "template": "template",
    "earlier assistant turn": "earlier",
    "end of turn (not trained)": "eot",
    USER_LABELS: "labels",
    PADDING: "padding",
    TRUNCATED: "truncated",
    TEMPLATE_NOT_FOUND: "notemplate",
    NOT_LOCATED: "unlocated",
    EMPTY_COMPLETION: "empty",
    MASKED_BY_KEY: "keyfalse",
    ZERO_WEIGHT: "weight0",
    REASONING_MASKED: "reasoning",
    TOOL_CALL_MASKED: "toolcall",
    EMPTIED: "emptied",
}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class TokenMark:
    """One token: its share of the text (`text`), whether it is trained, and why not.

    Where a character's bytes are spread over several tokens (`温` over three with a byte-level BPE), the character
    is the `text` of the token holding its first byte and the others have `text == ""`; `part` of `parts` is the
    token's place in that run and `group` the run's whole text (see `trl_masked_sft.text`).
    """

    token_id: int
    text: str
    trained: bool
    reason: str
    part: int = 1
    parts: int = 1
    group: str = ""

    @property
    def continues(self) -> bool:
        """True for a token holding only the rest of a character, drawn as `⋯` where tokens are shown one by one."""
        return self.parts > 1 and not self.text


@dataclass
class RowMarks:
    index: int
    tokens: list[TokenMark] = field(default_factory=list)
    problem: str | None = None
    #: per-message weights (`message_weight_key`): weight -> trained tokens with it; empty when the row has none
    weights: dict[float, int] = field(default_factory=dict)

    @property
    def trained_count(self) -> int:
        return sum(t.trained for t in self.tokens)

    @property
    def header(self) -> str:
        """`row N: k of n tokens trained`, and the weights of the trained tokens when a message carries one."""
        said = f"row {self.index}: {self.trained_count} of {len(self.tokens)} tokens trained"
        counts = ", ".join(f"{n} at weight {w:g}" for w, n in sorted(self.weights.items()))
        return f"{said} ({counts})" if counts else said


def _select(dataset: Any, start: int, rows: int) -> Any:
    if isinstance(dataset, Dataset):
        stop = min(len(dataset), start + rows)
        return dataset.select(range(start, stop))
    return list(dataset)[start : start + rows]


def inspect_rows(
    dataset: Rows,
    tokenizer: Tokenizer,
    config: Config = None,
    *,
    rows: int = 5,
    start: int = 0,
    data_collator: Collator | None = None,
) -> list[RowMarks]:
    """Mark every token of `rows` rows (from `start`) with whether it is trained and why not.

    `config` is a `MaskedSFTConfig` (defaults when `None`): its templates, columns, `max_length` and truncation
    options apply as in training. The rows are prepared once, by the training pipeline, which records why each token
    is trained or masked (`provenance`); nothing is worked out again here.
    """
    from .pipeline import PreparationPipeline

    raw = _select(dataset, start, rows)
    pipeline = PreparationPipeline.from_config(tokenizer, config, data_collator=data_collator, explain=True)
    prepared = pipeline.prepare(raw, "train", enforce=False)
    dataset_rows, verdict, max_length = prepared.dataset, prepared.verdict, pipeline.options.max_length
    raw_rows = raw if isinstance(raw, list) else [raw[i] for i in range(len(raw))]
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(dataset_rows)):
        row = dataset_rows[i]
        ids, reasons = row[FULL_IDS], decode(row[WHY])
        problem = verdict.unsupervised.get(i)
        if problem and problem.startswith("prompt of"):  # said below, as the inspector always has
            problem = None
        marks = RowMarks(index=start + i, problem=problem)
        labels = row["labels"]
        for pos, weight in enumerate(row.get(WEIGHTS) or []):  # the weight column: weighted datasets only
            if labels[pos] != IGNORE_INDEX and pos > 0:
                marks.weights[weight] = marks.weights.get(weight, 0) + 1
        texts = token_texts(tokenizer, ids, special)
        for token, reason, text in zip(ids, reasons, texts, strict=True):
            marks.tokens.append(
                TokenMark(token, text.text, is_trained(reason), reason, text.part, text.parts, text.group)
            )
        if marks.trained_count == 0 and not problem:
            cut = len(row["input_ids"]) < len(ids)
            marks.problem = (
                f"no supervised token after truncation at max_length {max_length}" if cut else "no supervised token"
            )
        raw_row = raw_rows[i] if isinstance(raw_rows[i], dict) else {}
        mask = raw_row.get("attention_mask")
        if mask is not None and not all(mask):
            pad_text = tokenizer.pad_token or "<pad>"
            pads = [TokenMark(tokenizer.pad_token_id, pad_text, False, PADDING) for m in mask if not m]
            marks.tokens = pads + marks.tokens if not mask[0] else marks.tokens + pads
        out.append(marks)
    return out


def _spans(tokens: Sequence[TokenMark]) -> list[tuple[str, str]]:
    """Consecutive tokens with the same reason, joined: `[(reason, text), ...]`. A span that starts inside a
    character (its first token holds only the rest of it) starts with `⋯`; a combining mark starting it, on `◌`."""
    spans: list[tuple[str, str]] = []
    for token in tokens:
        if spans and spans[-1][0] == token.reason:
            spans[-1] = (token.reason, spans[-1][1] + visible(token.text))
        else:
            spans.append((token.reason, CONTINUATION if token.continues else shown_alone(token.text)))
    return spans


def _collapse(tokens: Sequence[TokenMark]) -> list[TokenMark]:
    """Runs of padding shown as one mark with a count, so a row padded to 128 stays readable."""
    out: list[TokenMark] = []
    for token in tokens:
        if token.reason == PADDING and out and out[-1].reason == PADDING:
            count = int(out[-1].text.rsplit("×", 1)[-1]) + 1 if "×" in out[-1].text else 2
            out[-1] = TokenMark(token.token_id, f"{token.text}×{count}", False, PADDING)
        else:
            out.append(token)
    return out


def render_terminal(rows: Sequence[RowMarks], *, color: bool | None = None) -> str:
    """Rows as text: coloured by reason on a terminal, with plain `[reason]...[/reason]` markers otherwise.

    The colours are the HTML page's (the terminal's nearest of 256), with a legend of the reasons shown.
    Characters split over tokens of one reason read whole; a span that starts inside a character shows `⋯`.
    Control characters and bidi overrides from the data (e.g. an escape sequence inside a token) are printed as
    escapes, not sent.
    """
    if color is None:
        color = sys.stdout.isatty()
    lines = []
    for row in rows:
        header = row.header
        lines.append(visible(header + (f" — {row.problem}" if row.problem else "")))
        pieces = []
        for reason, text in _spans(_collapse(row.tokens)):
            shown = text.replace("\n", "↵\n")
            if color:
                pieces.append(f"{_ansi(reason)}{shown}\033[0m")
            else:
                tag = (
                    "TRAIN"
                    if reason == TRAINED
                    else f"TRAIN {visible(reason)}"
                    if is_trained(reason)
                    else visible(reason)
                )
                pieces.append(f"[{tag}]{shown}[/{tag}]")
        lines.append("".join(pieces))
        lines.append("")
    if color:
        seen = sorted({t.reason for row in rows for t in row.tokens})
        lines.append("legend: " + " ".join(f"{_ansi(reason)}{visible(reason)}\033[0m" for reason in seen))
    return "\n".join(lines)


def _esc(value: object) -> str:
    """Text or attribute value from data, escaped (quotes included): it can't close an attribute or open a tag."""
    return html.escape(str(value), quote=True)


def _reason_class(reason: str) -> str:
    """The CSS class of a reason: from our fixed set, `r-other` for anything else (e.g. a role named by the data)."""
    return "r-" + _REASON_CLASSES.get(TRAINED if is_trained(reason) else reason, "other")


def render_legend_html(rows: Sequence[RowMarks]) -> str:
    """One coloured chip per reason that occurs in `rows`, for a legend."""
    reasons_seen = sorted({t.reason for row in rows for t in row.tokens})
    return "".join(
        f'<span class="tok {_reason_class(r)}" style="background:{_colour(r)}">{_esc(r)}</span> ' for r in reasons_seen
    )


def render_row_html(row: RowMarks, *, anchor: str | None = None) -> str:
    """One row as an HTML `<section>`: each token coloured by reason, the reason in its tooltip.

    `anchor` becomes the section's `id` (escaped), so another page can link to `#anchor`. Everything from the data
    (token text, reasons, the problem) is escaped; CSS classes come from a fixed set.
    """
    section_id = f' id="{_esc(anchor)}"' if anchor is not None else ""
    problem = f' <span class="problem">{_esc(row.problem)}</span>' if row.problem else ""
    parts = [f'<section{section_id}><h2>{_esc(row.header)}{problem}</h2><div class="row">']
    for token in _collapse(row.tokens):
        shown = CONTINUATION if token.continues else shown_alone(token.text)
        text = _esc(shown).replace("\n", "↵<br>").replace(" ", "&nbsp;")
        style = f"background:{_colour(token.reason)}"
        cls = "tok trained" if token.trained else f"tok masked {_reason_class(token.reason)}"
        cls += " cont" if token.continues else ""
        split = f"; part {token.part} of {token.parts} of {visible(token.group)!r}" if token.parts > 1 else ""
        parts.append(
            f'<span class="{cls}" style="{style}" title="{_esc(token.reason)} (id {_esc(token.token_id)}{_esc(split)})">'
            f"{text}</span>&#8203;"  # a zero-width space lets long rows wrap between tokens
        )
    parts.append("</div></section>")
    return "".join(parts)


def html_page(title: str, body: str, *, extra_css: str = "") -> str:
    """A self-contained page around `body` (trusted markup): the inspector's styles, and a Content-Security-Policy
    that allows no script and nothing from outside, so even a missed escape could not run."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{_esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 15px; margin: 18px 0 6px; }}
.row {{ font-family: monospace; font-size: 15px; line-height: 1.9; }}
.tok {{ border: 1px solid #ccc; border-radius: 3px; padding: 1px 1px; margin: 0 1px; }}
.trained {{ border-color: #2e8b2e; font-weight: bold; }}
.r-truncated {{ text-decoration: line-through; }}
.cont {{ color: #888; }}
.problem {{ color: #b00020; font-weight: normal; }}
.legend {{ margin-bottom: 12px; }}
{extra_css}</style></head><body>
<h1>{_esc(title)}</h1>
{body}
</body></html>
"""


def render_html(rows: Sequence[RowMarks], *, title: str = "Mask inspector") -> str:
    """A self-contained HTML page: each token coloured by reason, the reason in its tooltip, a legend.

    Everything from the dataset or the tokenizer is escaped, attributes included; the page runs no script.
    """
    body = f'<div class="legend">Legend: {render_legend_html(rows)}</div>\n'
    body += "".join(render_row_html(row, anchor=f"row-{row.index}") for row in rows)
    return html_page(title, body)
