"""Assistant-only masks on the real chat templates TRL ships, and on unusual templates TRL does not know.

Every `<family>.jinja` in the installed `trl/chat_templates/` that has a `<family>_training.jinja` (TRL's copy with
`{% generation %}` markers) is rendered offline with a byte-level BPE tokenizer whose special tokens are those the
templates use. A conversation with a system prompt, two user turns and two replies (and a tool call and its result,
where the template supports tools) is masked from the ORIGINAL template and compared with TRL's marker masks from the
training copy, on every token of message text.

TRL's training copies are a reference here, not a way of ours: every family is located by content offsets with the
default order (the copies train headers and the newline after the stop, which the one end-of-turn rule doesn't).

Where our way (content offsets, also what any template TRL doesn't know gets) differs from TRL's marker masks, it
is never on message text, only on template tokens, by choice:

- the newline after the end-of-turn token (cohere2 aside, every ChatML, Gemma, Idefics3/SmolVLM, Phi-3 template): we
  train up to the end-of-turn token, which is where generation stops; TRL's copies also train the newline after it;
- the assistant header where the copy puts it inside the generation block (DeepSeek `<｜Assistant｜>`, gpt-oss and Muse
  Glimmer `<|start|>assistant`) and whatever the generation prompt already holds (Nemotron-3 `<think>`, Qwen3.8
  `<think>\\n`; Qwen2.5's newline after `assistant`): at inference these come from the prompt, not from the model;
- Phi-3/3.5's eos after the last turn's `<|end|>\\n`: the template's own suffix, not the reply's end of turn;
- Llava-Next's space between `[/INST]` and the reply, which the template writes.

glm4moe ends replies with no end-of-turn token (the next header ends them): the last reply gets the eos appended
(`ChatMask.note`). Tool-call turns: diffusion_gemma renders the tool's result inside the model's own turn and glm4moe
has no end-of-turn token (with the default stop set), so content offsets can't bound a tool-call turn there and the
prefix diff is used. deepseekv3's original template can't render dict tool arguments (TRL's copy fixes that), so its tool
conversation passes `arguments` as a JSON string.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import trl
from template_families import FAMILIES as REAL_FAMILIES
from template_families import family_tokenizer as real_tokenizer
from template_families import trained_runs
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from trl.chat_template_utils import get_training_chat_template, supports_tool_calling

from trl_masked_sft.chat.conversations import content_text, fit_content, message_spans
from trl_masked_sft.chat.labels import MARKERS, METHODS, OFFSETS, PREFIX_DIFF, chat_labels, is_trained

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
FAMILIES = sorted(p.name[: -len("_training.jinja")] for p in TEMPLATES.glob("*_training.jinja"))
SPECIAL = re.compile(
    r"<\|[^|<>'\" ]{1,40}\|>|<｜[^｜]{1,40}｜>|<\|[a-z_]+>|<[a-z_]+\|>|<(?:start|end)_of_[a-z]+>|\[/?INST\]|\[gMASK\]"
    r"|<sop>|</?s>"
)
TAGS = re.compile(r"</?(?:think|tool_call|tool_response|tools)>")  # added, not special, as in Qwen's tokenizers
#: Families whose original renders other ids than TRL's copy on the conversation without tools.
REWRITTEN = {"glm4moe", "qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert kilograms to grams.",
            "parameters": {"type": "object", "properties": {"kg": {"type": "number"}}, "required": ["kg"]},
        },
    }
]


def _read(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def base_tokenizer():
    """A byte-level BPE trained on the templates' text, with their special tokens (and `<think>`-style tags)."""
    sources = [_read(f) for f in FAMILIES] + [_read(f"{f}_training") for f in FAMILIES]
    specials = sorted({t for s in sources for t in SPECIAL.findall(s)} | {"<|bos|>", "<|eos|>", "<|pad|>"})
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([SPECIAL.sub(" ", s) for s in sources], trainer=trainer)
    tags = sorted({t for s in sources for t in TAGS.findall(s)})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )


@pytest.fixture(scope="module")
def family_tokenizer(base_tokenizer):
    made = {}

    def make(family: str):
        if family not in made:
            made[family] = copy.deepcopy(base_tokenizer)
            made[family].chat_template = _read(family)
        return made[family]

    return make


