"""The audit page: numbers, a histogram of supervised tokens per row as inline SVG, the worst rows' masks, no script."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from trl_masked_sft.audit_html import render_audit_html, worst_row_indices
from trl_masked_sft.cli import main
from trl_masked_sft.inspector import RowMarks, TokenMark
from trl_masked_sft.report import AuditReport


class Page(HTMLParser):
    """Start tags, attributes, `<title>` texts of SVG bars, and all text of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text = ""
        self._in: list[str] = []
        self.bar_titles: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)
        self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        self.text += data
        if self._in[-2:] == ["rect", "title"]:
            self.bar_titles.append(data)


def report(**overrides) -> AuditReport:
    values = {
        "dataset_name": "train",
        "rows": 6,
        "max_length": 64,
        "rows_fully_masked": 2,
        "rows_completion_truncated": 1,
        "rows_stop_token_not_supervised": 0,
        "supervised_tokens_min": 3,
        "supervised_tokens_median": 4.5,
        "supervised_tokens_max": 7,
        "supervised_token_share": 0.25,
        "unsupervised_rows": {1: "response template not found", 4: "completion truncated at max_length 64"},
        "policy": "error",
        "policy_error": None,
    }
    values.update(overrides)
    return AuditReport(**values)


COUNTS = [3, 0, 4, 5, 0, 7]


def marks(index: int, *tokens: tuple[str, str]) -> RowMarks:
    return RowMarks(
        index, [TokenMark(i, text, reason == "trained", reason) for i, (text, reason) in enumerate(tokens)]
    )


WORST = [marks(1, ("Q?", "response template not found")), marks(4, ("Q2?", "prompt"), (" A", "truncated"))]


def test_worst_rows_are_the_fewest_supervised_first_lowest_index_on_ties():
    """Rows with no supervised token come first, then the next fewest; ties keep dataset order."""
    assert worst_row_indices([3, 0, 4, 5, 0, 7], limit=3) == [1, 4, 0]
    assert worst_row_indices([], limit=3) == [] and worst_row_indices([2, 1], limit=0) == []


def test_the_page_shows_every_audit_number():
    """Rows, max_length, the three problem counts, min/median/max, the share, drops and the policy are on the page."""
    text = Page(render_audit_html(report(), COUNTS, WORST)).text
    for expected in ("rows", "64", "3 / 4.5 / 7", "25.0%", "masked_row_policy", "Training may start"):
        assert expected in text
    assert "response template not found" in text and "completion truncated at max_length 64" in text


def test_the_histogram_is_inline_svg_with_one_bar_per_count():
    """Counts 0..7 give eight bars; each bar's tooltip says how many rows have that many supervised tokens."""
    page = Page(render_audit_html(report(), COUNTS, WORST))
    assert page.tags.count("svg") == 1 and page.tags.count("rect") == 8
    assert page.bar_titles[0] == "0 supervised tokens: 2 rows"
    assert page.bar_titles[3] == "3 supervised tokens: 1 row" and page.bar_titles[1] == "1 supervised tokens: 0 rows"


def test_wide_counts_are_binned_into_at_most_thirty_bars_covering_every_row():
    """A thousand distinct counts fold into 30 or fewer bars whose rows add up to all rows."""
    counts = list(range(1000))
    page = Page(render_audit_html(report(rows=1000), counts, []))
    assert 1 < len(page.bar_titles) <= 30
    assert sum(int(t.split(": ")[1].split()[0]) for t in page.bar_titles) == 1000
    assert page.bar_titles[0].startswith("0–")


def test_the_worst_rows_have_anchors_linked_from_the_numbers():
    """Each worst row is a section `#row-<index>`, and the table of unsupervised rows links to it."""
    page = Page(render_audit_html(report(), COUNTS, WORST))
    ids = {value for name, value in page.attributes if name == "id"}
    links = {value for name, value in page.attributes if name == "href"}
    assert {"row-1", "row-4"} <= ids and {"#row-1", "#row-4"} <= links


def test_a_policy_stop_is_shown_with_its_message():
    """When `masked_row_policy` would stop training, the page says so with the policy's error."""
    text = Page(render_audit_html(report(policy_error="2 rows have no supervised token. Fix: ..."), COUNTS, [])).text
    assert "Training would stop" in text and "2 rows have no supervised token" in text


