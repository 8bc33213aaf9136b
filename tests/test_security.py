"""Nothing from a dataset or a tokenizer is injected: HTML escaped (attributes included), the terminal free of control
sequences, YAML recipes loaded safely, remote code off unless asked."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

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


# ---------------------------------------------------------------------------------------------------- recipes


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(f'{{"prompt": "Q{i}?", "completion": " A{i}"}}\n' for i in range(4)))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `trl-masked-sft ARGV`, run in this process; errors propagate (`run`, not `main`)."""
    from trl_masked_sft.cli.main import run

    try:
        code = run(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "audit"])
def test_a_recipe_with_a_python_tag_is_refused_naming_the_file_line_and_fix(command, qa_file, tmp_path, capsys):
    """A `!!python/...` tag is never constructed: the command exits 2 naming the file, the line, the tag and the fix."""
    marker = tmp_path / "pwned"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: {qa_file}\nmax_length: !!python/object/apply:os.system ['touch {marker}']\n")
    code, err = run_cli([command, "--config", str(recipe)], capsys)
    assert code == 2 and not marker.exists()
    assert str(recipe) in err and "line 2" in err and "!!python/object/apply:os.system" in err
    assert "safe" in err and "Fix:" in err


def test_a_missing_recipe_file_is_named_with_the_fix(tmp_path, capsys):
    """`--config` pointing nowhere exits 2 naming the path, not a FileNotFoundError traceback."""
    code, err = run_cli(["audit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in err and "no such file" in err and "Fix:" in err


def test_config_without_a_path_is_an_argparse_style_error(capsys):
    """`--config` as the last argument exits 2 saying it expects a file, not an IndexError."""
    code, err = run_cli(["audit", "--config"], capsys)
    assert code == 2 and "--config" in err and "expected one argument" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max_length: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "must be a YAML mapping"), ("", "is empty")],
)
def test_a_malformed_recipe_is_refused_naming_the_file(text, expected, tmp_path, capsys):
    """Broken YAML, a list instead of a mapping and an empty file each exit 2 naming the file and the problem."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, err = run_cli(["audit", "--config", str(recipe)], capsys)
    assert code == 2 and str(recipe) in err and expected in err


def test_a_safe_recipe_still_sets_the_options(qa_file, tmp_path, capsys):
    """A plain recipe loads as before: its values reach the command (here the audit's `max_length`)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset_name: {qa_file}\nmax_length: 64\n")
    code, _ = run_cli(["audit", "--config", str(recipe)], capsys)
    assert code == 0


# ---------------------------------------------------------------------------------------------------- remote code


@pytest.fixture
def remote_code_folder(tmp_path):
    """A local model/tokenizer folder whose config asks for custom code that, if ever imported, leaves a marker."""
    folder, marker = tmp_path / "custom", tmp_path / "remote-code-ran"
    folder.mkdir()
    auto_map = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "custom-remote", "auto_map": auto_map}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["custom.CustomTokenizer", None]}}
        )
    )
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_train_does_not_run_a_model_folders_custom_code_unless_asked(remote_code_folder, qa_file, tmp_path, capsys):
    """`train --model_name_or_path` on a folder with custom code refuses to load it: the code never runs."""
    folder, marker = remote_code_folder
    argv = ["train", "--dataset_name", str(qa_file), "--model_name_or_path", str(folder)]
    argv += ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true", "--max_steps", "1"]
    with pytest.raises(ValueError, match="trust_remote_code"):
        run_cli(argv, capsys)
    assert not marker.exists()


def test_inspect_does_not_run_a_tokenizer_folders_custom_code(remote_code_folder, qa_file, capsys):
    """`--tokenizer_name_or_path` on a folder with custom tokenizer code refuses it: the code never runs."""
    folder, marker = remote_code_folder
    with pytest.raises(ValueError, match="trust_remote_code"):
        run_cli(["inspect", "--dataset_name", str(qa_file), "--tokenizer_name_or_path", str(folder)], capsys)
    assert not marker.exists()


def test_the_config_defaults_leave_remote_code_off():
    """`MaskedSFTConfig` (which carries TRL's `trust_remote_code`, the flag `train` honours) defaults to off."""
    from trl_masked_sft import MaskedSFTConfig

    config = MaskedSFTConfig(output_dir="x", use_cpu=True)
    assert config.trust_remote_code is False
    assert not (config.model_init_kwargs or {}).get("trust_remote_code")


def test_inspect_html_of_a_dataset_with_a_hostile_role_has_no_script_element(tmp_path, capsys, chromium):
    """End to end, as issue 12 saw it: `inspect --html` on a conversation whose role and contents carry markup
    writes a page whose DOM, in headless Chromium, holds no script, img or svg element."""
    messages = [
        {"role": BROWSER_ROLE, "content": BROWSER_TEXT},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": f"Hello <script>{MARK}</script>"},
    ]
    data, page = tmp_path / "hostile.jsonl", tmp_path / "masks.html"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    code, _ = run_cli(["inspect", "--dataset_name", str(data), "--rows", "1", "--html", str(page)], capsys)
    assert code == 0
    written = page.read_text()
    # the role's tokens were rendered, escaped: their texts, read in order, spell the markup as text
    role_tokens = re.findall(r'<span class="tok masked r-other"[^>]*>(.*?)</span>', written)
    assert "&lt;script&gt;" in "".join(role_tokens)
    elements = parse(chromium(page, "--dump-dom"))
    assert "span" in elements.tags and not {"script", "img", "svg"} & set(elements.tags)