def _conversation(tokenizer, tools: bool) -> list[dict]:
    """System, user, (tool call, tool result,) reply, user, reply, in the shape the template renders: text parts for
    vision-language templates, no system turn for Gemma (v1), tool arguments as a JSON string for DeepSeek-V3."""
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "How many grams in 2 kg?"},
    ]
    if tools:
        call = {"type": "function", "function": {"name": "convert", "arguments": {"kg": 2}}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "convert", "content": "2000"},
        ]
    messages += [
        {"role": "assistant", "content": "That is 2000 grams."},
        {"role": "user", "content": "And in 3 kg?"},
        {"role": "assistant", "content": "That is 3000 grams."},
    ]
    for system, parts, as_text in [(1, False, False), (1, True, False), (0, False, False), (1, False, True)]:
        shaped = fit_content(messages[1 - system :], parts=parts)
        if as_text and tools:
            shaped[2] = {
                **shaped[2],
                "tool_calls": [{**call, "function": {**call["function"], "arguments": '{"kg": 2}'}}],
            }
        try:
            text = tokenizer.apply_chat_template(shaped, tokenize=False, tools=TOOLS if tools else None)
        except Exception:  # noqa: BLE001 - this shape doesn't fit the template: try the next
            continue
        if "That is 3000 grams." in text:
            return shaped
    raise AssertionError("no conversation shape renders under this template")


def _content_tokens(tokenizer, messages, kwargs) -> tuple[list[int], dict[int, bool]]:
    """The render's ids, and for every token holding message text whether it belongs to a reply."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    kinds = {}
    for message, span in zip(messages, message_spans(text, messages), strict=True):
        assert span is not None or not content_text(message.get("content")).strip(), f"{message} not in the render"
        for pos, (start, end) in enumerate(out["offset_mapping"]):
            if span is not None and start < span[2] and end > span[1]:
                kinds[pos] = message["role"] == "assistant"
    return list(out["input_ids"]), kinds


CASES = [(f, tools) for f in FAMILIES for tools in (False, True)]


def _skip_without_tools(family_tokenizer, family, tools):
    if tools and not supports_tool_calling(family_tokenizer(family)):
        pytest.skip(f"{family}'s template renders no tool calls")


@pytest.mark.parametrize(("family", "tools"), CASES, ids=[f"{f}-{'tools' if t else 'chat'}" for f, t in CASES])
def test_every_family_trains_every_reply_and_no_other_message(family_tokenizer, family, tools):
    """No refusal, no exception: each reply's text is trained, no system, user or tool text is."""
    _skip_without_tools(family_tokenizer, family, tools)
    tokenizer = family_tokenizer(family)
    messages = _conversation(tokenizer, tools)
    kwargs = {"tools": TOOLS} if tools else {}
    mask = chat_labels(tokenizer, messages, **kwargs)
    assert mask.problem is None, mask.problem
    ids, kinds = _content_tokens(tokenizer, messages, kwargs)
    assert mask.input_ids[: len(ids)] == ids
    wrong = [
        (pos, tokenizer.decode([ids[pos]])) for pos, reply in kinds.items() if (mask.labels[pos] != -100) != reply
    ]
    assert wrong == [], f"{family} ({mask.method}): tokens trained wrongly {wrong}"


def _trl_masks(tokenizer, messages, kwargs):
    training = get_training_chat_template(tokenizer)
    out = tokenizer.apply_chat_template(
        messages, chat_template=training, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("method", ["default", OFFSETS])
@pytest.mark.parametrize(("family", "tools"), CASES, ids=[f"{f}-{'tools' if t else 'chat'}" for f, t in CASES])
def test_masks_equal_trl_marker_masks_on_every_content_token(family_tokenizer, family, tools, method):
    """Where TRL's training copy renders the original's ids, our masks from the original equal its marker masks on
    every token of message text (content offsets alone too, the way templates TRL doesn't know are masked)."""
    _skip_without_tools(family_tokenizer, family, tools)
    tokenizer = family_tokenizer(family)
    messages = _conversation(tokenizer, tools)
    kwargs = {"tools": TOOLS} if tools else {}
    theirs_ids, theirs = _trl_masks(tokenizer, messages, kwargs)
    ids, kinds = _content_tokens(tokenizer, messages, kwargs)
    if theirs_ids != ids:
        pytest.skip(f"TRL's training copy of {family} renders other ids than the original")
    mask = chat_labels(tokenizer, messages, methods=None if method == "default" else (OFFSETS,), **kwargs)
    if method == OFFSETS and tools and family in ("diffusion_gemma", "glm4moe"):
        assert "no end-of-turn token to bound them" in mask.problem  # documented above: other ways take these
        return
    assert mask.problem is None, mask.problem
    ours = [int(label != -100) for label in mask.labels[: len(ids)]]
    differ = [(pos, tokenizer.decode([ids[pos]])) for pos in kinds if ours[pos] != theirs[pos]]
    assert differ == [], f"{family}: content tokens where we and TRL disagree: {differ}"


def test_the_default_way_per_family_is_the_documented_one(family_tokenizer):
    """TRL's training copies are no way of ours (they train headers and the newline after the stop): every family
    TRL ships is located by content offsets, whatever its copy renders."""
    used = {f: chat_labels(family_tokenizer(f), _conversation(family_tokenizer(f), False)).method for f in FAMILIES}
    assert set(used.values()) == {OFFSETS}


def test_a_reply_without_end_of_turn_token_gets_the_eos_appended(family_tokenizer):
    """glm4moe ends replies with the next header only: the final reply is closed with the eos, and the note says so."""
    tokenizer = family_tokenizer("glm4moe")
    mask = chat_labels(tokenizer, _conversation(tokenizer, False))
    assert mask.input_ids[-1] == tokenizer.eos_token_id and mask.labels[-1] == tokenizer.eos_token_id
    assert "appended" in mask.note and is_trained(mask.reasons[-1])


# Templates TRL does not know, written for these tests.
DROPS_LAST_EOT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% if not loop.last %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_end|>\n<|im_start|>assistant\n' }}{% endif %}"
)
DROPS_EARLIER_REASONING = (  # like Qwen3: reasoning shown in the final reply only, thinking opened by the prompt
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['role'] == 'assistant' and loop.last and m.get('reasoning_content') %}"
    "{{ '<think>\n' + m['reasoning_content'] + '\n</think>\n\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)
