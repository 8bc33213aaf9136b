"""Property-based tests of the masking rules: random prompt/completion lengths, templates anywhere, padding on either
side with any pad id, every truncation setting.

The invariants: no prompt token is ever trained; every completion token that survives truncation is trained; the eos
token is trained exactly once when the row fits; padding is never trained; the collator and the pipeline agree.
"""

from __future__ import annotations

import copy

from datasets import Dataset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTConfig, PreparationPipeline
from trl_masked_sft.masking import IGNORE_INDEX, TemplateMatcher, clean_row, spans_to_labels, truncate_row
from trl_masked_sft.tiny import build_tiny_tokenizer

FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SLOW = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TOKENIZER = build_tiny_tokenizer()
EOS = TOKENIZER.eos_token_id
#: Content tokens: no special token among them, so an eos or pad can only come from the rules under test.
token = st.integers(min_value=5, max_value=len(TOKENIZER) - 1)
text = st.text(alphabet="abcdefgh xyz0123456789?.,\n", min_size=1, max_size=40)


def truncation(length: int):
    """Truncation settings for a row of `length` tokens: max_length around the row's length, so rows are cut."""
    return st.fixed_dictionaries(
        {
            "max_length": st.one_of(st.none(), st.integers(min_value=2, max_value=length + 1)),
            "keep_end": st.booleans(),
            "min_completion": st.one_of(st.none(), st.integers(min_value=1, max_value=length)),
        }
    )


def _row(prompt: list[int], completion: list[int]) -> tuple[list[int], list[int]]:
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def _window(full: list[int], kept: list[int]) -> int:
    """Where `kept` sits in `full` (truncation keeps one contiguous window)."""
    starts = [s for s in range(len(full) - len(kept) + 1) if full[s : s + len(kept)] == kept]
    assert starts, "truncation must keep a contiguous window of the row"
    return starts[0]


# ---------------------------------------------------------------------------------------------------- masking.py


#: A row of distinct tokens split into prompt and completion, so a kept token tells where it came from.
distinct_row = st.lists(token, min_size=2, max_size=60, unique=True).flatmap(
    lambda ids: st.integers(1, len(ids) - 1).map(lambda cut: (ids[:cut], ids[cut:]))
)


@FAST
@given(distinct_row, st.data())
def test_truncation_never_trains_the_prompt_and_keeps_every_kept_completion_token_trained(row, data):
    """truncate_row keeps one window of at most max_length tokens, its labels aligned with its ids."""
    prompt, completion = row
    cut = data.draw(truncation(len(prompt) + len(completion)))
    if cut["keep_end"]:
        cut["min_completion"] = None  # the config refuses the two together
    ids, labels = _row(prompt, completion)
    kept_ids, kept_labels = truncate_row(
        ids, labels, cut["max_length"], keep_end=cut["keep_end"], min_completion=cut["min_completion"]
    )
    assert len(kept_ids) == len(kept_labels) <= (cut["max_length"] or len(ids))
    _window(ids, kept_ids)
    for token_id, label in zip(kept_ids, kept_labels, strict=True):
        if token_id in prompt:
            assert label == IGNORE_INDEX, "a prompt token is trained"
        else:
            assert label == token_id, "a kept completion token is not trained"


@FAST
@given(
    st.lists(token, min_size=1, max_size=30),
    st.lists(token, min_size=1, max_size=30),
    st.integers(2, 40),
    st.integers(1, 12),
)
def test_min_completion_keeps_the_answer_and_one_prompt_token(prompt, completion, max_length, min_completion):
    """With min_completion, a cut row keeps min(min_completion, completion, max_length - 1) completion tokens and at
    least one prompt token (position 0 is never a target)."""
    assume(min_completion < max_length)
    ids, labels = _row(prompt, completion)
    kept_ids, kept_labels = truncate_row(ids, labels, max_length, min_completion=min_completion)
    trained = sum(1 for label in kept_labels if label != IGNORE_INDEX)
    assert trained >= min(min_completion, len(completion), max_length - 1)
    assert kept_labels[0] == IGNORE_INDEX


