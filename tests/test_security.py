"""Nothing from a dataset or a tokenizer is injected: HTML escaped (attributes included), the terminal free of control
sequences, YAML recipes loaded safely, remote code off unless asked."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from trl_masked_sft.inspector import RowMarks, TokenMark, render_html, render_terminal

HOSTILE_ROLE = 'x"><script>alert(1)</script>'
HOSTILE_TEXT = "</span><script>alert(2)</script><img src=x onerror=alert(3)>"
HOSTILE_PROBLEM = "<svg onload=alert(4)>'\"&"


def hostile_rows() -> list[RowMarks]:
    """Rows whose role name, token text, problem and index carry markup, as a hostile dataset would give them."""
    return [
        RowMarks(
            index=0,
            tokens=[
                TokenMark(1, "<|im_start|>" + HOSTILE_ROLE, False, f"{HOSTILE_ROLE} turn"),
                TokenMark(2, HOSTILE_TEXT, False, "user turn"),
                TokenMark(3, HOSTILE_TEXT, True, "trained"),
                TokenMark(4, "\"' onmouseover=alert(5) x='", False, "' onmouseover=alert(6) class='"),
            ],
            problem=HOSTILE_PROBLEM,
        )
    ]


class _Elements(HTMLParser):
    """Every start tag and every attribute name the browser-independent HTML parser sees."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)


def parse(page: str) -> _Elements:
    elements = _Elements()
    elements.feed(page)
    return elements


def test_hostile_role_names_token_text_and_problems_yield_no_markup():
    """A role, a token and a problem carrying markup become text: no script, img or svg element, no handler."""
    page = render_html(hostile_rows())
    elements = parse(page)
    assert not {"script", "img", "svg"} & set(elements.tags)
    assert not [name for name, _ in elements.attributes if name.startswith("on")]
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_css_classes_come_from_a_fixed_set_whatever_the_role_name():
    """A token's class names are ours (`tok`, `trained`, `masked`, `r-<known reason>` or `r-other`), never data."""
    page = render_html(hostile_rows())
    classes = {c for name, value in parse(page).attributes if name == "class" for c in (value or "").split()}
    allowed = re.compile(r"^(tok|trained|masked|problem|row|legend|r-[a-z]+)$")
    assert all(allowed.match(c) for c in classes), classes
    assert "r-other" in classes and "r-user" in classes


def test_hostile_text_survives_as_visible_text():
    """Escaping keeps what the data says: the hostile strings read back intact from the parsed page."""
    page = render_html(hostile_rows(), title="<b>title</b>")

    class Text(HTMLParser):
        text = ""

        def handle_data(self, data):
            self.text += data

    reader = Text()
    reader.feed(page.replace("&nbsp;", " "))
    assert "<script>alert(2)</script>" in reader.text and HOSTILE_PROBLEM in reader.text
    assert "<b>title</b>" in reader.text


def test_tooltips_escape_quotes_so_attributes_can_not_be_closed():
    """A reason with quotes reads back whole as the `title` attribute; no extra attribute appears."""
    page = render_html(hostile_rows())
    titles = [value for name, value in parse(page).attributes if name == "title"]
    assert f"{HOSTILE_ROLE} turn (id 1)" in titles
    assert "' onmouseover=alert(6) class=' (id 4)" in titles
    assert {name for name, _ in parse(page).attributes} <= {
        "class",
        "style",
        "title",
        "lang",
        "charset",
        "id",
        "http-equiv",
        "content",
        "href",
    }


def test_the_page_forbids_scripts_through_its_content_security_policy():
    """Even a missed escape could not run: the page's CSP allows no script source."""
    page = render_html(hostile_rows())
    policy = dict(parse(page).attributes)
    assert "default-src 'none'" in page and "script-src" not in policy.get("content", "")


def test_terminal_output_shows_control_characters_instead_of_sending_them():
    """An escape sequence inside token text (e.g. one that rewrites the terminal title) is printed visibly."""
    row = RowMarks(index=0, tokens=[TokenMark(1, "a\x1b]0;pwned\x07b\x1b[2J", True, "trained")])
    for color in (True, False):
        out = render_terminal([row], color=color)
        assert "\x07" not in out and "\x1b]" not in out and "\x1b[2J" not in out
        assert "a\\x1b]0;pwned\\x07b\\x1b[2J" in out


# In the browser, payloads that mark the DOM instead of opening a dialog: a live `alert()` would block headless
# Chromium until the timeout rather than fail the test.
MARK = "document.documentElement.dataset.pwned=1"
BROWSER_ROLE, BROWSER_TEXT = f'x"><script>{MARK}</script>', f"</span><script>{MARK}</script><img src=x onerror={MARK}>"


def browser_hostile_rows() -> list[RowMarks]:
    tokens = [
        TokenMark(1, BROWSER_ROLE, False, f"{BROWSER_ROLE} turn"),
        TokenMark(2, BROWSER_TEXT, True, "trained"),
        TokenMark(3, "x", False, f"' onmouseover='{MARK}' class='"),
    ]
    return [RowMarks(index=0, tokens=tokens, problem=f"<svg onload={MARK}>")]


def test_hostile_rows_render_in_a_browser_without_a_script_element(tmp_path, chromium):
    """Headless Chromium parses the report of hostile rows: its DOM holds no script, img or svg element, and no
    payload ran."""
    page = tmp_path / "hostile.html"
    page.write_text(render_html(browser_hostile_rows()))
    dom = chromium(page, "--dump-dom")
    elements = parse(dom)
    assert "body" in elements.tags and "span" in elements.tags  # the page did render
    assert not {"script", "img", "svg"} & set(elements.tags)
    assert not [name for name, _ in elements.attributes if name.startswith("on")]
    assert "data-pwned" not in dom