NEEDS_A_USER = (  # like Qwen3.5: raises on a conversation prefix with no user message
    "{% if messages | selectattr('role', 'equalto', 'user') | list | length == 0 %}"
    "{{ raise_exception('No user query found in messages.') }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SUFFIXED = (  # text after the last turn, which moves when a prefix is rendered alone
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|eos|>\n' }}{% endfor %}"
    "{% if not add_generation_prompt %}{{ '(end of conversation)' }}{% endif %}"
)
MARKED_HEADER_INSIDE = (  # generation block holds the header too: a prefix diff would disagree, the markers rule
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ '<|im_start|>assistant\n' + m['content'] }}{% endgeneration %}{{ '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "How many grams in 2 kg?"},
    {"role": "assistant", "content": "2000 grams.", "reasoning_content": "Two times a thousand."},
    {"role": "user", "content": "And in 3 kg?"},
    {"role": "assistant", "content": "3000 grams.", "reasoning_content": "Three times a thousand."},
]


def test_a_template_that_drops_the_last_end_of_turn_token_gets_it_back(base_tokenizer):
    """The final reply trains the template's own end-of-turn token, appended, like every earlier reply."""
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=DROPS_LAST_EOT)
    assert mask.method == OFFSETS
    assert trained_runs(base_tokenizer, mask) == ["2000 grams.<|im_end|>", "3000 grams.<|im_end|>"]
    assert "'<|im_end|>' appended" in mask.note


def test_a_template_that_rewrites_earlier_replies_trains_the_reasoning_it_shows(base_tokenizer):
    """Earlier reasoning is not in the render (noted); the final reply trains its reasoning block, after the
    `<think>\n` the generation prompt already holds."""
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=DROPS_EARLIER_REASONING)
    assert mask.method == OFFSETS
    final = "Three times a thousand.\n</think>\n\n3000 grams.<|im_end|>"
    assert trained_runs(base_tokenizer, mask) == ["2000 grams.<|im_end|>", final]
    assert "reasoning of message 2" in mask.note


def test_a_template_that_raises_on_a_partial_conversation_does_not_crash(base_tokenizer):
    """The prefix diff would render `[system]` alone and hit the template's exception; one render of it all works."""
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=NEEDS_A_USER)
    assert mask.problem is None and mask.method == OFFSETS
    assert trained_runs(base_tokenizer, mask) == ["2000 grams.<|im_end|>", "3000 grams.<|im_end|>"]
    alone = chat_labels(base_tokenizer, CONVERSATION, chat_template=NEEDS_A_USER, methods=(PREFIX_DIFF,))
    assert "No user query found" in alone.problem and set(alone.labels) == {-100}


def test_text_after_the_last_turn_is_not_trained(base_tokenizer):
    """The template's closing text follows the last end-of-turn token and stays masked."""
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=SUFFIXED)
    assert mask.method == OFFSETS
    assert trained_runs(base_tokenizer, mask) == ["2000 grams.<|eos|>", "3000 grams.<|eos|>"]