@FAST
@given(st.lists(st.integers(-100, 300), min_size=1, max_size=30), st.data())
def test_spans_to_labels_keeps_labels_inside_the_spans_only(labels, data):
    """A position outside every span is ignored; inside, the label is kept (an ignored label stays ignored)."""
    n = len(labels)
    bounds = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=4))
    spans = [(min(a, b), max(a, b)) for a, b in bounds]
    out = spans_to_labels(labels, spans, IGNORE_INDEX)
    for i, label in enumerate(out):
        inside = any(start <= i < end for start, end in spans)
        assert label == (labels[i] if inside else IGNORE_INDEX)


@FAST
@given(
    st.lists(token, min_size=1, max_size=12),
    st.lists(token, min_size=1, max_size=12),
    st.integers(0, 8),
    st.booleans(),
    st.integers(0, len(TOKENIZER) - 1),
)
def test_clean_row_removes_padding_on_either_side_with_any_pad_id(prompt, completion, pads, left, pad_id):
    """Pre-padded rows (left or right, any pad id, even the eos or a content token) come out unpadded, their
    labels untouched; padding is found from attention_mask, never by id."""
    ids, labels = _row(prompt, completion + [EOS])
    padding = [pad_id] * pads
    mask = [1] * len(ids)
    example = {
        "input_ids": padding + ids if left else ids + padding,
        "labels": [IGNORE_INDEX] * pads + labels if left else labels + [IGNORE_INDEX] * pads,
        "attention_mask": [0] * pads + mask if left else mask + [0] * pads,
    }
    clean_ids, clean_labels = clean_row(example, row=0)
    assert clean_ids == ids and clean_labels == labels
    assert clean_labels.count(EOS) == 1


@FAST
@given(text, st.sampled_from(["\n", " ", "", "?", "a", "1", ")", "\n\n"]), text)
def test_a_response_template_anywhere_masks_everything_before_it(prefix, context, answer):
    """Whatever precedes the template (and however it merges with it), nothing before the template's end is
    trained and the answer is."""
    template = "### Answer:"
    answer = " " + answer.strip() if answer.strip() else " 42"
    ids = TOKENIZER(prefix + context + template + answer, add_special_tokens=False)["input_ids"]
    spans = TemplateMatcher(TOKENIZER, template).spans(ids)
    assert spans is not None
    start = spans[0][0]
    assert template in TOKENIZER.decode(ids[:start])
    assert answer.strip() in TOKENIZER.decode(ids[start:])


# ---------------------------------------------------------------------------------------------------- the collator


@FAST
@given(
    st.lists(
        st.tuples(st.lists(token, min_size=1, max_size=10), st.lists(token, min_size=1, max_size=10)),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["pad", "eos", "content"]),
    st.one_of(st.none(), st.integers(2, 8)),
)
def test_the_collator_never_trains_padding_and_keeps_each_rows_labels(rows, pad_kind, multiple):
    """Each row's labels come back unchanged in the batch (eos trained once, even when pad == eos); every padding
    position is ignored and has attention 0."""
    tokenizer = copy.deepcopy(TOKENIZER)
    pad_id = {"pad": TOKENIZER.pad_token_id, "eos": EOS, "content": 7}[pad_kind]
    tokenizer.pad_token = TOKENIZER.convert_ids_to_tokens(pad_id)
    collator = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer, pad_to_multiple_of=multiple)
    features = []
    for prompt, completion in rows:
        ids, labels = _row(prompt, completion + [EOS])
        features.append({"input_ids": ids, "labels": labels})
    batch = collator(features)
    for i, feature in enumerate(features):
        n = len(feature["input_ids"])
        assert batch["labels"][i, :n].tolist() == feature["labels"]
        assert batch["labels"][i, :n].tolist().count(EOS) == 1
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["input_ids"][i, n:] == pad_id).all()
    if multiple:
        assert batch["input_ids"].shape[1] % multiple == 0


# ---------------------------------------------------------------------------------------------------- the pipeline


def _pipeline(**overrides) -> PreparationPipeline:
    config = MaskedSFTConfig(output_dir="unused", report_to="none", use_cpu=True, **overrides)
    return PreparationPipeline.from_config(copy.deepcopy(TOKENIZER), config)