def test_an_empty_dataset_gives_a_page_without_a_histogram():
    """No rows: the page still renders, saying there is no histogram."""
    page = Page(render_audit_html(report(rows=0, unsupervised_rows={}, rows_fully_masked=0), [], []))
    assert "svg" not in page.tags and "No rows" in page.text


@pytest.mark.parametrize(("counts", "match"), [([1, 2], "has 2 values but the report counts 6"), ([1, -1], "-1")])
def test_counts_that_do_not_fit_the_report_are_refused(counts, match):
    """Counts must be one non-negative int per audited row; the error says what was given and the fix."""
    with pytest.raises(ValueError, match=match):
        render_audit_html(report(), counts, [])


def test_data_on_the_page_is_escaped():
    """A hostile dataset name, reason or token text becomes text, never markup."""
    hostile = "<script>alert(1)</script>"
    page = render_audit_html(
        report(dataset_name=hostile, unsupervised_rows={1: hostile}, policy_error=hostile),
        COUNTS,
        [marks(1, (hostile, 'x"><script>alert(2)</script> turn'))],
    )
    parsed = Page(page)
    assert "script" not in parsed.tags and hostile in parsed.text


def test_the_page_renders_in_a_browser_with_its_histogram_and_no_script(tmp_path, chromium):
    """Headless Chromium renders the page: the DOM holds the SVG bars and the rows, no script; the screenshot shows
    the bar colours."""
    from PIL import Image

    page = tmp_path / "audit.html"
    page.write_text(render_audit_html(report(), COUNTS, WORST))
    dom = Page(chromium(page, "--dump-dom"))
    assert "svg" in dom.tags and dom.tags.count("rect") == 8 and "section" in dom.tags
    assert "script" not in dom.tags
    shot = tmp_path / "audit.png"
    chromium(page, f"--screenshot={shot}", "--window-size=900,1200")
    colours = {colour for _, colour in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (0x4C, 0x9A, 0x52) in colours and (0xC0, 0x39, 0x2B) in colours  # bars with and without supervision


def test_the_audit_command_writes_the_page(tmp_path, capsys):
    """`trl-masked-sft audit --html` writes the page: numbers, histogram, and the worst rows' masks."""
    rows = [{"prompt": f"What is {i} km in m?", "completion": f" <answer>{i * 1000}</answer>"} for i in range(8)]
    rows[3]["completion"] = " <answer>3000 metres, that is three thousand metres</answer>"
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "report.html"
    assert main(["audit", "--dataset_name", str(data), "--html", str(out)]) == 0
    assert f"HTML written to {out}" in capsys.readouterr().out
    page = Page(out.read_text())
    assert "svg" in page.tags and page.tags.count("section") == 5 and "script" not in page.tags
    assert "Training may start" in page.text
    assert sum(int(t.split(": ")[1].split()[0]) for t in page.bar_titles) == 8


def test_the_audit_page_of_chinese_rows_reads_whole_characters_in_a_browser(tokenizer, tmp_path, capsys, chromium):
    """`audit --html` on Chinese prompts cut by `max_length` inside a character (byte-level BPE, three tokens per
    character): the banner's `prompt ends` and the rows' masks hold whole characters, no `�`, as Chromium reads the
    page."""
    prompt = "请问今天的温度是多少摄氏度呢？" * 3
    rows = [
        {"prompt": prompt if i % 2 else prompt[:5], "completion": f" <answer>{20 + i}度</answer>"} for i in range(6)
    ]
    data, tok, out = tmp_path / "zh.jsonl", tmp_path / "tok", tmp_path / "audit.html"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tokenizer.save_pretrained(tok)
    assert "\ufffd" in tokenizer.decode(tokenizer(prompt)["input_ids"][:100])  # the cut falls inside a character
    argv = ["audit", "--dataset_name", str(data), "--tokenizer_name_or_path", str(tok), "--max_length", "100"]
    assert main([*argv, "--html", str(out)]) == 1
    assert "\ufffd" not in capsys.readouterr().err
    dom = Page(chromium(out, "--dump-dom"))
    assert "Training would stop" in dom.text and f"prompt ends '{prompt[:33]}'" in dom.text
    assert "\ufffd" not in dom.text and "温" in dom.text
