"""`layout.py`, `formats.py` and `row_checks.py`: the layout decided once, rows coerced, value checks, and the batched
tokenization compared with TRL's own."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset
from trl import SFTConfig, SFTTrainer

from trl_masked_sft import DatasetFormatError, DatasetTypeError, MaskingOptions
from trl_masked_sft.formats import apply_formatting, coerce_dataset
from trl_masked_sft.layout import Layout, detect_layout
from trl_masked_sft.row_checks import check_values
from trl_masked_sft.text_rows import tokenize_text_rows
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

PROMPTS = ["How many grams are there in 3 kg?", "Convert 5 hour to minutes.", "abc", "What is 2 kg in gram?"]
COMPLETIONS = [" <answer>3000</answer>", " <answer>300</answer>", "def", ""]


def _trl_prepared(tokenizer, tmp_path, dataset: Dataset, completion_only: bool) -> Dataset:
    """What TRL's own `SFTTrainer._prepare_dataset` makes of `dataset` (no truncation)."""
    args = SFTConfig(
        output_dir=str(tmp_path), bf16=False, report_to="none", max_length=None, completion_only_loss=completion_only
    )
    trainer = SFTTrainer(build_tiny_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
    return trainer.train_dataset


@pytest.mark.parametrize("completion_only", [True, False])
def test_batched_tokenization_equals_trl_preparation_of_prompt_completion_rows(tokenizer, tmp_path, completion_only):
    """Same input_ids, labels and completion (eos appended once) as TRL where no token merges across the boundary."""
    completions = list(COMPLETIONS)
    completions[1] += tokenizer.eos_token  # already ends with eos: not appended twice
    dataset = Dataset.from_dict({"prompt": PROMPTS, "completion": completions, "extra": [1, 2, 3, 4]})
    layout = detect_layout(dataset, MaskingOptions(), "train")
    ours = tokenize_text_rows(dataset, tokenizer, layout, MaskingOptions(completion_only=completion_only), "train")
    theirs = _trl_prepared(tokenizer, tmp_path, dataset, completion_only)
    for column in ("input_ids", "labels", "completion", "prompt", "extra"):
        assert ours[column] == theirs[column], column


def test_batched_tokenization_equals_trl_preparation_of_text_rows(tokenizer, tmp_path):
    """Text rows: the eos token appended, every token a label, as TRL does."""
    dataset = Dataset.from_dict({"text": ["hello world", "good morning" + tokenizer.eos_token, "x"]})
    ours = tokenize_text_rows(dataset, tokenizer, Layout.TEXT, MaskingOptions(), "train")
    theirs = _trl_prepared(tokenizer, tmp_path, dataset, completion_only=True)
    for column in ("input_ids", "labels", "text"):
        assert ours[column] == theirs[column], column


@pytest.mark.parametrize(
    ("data", "layout"),
    [
        (
            {
                "prompt": [[{"role": "user", "content": "hi"}]],
                "completion": [[{"role": "assistant", "content": "yo"}]],
            },
            Layout.CONVERSATIONAL_PROMPT_COMPLETION,
        ),
        ({"messages": [[{"role": "user", "content": "hi"}]]}, Layout.CONVERSATION),
        ({"conversations": [[{"from": "human", "value": "hi"}]]}, Layout.CONVERSATION),
        ({"input_ids": [[1, 2, 3]], "prompt": ["a"]}, Layout.PRETOKENIZED),
        ({"prompt": ["a"], "completion": ["b"], "text": ["ab"]}, Layout.PROMPT_COMPLETION),
        ({"text": ["ab"]}, Layout.TEXT),
    ],
    ids=["conversational-pc", "messages", "sharegpt", "pre-tokenized", "text-beside-pc", "text"],
)
def test_the_layout_is_decided_once_from_the_columns(data, layout):
    """Each shape of rows maps to one layout; a text column beside prompt/completion trains the completion."""
    assert detect_layout(Dataset.from_dict(data), MaskingOptions(), "train") is layout


def test_an_explicit_dataset_text_field_wins_over_the_prompt_column():
    """`dataset_text_field="prompt"` (whole texts in a column named `prompt`) is text, not a prompt without answer."""
    dataset = Dataset.from_dict({"prompt": ["a whole text"], "other": [1]})
    assert detect_layout(dataset, MaskingOptions(text_field="prompt"), "train") is Layout.TEXT


def test_a_dataset_with_nothing_to_train_on_names_its_columns_and_the_fields():
    """Unknown columns: the error lists them and names `prompt_column`/`completion_column`."""
    with pytest.raises(DatasetFormatError, match=r"\['question', 'answer'\].*prompt_column"):
        detect_layout(Dataset.from_dict({"question": ["q"], "answer": ["a"]}), MaskingOptions(), "train")


def test_assistant_only_loss_on_rows_that_are_not_conversations_is_refused():
    """As TRL refuses it: `assistant_only_loss=True` needs conversations."""
    with pytest.raises(DatasetFormatError, match="assistant_only_loss"):
        detect_layout(
            Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}), MaskingOptions(assistant_only=True), "t"
        )


