"""The mask inspector: reason codes row by row, terminal and HTML rendering, and the page as a browser shows it."""

from __future__ import annotations

import re

import pytest
from datasets import Dataset

from trl_masked_sft import MaskedSFTConfig
from trl_masked_sft.inspector import RowMarks, TokenMark, inspect_rows, render_html, render_terminal

IGNORE = -100


@pytest.fixture
def config(tmp_path):
    def make(**overrides):
        return MaskedSFTConfig(output_dir=str(tmp_path), report_to="none", **overrides)

    return make


def reasons(row) -> dict[str, str]:
    """Text per reason of one inspected row."""
    out: dict[str, str] = {}
    for token in row.tokens:
        out[token.reason] = out.get(token.reason, "") + token.text
    return out


def test_prompt_completion_rows_mark_prompt_and_trained_tokens(tokenizer, config):
    """Prompt tokens say `prompt`; the answer and eos say `trained`."""
    (row,) = inspect_rows([["What is 2 kg in g?", " <answer>2000</answer>"]], tokenizer, config())
    assert reasons(row) == {"prompt": "What is 2 kg in g?", "trained": " <answer>2000</answer><|eos|>"}
    assert row.problem is None and row.trained_count == len(tokenizer(" <answer>2000</answer>")["input_ids"]) + 1


def test_truncated_tokens_are_marked_and_the_row_problem_is_named(tokenizer, config):
    """Tokens past `max_length` say `truncated`; a row left with nothing trained says why."""
    rows = [["word " * 20, " <answer>1</answer>"]]
    (row,) = inspect_rows(rows, tokenizer, config(max_length=10))
    assert [t.reason for t in row.tokens[:10]] == ["prompt"] * 10
    assert {t.reason for t in row.tokens[10:]} == {"truncated"}
    assert row.problem == "no supervised token after truncation at max_length 10"


def test_chat_rows_mark_each_turn(tokenizer, config):
    """System and user turns, the assistant header and the trained reply each get their reason."""
    data = Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            ]
        }
    )
    (row,) = inspect_rows(data, tokenizer, config())
    found = reasons(row)
    assert "Be brief." in found["system turn"] and "Hi" in found["user turn"]
    assert found["trained"] == "Hello" and found["stop token (template)"] == "<|im_end|>"  # trained, with its source
    assert "assistant" in found["template"]


@pytest.mark.parametrize(
    "row",
    [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]},
    ],
    ids=["sharegpt", "conversational-prompt-completion"],
)
def test_other_conversation_shapes_mark_each_turn_too(tokenizer, config, row):
    """ShareGPT rows and prompt/completion given as messages get per-turn reasons like `messages` rows."""
    (marked,) = inspect_rows([row], tokenizer, config())
    found = reasons(marked)
    assert "Hi" in found["user turn"]
    assert found["trained"] == "Hello" and found["stop token (template)"] == "<|im_end|>"


def test_template_not_found_marks_the_whole_row(tokenizer, config):
    """A text row without the response template is marked as such, every token."""
    data = Dataset.from_dict({"text": ["### Question: a?\n### Answer: b", "no template here"]})
    rows = inspect_rows(data, tokenizer, config(response_template="### Answer:"))
    assert reasons(rows[0])["trained"] == " b<|eos|>"
    assert {t.reason for t in rows[1].tokens} == {"response template not found"}
    assert rows[1].problem == "response template not found"


def test_padding_and_user_masked_labels_are_marked(tokenizer, config):
    """Pre-padded rows show their padding; -100s inside the answer say `masked in labels`."""
    ids = tokenizer("Q: hi A: hello there")["input_ids"]
    labels = [IGNORE] * 4 + ids[4:]
    labels[-1] = IGNORE
    data = Dataset.from_dict(
        {"input_ids": [ids + [2, 2]], "attention_mask": [[1] * len(ids) + [0, 0]], "labels": [labels + [IGNORE] * 2]}
    )
    (row,) = inspect_rows(data, tokenizer, config())
    codes = [t.reason for t in row.tokens]
    assert codes[:4] == ["prompt"] * 4 and codes[-2:] == ["padding", "padding"]
    assert codes[-3] == "masked in labels" and codes[4] == "trained"


def test_terminal_rendering_uses_markers_without_a_tty_and_colours_with_one(tokenizer, config):
    """Plain `[reason]` markers when not a TTY; ANSI colours when asked."""
    rows = inspect_rows([["What is 2 kg in g?", " <answer>2000</answer>"]], tokenizer, config())
    plain = render_terminal(rows, color=False)
    assert "[prompt]What is 2 kg in g?[/prompt][TRAIN] <answer>2000</answer><|eos|>[/TRAIN]" in plain
    assert "\033[" not in plain
    coloured = render_terminal(rows, color=True)
    assert re.search(r"\033\[1;30;48;5;\d+m <answer>2000</answer><\|eos\|>\033\[0m", coloured)


