"""The audit page: the pre-flight audit as one self-contained HTML file, what a person would rather look at than read.

`render_audit_html(report, supervised_counts, worst_rows)` takes plain data: an `AuditReport`, the number of
supervised tokens of every row (in dataset order), and the inspected masks of the rows worth a look (`RowMarks`,
e.g. from `inspect_rows`). The page holds the audit numbers, a histogram of supervised tokens per row as inline SVG,
and the worst rows' masks with anchors (`#row-<index>`) linked from the numbers. No JavaScript, nothing fetched.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from .inspector import RowMarks, html_page, render_legend_html, render_row_html
from .policies import VERDICTS

__all__ = ["render_audit_html", "worst_row_indices"]

#: Bars: rows with supervised tokens, and the bar holding rows with none.
_BAR, _EMPTY_BAR = "#4c9a52", "#c0392b"
_MAX_BINS = 30
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP = 640, 240, 48, 36, 12
_CSS = """
table.numbers { border-collapse: collapse; margin: 8px 0 16px; }
table.numbers td, table.numbers th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
table.numbers td.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { padding: 8px 12px; border-radius: 4px; margin: 8px 0 16px; }
.verdict.stop { background: #fbe3e3; border: 1px solid #c0392b; }
.verdict.go { background: #e3f5e1; border: 1px solid #4c9a52; }
.verdict pre { white-space: pre-wrap; margin: 6px 0 0; font-size: 13px; }
svg.histogram text { font-family: sans-serif; font-size: 11px; fill: #333; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def worst_row_indices(supervised_counts: Sequence[int], limit: int = 5) -> list[int]:
    """Indices of the `limit` rows with the fewest supervised tokens (rows with none first), lowest index first on
    ties: the rows worth opening on the audit page."""
    order = sorted(range(len(supervised_counts)), key=lambda i: (supervised_counts[i], i))
    return order[: max(0, limit)]


def _bins(counts: Sequence[int]) -> tuple[int, list[int]]:
    """`(width, rows per bin)`: one bin per value up to `_MAX_BINS` values, else equal bins of a whole width."""
    top = max(counts)
    width = max(1, math.ceil((top + 1) / _MAX_BINS))
    rows = [0] * (top // width + 1)
    for count in counts:
        rows[count // width] += 1
    return width, rows


def _histogram_svg(counts: Sequence[int]) -> str:
    """Supervised tokens per row as an inline SVG bar chart; each bar's tooltip says its range and its rows."""
    if not counts:
        return "<p>No rows, so no histogram.</p>"
    width, rows = _bins(counts)
    plot_w, plot_h = _WIDTH - _LEFT - 8, _HEIGHT - _BOTTOM - _TOP
    bar_w, tallest = plot_w / len(rows), max(rows)
    parts = [
        f'<svg class="histogram" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="Histogram of supervised tokens per row">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" stroke="#333"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="#333"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">{tallest}</text>',
        f'<text x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end">0</text>',
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_HEIGHT - 4}" text-anchor="middle">supervised tokens per row</text>',
    ]
    label_every = max(1, math.ceil(len(rows) / 10))
    for i, n in enumerate(rows):
        low, high = i * width, (i + 1) * width - 1
        x, h = _LEFT + i * bar_w, plot_h * n / tallest
        span = f"{low}" if width == 1 else f"{low}–{high}"
        colour = _EMPTY_BAR if low == 0 else _BAR
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{_TOP + plot_h - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{span} supervised tokens: {n} row{"s" if n != 1 else ""}</title></rect>'
        )
        if i % label_every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle">{low}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _numbers_table(report, shown: set[int]) -> str:
    def link(index: int) -> str:
        return f'<a href="#row-{index}">row {index}</a>' if index in shown else f"row {index}"

    share = f"{report.supervised_token_share:.1%}"
    spread = f"{report.supervised_tokens_min} / {report.supervised_tokens_median:g} / {report.supervised_tokens_max}"
    lines = [
        ("rows", report.rows),
        ("max_length", report.max_length if report.max_length is not None else "none"),
        ("rows with no supervised token", report.rows_fully_masked),
        ("rows with a truncated completion", report.rows_completion_truncated),
        ("rows whose stop token is not trained", report.rows_stop_token_not_supervised),
        ("rows whose completion is cut before its stop token", report.rows_stop_token_truncated),
        (
            "rows whose prompt and completion merge across their boundary when tokenized together (tokenized "
            "apart: no prompt byte is trained)",
            report.rows_merged_boundary,
        ),
        (f"supervised tokens per row (all {report.rows} rows, as the histogram), min / median / max", spread),
        ("supervised share of all tokens", share),
        ("rows dropped", report.rows_dropped),
        *((verdict.policy_field, report.verdict_rows(verdict)[2]) for verdict in VERDICTS),
    ]
    if weights := getattr(report, "token_weights", None):  # only when a message carries a weight
        spread = f"{weights['min']:g} / {weights['mean']:.3g} / {weights['max']:g}"
        lines += [
            ("per-message weight on the supervised tokens, min / mean / max", spread),
            ("supervised tokens whose weight is not 1", f"{weights['share_not_1']:.1%}"),
        ]
    body = "".join(f'<tr><th>{_esc(name)}</th><td class="n">{_esc(value)}</td></tr>' for name, value in lines)
    table = f'<table class="numbers">{body}</table>'
    for verdict in VERDICTS:  # one section per row verdict that has rows
        count, first_rows, _ = report.verdict_rows(verdict)
        if not first_rows:
            continue
        rows = "".join(
            f'<tr><td class="n">{link(int(index))}</td><td>{_esc(detail)}</td></tr>'
            for index, detail in first_rows.items()
        )
        more = count - len(first_rows)
        note = f"<p>… and {more} more.</p>" if more > 0 else ""
        table += (
            f"<h2>{verdict.page_title}</h2>{verdict.page_note}"
            f'<table class="numbers"><tr><th>row</th><th>{verdict.detail_header}</th></tr>{rows}</table>{note}'
        )
    return table


def render_audit_html(report, supervised_counts: Sequence[int], worst_rows: Sequence[RowMarks]) -> str:
    """The audit page of one dataset, self-contained (inline CSS and SVG, no script, nothing fetched).

    Args:
        report: the `AuditReport` (its numbers, the rows with no supervised token and the policy's verdict).
        supervised_counts: supervised tokens of each row, in dataset order (the histogram).
        worst_rows: inspected masks of the rows worth a look (e.g. `worst_row_indices`), each shown with an
            anchor `#row-<index>` that the table of unsupervised rows links to.

    Everything from the data (the dataset name, reasons, token text) is escaped.
    """
    counts = list(supervised_counts)
    bad = [c for c in counts if not isinstance(c, int) or isinstance(c, bool) or c < 0]
    if bad:
        raise ValueError(
            f"`supervised_counts` must hold one non-negative int per row, got {bad[0]!r}. Pass the number of "
            "supervised tokens of each row, in dataset order."
        )
    if counts and len(counts) != report.rows:
        raise ValueError(
            f"`supervised_counts` has {len(counts)} values but the report counts {report.rows} rows. Pass one value "
            "per row of the audited dataset."
        )
    shown = {row.index for row in worst_rows}
    policies = ", ".join(f"`{verdict.policy_field}={_esc(report.verdict_rows(verdict)[2])}`" for verdict in VERDICTS)
    if report.policy_error:
        verdict = (
            f'<div class="verdict stop"><strong>Training would stop</strong> ({policies})'
            f"<pre>{_esc(report.policy_error)}</pre></div>"
        )
    else:
        verdict = f'<div class="verdict go"><strong>Training may start</strong> ({policies}).</div>'
    body = [
        verdict,
        _numbers_table(report, shown),
        f"<h2>Supervised tokens per row (all {report.rows} rows; rows with none in the red bar)</h2>",
        _histogram_svg(counts),
    ]
    if worst_rows:
        links = " · ".join(f'<a href="#row-{_esc(row.index)}">row {_esc(row.index)}</a>' for row in worst_rows)
        body += [
            "<h2>The rows with the fewest supervised tokens</h2>",
            f"<p>{links}</p>",
            f'<div class="legend">Legend: {render_legend_html(worst_rows)}</div>',
            *(render_row_html(row, anchor=f"row-{row.index}") for row in worst_rows),
        ]
    return html_page(f"Pre-flight audit of the {report.dataset_name} dataset", "\n".join(body), extra_css=_CSS)