def test_a_null_completion_names_the_row_and_the_column():
    """A None completion is refused with its row, not tokenized into a crash."""
    dataset = Dataset.from_dict({"prompt": ["a", "b"], "completion": ["x", None]})
    with pytest.raises(DatasetTypeError, match="Row 1 .*`completion`"):
        check_values(dataset, Layout.PROMPT_COMPLETION, MaskingOptions(), "train")


def test_streamed_rows_are_tokenized_like_the_same_rows_in_memory(tokenizer):
    """The batched tokenization serves streaming datasets too, with the same ids and labels."""
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    stream = IterableDataset.from_generator(lambda: iter(rows))
    in_memory = Dataset.from_list(rows)
    options = MaskingOptions()
    streamed = list(tokenize_text_rows(stream, tokenizer, Layout.PROMPT_COMPLETION, options, "t"))
    expected = tokenize_text_rows(in_memory, tokenizer, Layout.PROMPT_COMPLETION, options, "t")
    assert [r["labels"] for r in streamed] == expected["labels"]
    assert [r["input_ids"] for r in streamed] == expected["input_ids"]


def test_numeric_answers_of_question_answer_rows_are_written_in_the_homework_format():
    """`[question, number]` rows become `" <answer>120.0</answer>"` completions, everywhere they enter."""
    dataset = coerce_dataset(
        [["Can you change 2 hour to min?", 120], ["Say hi", "hello"]],
        prompt_column="prompt",
        completion_column="completion",
        dataset_name="train",
    )
    assert dataset["completion"] == [" <answer>120.0</answer>", "hello"]


def test_a_batched_formatting_function_from_old_trl_scripts_is_detected():
    """The docs' batched `formatting_prompts_func` (dict of lists in, list of texts out) formats every row."""

    def formatting_prompts_func(example):
        return [f"### Q: {q}\n### A: {a}" for q, a in zip(example["instruction"], example["output"], strict=True)]

    dataset = Dataset.from_dict({"instruction": ["What is two plus two?", "Name a colour"], "output": ["4", "red"]})
    assert apply_formatting(dataset, formatting_prompts_func, "train")["text"] == [
        "### Q: What is two plus two?\n### A: 4",
        "### Q: Name a colour\n### A: red",
    ]


def test_a_formatting_function_that_returns_no_string_is_refused():
    """A per-row function must return a string; the error names the row and what it returned."""
    formatted = apply_formatting(
        Dataset.from_dict({"a": ["x", "y"]}), lambda ex: ex["a"] if ex["a"] == "x" else 3, "t"
    )
    with pytest.raises(DatasetTypeError, match=r"Row 1 .*`formatting_func`.*got int"):
        check_values(formatted, Layout.TEXT, MaskingOptions(), "train")


def test_every_completion_empty_says_how_many_rows():
    """Two rows, both completions empty: the dataset is refused, counting the rows."""
    data = Dataset.from_dict({"prompt": ["a?", "b?"], "completion": ["", " "]})
    with pytest.raises(
        DatasetFormatError, match=r"Every completion in the train dataset \(`completion`\) is empty \(all 2 rows\)"
    ):
        check_values(data, Layout.PROMPT_COMPLETION, MaskingOptions(), "train")


def test_one_row_with_an_empty_completion_is_that_rows_problem_not_every_completions():
    """A single row (e.g. the one row the inspector or the audit page looks at) with an empty completion is marked
    `empty completion`, as in a larger dataset; "every completion" would claim what was not seen."""
    from trl_masked_sft import inspect_rows

    data = Dataset.from_dict({"prompt": ["a?", "b?"], "completion": [" c", ""]})
    rows = inspect_rows(data, build_tiny_tokenizer(), None, rows=1, start=1)
    assert rows[0].index == 1 and rows[0].problem == "empty completion"


def test_the_completion_column_help_states_the_real_number_rules():
    """`--completion_column`'s help says what preparation does: `str()` in a column, 3 decimals in a pair's answer."""
    from trl_masked_sft import MaskedSFTConfig
    from trl_masked_sft.formats import format_answer
    from trl_masked_sft.row_checks import to_text

    help_text = MaskedSFTConfig.__dataclass_fields__["completion_column"].metadata["help"]
    assert "written with `str()`" in help_text and "round(answer, 3)" in help_text
    assert to_text(2.123456, row=0, column="completion", dataset_name="train") == "2.123456"
    rows = coerce_dataset([["q?", 2.123456]], prompt_column="prompt", completion_column="completion", dataset_name="t")
    assert rows[0]["completion"] == " " + format_answer(2.123456) == " <answer>2.123</answer>"