@SLOW
@given(
    st.lists(st.tuples(text, text), min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(4, 40)),
    st.one_of(st.none(), st.integers(1, 3)),
    st.sampled_from(["keep_start", "keep_end"]),
)
def test_the_pipeline_trains_the_completion_and_its_eos_only(pairs, max_length, min_completion, mode):
    """Prepared rows: no prompt token trained; every kept completion token trained; eos trained exactly once when the
    row fits; at most max_length tokens; the collator gives the same labels."""
    if mode == "keep_end":
        min_completion = None
    if max_length is not None and min_completion is not None:
        min_completion = min(min_completion, max_length - 1)
    prompts = [p + "?" for p, _ in pairs]
    completions = [" " + c for _, c in pairs]
    pipeline = _pipeline(max_length=max_length, min_completion_tokens=min_completion, truncation_mode=mode)
    prepared = pipeline.prepare(Dataset.from_dict({"prompt": prompts, "completion": completions}), enforce=False)
    collator = DataCollatorForCompletionOnlyLM(None, tokenizer=pipeline.tokenizer)
    rows = list(prepared.dataset)
    batch = collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    for i, (row, prompt, completion) in enumerate(zip(rows, prompts, completions, strict=True)):
        full = TOKENIZER(prompt + completion + TOKENIZER.eos_token)["input_ids"]
        prompt_ids = TOKENIZER(prompt)["input_ids"]
        boundary = next((k for k, (a, b) in enumerate(zip(prompt_ids, full, strict=False)) if a != b), len(prompt_ids))
        reference = [IGNORE_INDEX] * boundary + full[boundary:]  # prompt masked; completion and eos trained
        ids, labels = row["input_ids"], row["labels"]
        cut = {"keep_end": mode == "keep_end", "min_completion": min_completion}
        assert (ids, labels) == truncate_row(full, reference, max_length, **cut), f"row {i}"
        assert len(ids) <= (max_length or len(full))
        trained_eos = sum(1 for label in labels if label == EOS)
        assert trained_eos <= 1
        if max_length is None or len(full) <= max_length:
            assert trained_eos == 1 and ids == full
        n = len(ids)
        assert batch["labels"][i, :n].tolist() == labels and (batch["labels"][i, n:] == IGNORE_INDEX).all()


@SLOW
@given(
    st.lists(
        st.tuples(st.lists(token, min_size=1, max_size=8), st.lists(token, min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
    st.integers(0, len(TOKENIZER) - 1),
    st.integers(0, 5),
)
def test_pre_padded_rows_prepare_like_unpadded_rows_and_like_the_collator(rows, left, pad_id, pads):
    """Pre-tokenized rows padded on either side with any pad id prepare to the labels of the same rows unpadded, and
    the collator given the padded rows agrees."""
    padded, plain = [], []
    for prompt, completion in rows:
        ids, labels = _row(prompt, completion + [EOS])
        plain.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
        pad, zeros, ignored = [pad_id] * pads, [0] * pads, [IGNORE_INDEX] * pads
        padded.append(
            {
                "input_ids": pad + ids if left else ids + pad,
                "labels": ignored + labels if left else labels + ignored,
                "attention_mask": zeros + [1] * len(ids) if left else [1] * len(ids) + zeros,
            }
        )
    pipeline = _pipeline(max_length=None)
    from_padded = list(pipeline.prepare(Dataset.from_list(padded), enforce=False).dataset)
    from_plain = list(pipeline.prepare(Dataset.from_list(plain), enforce=False).dataset)
    assert [(r["input_ids"], r["labels"]) for r in from_padded] == [(r["input_ids"], r["labels"]) for r in from_plain]
    batch = DataCollatorForCompletionOnlyLM(None, tokenizer=pipeline.tokenizer)(padded)
    for i, row in enumerate(from_plain):
        n = len(row["input_ids"])
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()


def test_the_tokenizer_adds_no_special_token_by_itself():
    """The tiny tokenizer adds no special token by itself, so a trained eos can only come from the pipeline."""
    ids = TOKENIZER("abc")["input_ids"]
    assert EOS not in ids and TOKENIZER.bos_token_id not in ids
    assert TOKENIZER.pad_token_id != EOS