def test_html_is_self_contained_and_carries_every_reason(tokenizer, config):
    """The page needs nothing from outside and names each token's reason in its tooltip."""
    rows = inspect_rows([["word " * 20, " <answer>1</answer>"], ["Q?", " A"]], tokenizer, config(max_length=10))
    page = render_html(rows)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert 'title="truncated' in page and 'title="trained' in page and 'title="prompt' in page


def test_each_row_has_an_anchor_to_link_to(tokenizer, config):
    """Row sections carry `id="row-<index>"`, so a page (the audit page) can link to a row's masks."""
    rows = inspect_rows([["Q?", " A"], ["R?", " B"]], tokenizer, config(), start=0)
    page = render_html(rows)
    assert '<section id="row-0">' in page and '<section id="row-1">' in page


#: The report's background colour per reason, as the screenshot must show it.
COLOURS = {
    "trained": (0xB7, 0xF0, 0xB1),
    "prompt": (0xE2, 0xE2, 0xE2),
    "truncated": (0xF7, 0xB3, 0xB3),
    "system turn": (0xE8, 0xC8, 0xF0),
    "user turn": (0xBF, 0xE6, 0xF5),
}


def test_html_renders_in_a_browser_with_each_reason_in_its_colour(tokenizer, config, tmp_path, chromium):
    """Headless Chromium renders the report of a truncated row, a prompt/completion row and a chat row; the
    screenshot shows the trained, prompt, truncated, system-turn and user-turn colours."""
    from PIL import Image

    rows = inspect_rows([["word " * 20, " <answer>1</answer>"], ["Q?", " A"]], tokenizer, config(max_length=10))
    chat = Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello"},
                ]
            ]
        }
    )
    rows += inspect_rows(chat, tokenizer, config())
    assert {t.reason for row in rows for t in row.tokens} >= set(COLOURS)
    page, shot = tmp_path / "masks.html", tmp_path / "masks.png"
    report = render_html(rows)
    # The legend shows every colour too: hide it, so only the rows' tokens can put the colours on screen.
    assert report.count('<div class="legend">') == 1
    page.write_text(report.replace('<div class="legend">', '<div class="legend" style="display:none">'))
    chromium(page, f"--screenshot={shot}", "--window-size=1000,900")
    image = Image.open(shot).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    missing = {reason: colour for reason, colour in COLOURS.items() if colour not in colours}
    assert missing == {}