def test_generation_markers_locate_turns_and_the_one_rule_settles_them(base_tokenizer):
    """A marked template's blocks locate the turns; the rule every way shares still leaves out the header the block
    holds (the generation prompt writes it) and adds the stop token the block leaves out."""
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=MARKED_HEADER_INSIDE)
    assert mask.method == MARKERS and mask.problem is None
    assert trained_runs(base_tokenizer, mask) == ["2000 grams.<|im_end|>", "3000 grams.<|im_end|>"]
    assert "leaves out its stop token" in mask.note


def test_a_row_no_way_can_locate_is_refused_with_what_blocks_each_way(base_tokenizer):
    """A template that rewrites the replies and moves text between renders is refused, naming the fix."""
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper }}{% if loop.last %} END{% endif %}\n{% endfor %}"
    mask = chat_labels(base_tokenizer, CONVERSATION, chat_template=template)
    assert set(mask.labels) == {-100} and mask.method is None
    for method in METHODS:
        assert f"{method}:" in mask.problem
    assert "{% generation %}" in mask.problem and "`chat_template_path`" in mask.problem
    assert mask.row_reason.startswith("chat turns not located: ")


def test_a_row_the_template_cannot_render_is_refused_with_the_shape_it_needs(family_tokenizer):
    """DeepSeek-V3's template concatenates tool arguments: a dict there is reported as the row's shape, not a crash."""
    tokenizer = family_tokenizer("deepseekv3")
    messages = _conversation(tokenizer, True)
    call = {"type": "function", "function": {"name": "convert", "arguments": {"kg": 2}}}
    messages[2] = {**messages[2], "tool_calls": [call]}
    mask = chat_labels(tokenizer, messages, tools=TOOLS)
    assert mask.input_ids == [] and mask.labels == []
    assert mask.problem.startswith("the chat template can't render this conversation (TypeError")
    assert "`arguments` as a JSON string" in mask.problem


# Real templates of families TRL does not ship (tests/data/chat_templates/, sources in its README), each with a
# tokenizer holding that family's special tokens. The end-of-turn rule (docs/chat_templates.md) on each of them.
REPLIES = ("That is 2000 grams.", "That is 3000 grams.")
REAL = [(f, m) for f in sorted(REAL_FAMILIES) for m in ("default", OFFSETS, PREFIX_DIFF)]
#: Templates whose conversation prefixes render differently alone (Alpaca's and Falcon's whitespace; Mistral v3
#: moves the system prompt to the last user turn): the prefix diff refuses them, the default way does not.
PREFIX_DIFF_REFUSES = {"alpaca", "falcon", "mistral-v0.3", "mistral-v3-tekken"}


def _real_conversation(tokenizer) -> list[dict]:
    """System, user, reply, user, reply; without the system turn where the template refuses one (Mistral v0.1)."""
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "How many grams in 2 kg?"},
        {"role": "assistant", "content": REPLIES[0]},
        {"role": "user", "content": "And in 3 kg?"},
        {"role": "assistant", "content": REPLIES[1]},
    ]
    try:
        tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - roles must alternate from the first message
        return messages[1:]
    return messages


@pytest.mark.parametrize(("family", "method"), REAL, ids=[f"{f}-{m}" for f, m in REAL])
def test_real_templates_train_each_reply_with_its_stop_token_and_nothing_of_the_next_turn(family, method):
    """Each reply's content plus the stop token the template prints after it (after a space, for Llama-2) is
    trained, and nothing else: no header, no next-turn bos (even when bos == eos), no user or system text."""
    tokenizer, spec = real_tokenizer(family), REAL_FAMILIES[family]
    messages = _real_conversation(tokenizer)
    mask = chat_labels(tokenizer, messages, methods=None if method == "default" else (method,))
    if method == PREFIX_DIFF and family in PREFIX_DIFF_REFUSES:
        assert "render differently alone" in mask.problem and set(mask.labels) == {-100}
        return
    assert mask.problem is None, mask.problem
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert mask.input_ids[: len(ids)] == ids  # the template's own rendering, tokens appended only after it
    runs = trained_runs(tokenizer, mask)
    stops = [spec["stop"], spec["stop"]] if spec["stop"] else ["", spec["eos"]]  # Falcon: eos appended at the end
    assert len(runs) == 2, runs
    for run, reply, stop in zip(runs, REPLIES, stops, strict=True):
        assert re.fullmatch(rf"\s?{re.escape(reply)}\s*{re.escape(stop)}", run), f"{family}: trained {run!r}"


def test_every_real_family_is_in_the_documented_table():
    """docs/chat_templates.md lists each family kept under tests/data/chat_templates/."""
    doc = (Path(__file__).parents[1] / "docs" / "chat_templates.md").read_text(encoding="utf-8")
    assert [f for f in REAL_FAMILIES if f"| {f} |" not in doc] == []
