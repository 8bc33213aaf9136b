"""The mask inspector: every token of a few rows, whether it is trained, and why not.

Rows are prepared exactly as `MaskedSFTTrainer` prepares them (same code path), then each token gets a reason:
`trained`, `prompt`, `system turn`, `user turn`, `tool turn`, `template`, `earlier assistant turn`,
`end of turn (not trained)`, `masked in labels`, `padding`, `truncated`, `response template not found`,
`chat turns not located`, `empty completion`, `first token`.
"""

from __future__ import annotations

import html
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from .chat import TRAINED, chat_labels
from .conversations import conversation_of
from .hints import Collator, Config, Rows, Tokenizer
from .masking import IGNORE_INDEX, truncate_row

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

PROMPT, PADDING, TRUNCATED, USER_LABELS, FIRST = "prompt", "padding", "truncated", "masked in labels", "first token"
_ROW_REASONS = ("response template not found", "chat turns not located", "empty completion")

# Terminal colours (ANSI) and HTML colours per reason; anything else is shown as a generic masked token.
_ANSI = {
    TRAINED: "\033[1;30;42m",
    PROMPT: "\033[37;100m",
    "user turn": "\033[30;46m",
    "system turn": "\033[30;45m",
    "tool turn": "\033[30;43m",
    PADDING: "\033[2m",
    TRUNCATED: "\033[9;31m",
}
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
}
_MASKED_HTML = "#f6d2d2"
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
    "response template not found": "notemplate",
    "chat turns not located": "unlocated",
    "empty completion": "empty",
}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class TokenMark:
    token_id: int
    text: str
    trained: bool
    reason: str


@dataclass
class RowMarks:
    index: int
    tokens: list[TokenMark] = field(default_factory=list)
    problem: str | None = None

    @property
    def trained_count(self) -> int:
        return sum(t.trained for t in self.tokens)


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
    options apply as in training.
    """
    import dataclasses

    from .config import MaskingOptions
    from .pipeline import PreparationPipeline

    options = MaskingOptions.from_args(config)
    raw = _select(dataset, start, rows)
    # Prepared without truncation, so truncated tokens can be shown; `truncate_row` then says which are cut.
    untruncated = dataclasses.replace(options, max_length=None, masked_row_policy="warn")
    pipeline = PreparationPipeline.from_config(tokenizer, config, data_collator=data_collator)
    pipeline = PreparationPipeline(tokenizer, untruncated, template=pipeline.template)
    prepared = pipeline.prepare(raw, "train", enforce=False)
    prepared, verdict, prepared_layout = prepared.dataset, prepared.verdict, prepared.layout
    raw_rows = raw if isinstance(raw, list) else [raw[i] for i in range(len(raw))]
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(prepared)):
        ids, labels = prepared[i]["input_ids"], prepared[i]["labels"]
        problem = verdict.unsupervised.get(i)
        row_reason = problem if problem and problem.startswith(_ROW_REASONS) else None
        if row_reason and row_reason.startswith("chat turns not located"):
            row_reason = "chat turns not located"
        kept_positions, _ = truncate_row(
            list(range(len(ids))),
            labels,
            options.max_length,
            keep_end=options.keep_end,
            min_completion=options.min_completion_tokens,
        )
        kept = set(kept_positions)
        raw_row = raw_rows[i] if isinstance(raw_rows[i], dict) else {}
        chat = None
        if prepared_layout.is_conversational and row_reason is None:
            messages, first_trained = conversation_of(raw_row)
            chat = chat_labels(
                tokenizer,
                messages,
                assistant_turns=options.assistant_turns,
                train_eot=options.train_on_eot,
                trainable_from=first_trained,
            )
            chat = chat if chat.input_ids == list(ids) else None
        first = next((p for p in range(len(labels)) if labels[p] != IGNORE_INDEX), len(labels))
        marks = RowMarks(index=start + i, problem=problem)
        for pos, (token, label) in enumerate(zip(ids, labels, strict=True)):
            text = tokenizer.decode([token]) if token not in special else tokenizer.convert_ids_to_tokens(token)
            if pos not in kept:
                reason = TRUNCATED
            elif row_reason:
                reason = row_reason
            elif label != IGNORE_INDEX:
                reason = TRAINED if pos > 0 else FIRST
            elif chat is not None:
                reason = chat.reasons[pos]
            elif pos < first:
                reason = PROMPT
            else:
                reason = "user turn" if options.instruction_template else USER_LABELS
            marks.tokens.append(TokenMark(token, text, reason == TRAINED, reason))
        if marks.trained_count == 0 and not problem:
            cut = len(kept) < len(ids)
            marks.problem = (
                f"no supervised token after truncation at max_length {options.max_length}"
                if cut
                else ("no supervised token")
            )
        mask = raw_row.get("attention_mask")
        if mask is not None and not all(mask):
            pad_text = tokenizer.pad_token or "<pad>"
            pads = [TokenMark(tokenizer.pad_token_id, pad_text, False, PADDING) for m in mask if not m]
            marks.tokens = pads + marks.tokens if not mask[0] else marks.tokens + pads
        out.append(marks)
    return out


def _spans(tokens: Sequence[TokenMark]) -> list[tuple[str, str]]:
    """Consecutive tokens with the same reason, joined: `[(reason, text), ...]`."""
    spans: list[tuple[str, str]] = []
    for token in tokens:
        if spans and spans[-1][0] == token.reason:
            spans[-1] = (token.reason, spans[-1][1] + token.text)
        else:
            spans.append((token.reason, token.text))
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


def _visible(text: str) -> str:
    """Control characters shown as `\\x1b`-style escapes, so token text can't drive the terminal (newlines kept)."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else repr(ch)[1:-1] for ch in text)