def _xterm_rgb(index: int) -> tuple[int, int, int]:
    """The colour of an xterm 256-colour index (cube or greys), as terminals draw it."""
    if index >= 232:
        return (8 + 10 * (index - 232),) * 3
    levels = (0, 95, 135, 175, 215, 255)
    index -= 16
    return levels[index // 36], levels[index // 6 % 6], levels[index % 6]


def test_terminal_and_page_colour_every_reason_alike():
    """Each reason's terminal background is the page's colour for it (the nearest of 256): template tokens are
    light grey in both, not red in the terminal; masked labels orange, other masked tokens pink."""
    reasons = [
        "template",
        "trained",
        "prompt",
        "user turn",
        "system turn",
        "tool turn",
        "masked in labels",
        "end of turn (not trained)",
        "earlier assistant turn",
        "truncated",
        "first token",
    ]
    row = RowMarks(0, [TokenMark(i, f"<{i}>", reason == "trained", reason) for i, reason in enumerate(reasons)])
    terminal, page = render_terminal([row], color=True), render_html([row])
    for i, reason in enumerate(reasons):
        (code,) = re.findall(rf"\033\[[\d;]*48;5;(\d+)m<{i}>", terminal)
        (hex_colour,) = re.findall(rf'style="background:#(\w{{6}})"[^>]*>&lt;{i}&gt;', page)
        page_rgb = tuple(int(hex_colour[k : k + 2], 16) for k in (0, 2, 4))
        assert max(abs(a - b) for a, b in zip(_xterm_rgb(int(code)), page_rgb, strict=True)) <= 30, reason
    (template_code,) = re.findall(r"48;5;(\d+)m<0>", terminal)
    red, green, blue = _xterm_rgb(int(template_code))
    assert red == green == blue and red > 200  # grey, as on the page
    assert all(reason in terminal.split("legend:")[1] for reason in reasons)


#: Prompt/completion rows in scripts a byte-level BPE splits inside characters.
WORLD = [
    ["Ünïcödé — “quotes”?", " <answer>é</answer>"],
    ["温度是多少？", " <answer>二十度</answer>"],
    ["ما هي درجة الحرارة؟", " <answer>عشرون</answer>"],
    ["מה השעה?", " <answer>שלוש</answer>"],
    ["Flags 🇫🇷🇩🇪, family 👨\u200d👩\u200d👧, thumbs 👍🏽", " <answer>🎉</answer>"],
    ["cafe\u0301 n\u0303o", " <answer>ok</answer>"],
]


@pytest.mark.parametrize("which", ["byte-level BPE", "SentencePiece byte fallback"])
def test_non_ascii_rows_read_as_whole_characters_in_the_terminal_and_the_page(
    tokenizer, byte_fallback_tokenizer, config, which
):
    """Each row's prompt and answer read back whole, with no `�`, in the token texts, the terminal and the page;
    tokens holding only the rest of a character are marked `⋯` on the page, the character in their tooltip."""
    tok = tokenizer if which == "byte-level BPE" else byte_fallback_tokenizer
    rows = inspect_rows(WORLD, tok, config(), rows=len(WORLD))
    plain, page = render_terminal(rows, color=False), render_html(rows)
    for (prompt, completion), row in zip(WORLD, rows, strict=True):
        found = reasons(row)
        assert found["prompt"].strip() == prompt and found["trained"] == f"{completion}{tok.eos_token}"
        assert f"[prompt]{found['prompt']}[/prompt][TRAIN]{completion}{tok.eos_token}[/TRAIN]" in plain
    assert "\ufffd" not in plain and "\ufffd" not in page
    assert 'class="tok masked r-prompt cont"' in page and "⋯</span>" in page
    assert "part 2 of 3 of &#x27;温&#x27;" in page


def test_a_character_split_between_two_reasons_shows_where_each_part_goes():
    """A character whose bytes are in a prompt token and a trained token: the prompt span shows it, the trained
    span starts with `⋯`; a combining mark starting a span sits on `◌`."""
    row = RowMarks(
        0,
        [
            TokenMark(1, "温", False, "prompt", 1, 2, "温"),
            TokenMark(2, "", True, "trained", 2, 2, "温"),
            TokenMark(3, "\u0301!", False, "template"),
        ],
    )
    assert render_terminal([row], color=False).splitlines()[1] == (
        "[prompt]温[/prompt][TRAIN]⋯[/TRAIN][template]◌\u0301![/template]"
    )


def test_non_ascii_rows_render_in_a_browser_as_whole_characters(tokenizer, config, tmp_path, chromium):
    """Headless Chromium reads the page of the rows above: its text holds every prompt and answer (token boxes
    joined, a lone joiner token shown as `\\u200d`, a lone accent on `◌`), no `�`; a screenshot is written beside
    it for a person to look at."""
    rows = inspect_rows(WORLD, tokenizer, config(), rows=len(WORLD))
    page = tmp_path / "world.html"
    page.write_text(render_html(rows, title="Ünïcödé, 温度, مرحبا, שלום, 🇫🇷"))
    dom = chromium(page, "--dump-dom")
    text = re.sub(r"<[^>]+>", "", dom).replace("&nbsp;", " ").replace("\u00a0", " ").replace("\u200b", "")
    text = (
        text.replace("⋯", "")
        .replace("◌", "")
        .replace("\\u200d", "\u200d")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
    )
    for prompt, completion in WORLD:
        assert prompt in text and completion in text
    assert "\ufffd" not in dom
    chromium(page, f"--screenshot={tmp_path / 'world.png'}", "--window-size=1000,700")
    assert (tmp_path / "world.png").stat().st_size > 0


def test_inspecting_prepares_once_and_reads_why_from_the_preparation(tokenizer, config, monkeypatch):
    """One pipeline, one preparation: truncation runs once per row and chat masking once per conversation; the
    reasons come from what preparation recorded, not from running them again."""
    import trl_masked_sft.pipeline as pipeline_module

    calls = {"pipelines": 0, "truncate_row": 0, "chat_labels": 0}

    def counted(name, function):
        def count(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return count

    init = pipeline_module.PreparationPipeline.__init__
    monkeypatch.setattr(pipeline_module.PreparationPipeline, "__init__", counted("pipelines", init))
    monkeypatch.setattr(pipeline_module, "truncate_row", counted("truncate_row", pipeline_module.truncate_row))
    monkeypatch.setattr(pipeline_module, "chat_labels", counted("chat_labels", pipeline_module.chat_labels))
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    marks = inspect_rows(Dataset.from_dict({"messages": [chat] * 3}), tokenizer, config(max_length=8), rows=3)
    assert calls == {"pipelines": 1, "truncate_row": 3, "chat_labels": 3}
    assert {t.reason for t in marks[0].tokens} >= {"user turn", "truncated"}
    calls.update(pipelines=0, truncate_row=0, chat_labels=0)
    inspect_rows([["word " * 20, " <answer>1</answer>"]] * 2, tokenizer, config(max_length=10), rows=2)
    assert calls == {"pipelines": 1, "truncate_row": 2, "chat_labels": 0}