def render_terminal(rows: Sequence[RowMarks], *, color: bool | None = None) -> str:
    """Rows as text: coloured by reason on a terminal, with plain `[reason]...[/reason]` markers otherwise.

    Control characters from the data (e.g. an escape sequence inside a token) are printed as escapes, not sent.
    """
    if color is None:
        color = sys.stdout.isatty()
    lines = []
    for row in rows:
        header = f"row {row.index}: {row.trained_count} of {len(row.tokens)} tokens trained"
        lines.append(_visible(header + (f" — {row.problem}" if row.problem else "")))
        pieces = []
        for reason, text in _spans(_collapse(row.tokens)):
            shown = _visible(text).replace("\n", "↵\n")
            if color:
                pieces.append(f"{_ANSI.get(reason, chr(27) + '[30;41m')}{shown}\033[0m")
            else:
                tag = "TRAIN" if reason == TRAINED else _visible(reason)
                pieces.append(f"[{tag}]{shown}[/{tag}]")
        lines.append("".join(pieces))
        lines.append("")
    if color:
        legend = " ".join(f"{code}{name}\033[0m" for name, code in _ANSI.items())
        lines.append(f"legend: {legend} \033[30;41mother masked\033[0m")
    return "\n".join(lines)


def _esc(value: object) -> str:
    """Text or attribute value from data, escaped (quotes included): it can't close an attribute or open a tag."""
    return html.escape(str(value), quote=True)


def _reason_class(reason: str) -> str:
    """The CSS class of a reason: from our fixed set, `r-other` for anything else (e.g. a role named by the data)."""
    return "r-" + _REASON_CLASSES.get(reason, "other")


def render_legend_html(rows: Sequence[RowMarks]) -> str:
    """One coloured chip per reason that occurs in `rows`, for a legend."""
    reasons_seen = sorted({t.reason for row in rows for t in row.tokens})
    return "".join(
        f'<span class="tok {_reason_class(r)}" style="background:{_HTML.get(r, _MASKED_HTML)}">{_esc(r)}</span> '
        for r in reasons_seen
    )


def render_row_html(row: RowMarks, *, anchor: str | None = None) -> str:
    """One row as an HTML `<section>`: each token coloured by reason, the reason in its tooltip.

    `anchor` becomes the section's `id` (escaped), so another page can link to `#anchor`. Everything from the data
    (token text, reasons, the problem) is escaped; CSS classes come from a fixed set.
    """
    section_id = f' id="{_esc(anchor)}"' if anchor is not None else ""
    problem = f' <span class="problem">{_esc(row.problem)}</span>' if row.problem else ""
    parts = [
        f"<section{section_id}><h2>row {_esc(row.index)}: {row.trained_count} of {len(row.tokens)} tokens trained"
        f'{problem}</h2><div class="row">'
    ]
    for token in _collapse(row.tokens):
        text = _esc(token.text).replace("\n", "↵<br>").replace(" ", "&nbsp;")
        style = f"background:{_HTML.get(token.reason, _MASKED_HTML)}"
        cls = "tok trained" if token.trained else f"tok masked {_reason_class(token.reason)}"
        parts.append(
            f'<span class="{cls}" style="{style}" title="{_esc(token.reason)} (id {_esc(token.token_id)})">'
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
