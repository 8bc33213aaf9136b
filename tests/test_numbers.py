"""One rule for numbers in prompts, completions and `[question, answer]` rows, whatever the rows come in.

A finite number in a prompt or completion column is written as text with `str()` (a list of dicts, a typed
`Dataset` or a streamed `IterableDataset` alike); in `[question, answer]` rows a numeric answer is written
`" <answer>{answer}</answer>"` (the homework's format). NaN, inf and bools are refused naming the user's column.
"""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset

from trl_masked_sft import DatasetTypeError, MaskedSFTConfig, MaskedSFTTrainer, PreparationPipeline

IGNORE = -100


def layouts(rows: list[dict]) -> dict:
    return {
        "list": rows,
        "dataset": Dataset.from_list(rows),
        "stream": IterableDataset.from_generator(lambda: iter(rows)),
    }


def pipeline(tokenizer):
    config = MaskedSFTConfig(output_dir="unused", prompt_column="Question", completion_column="Answer")
    return PreparationPipeline.from_config(tokenizer, config)


def texts(tokenizer, prepared) -> list[tuple[str, str]]:
    """(whole text, supervised text) of each prepared row."""
    out = []
    for row in prepared.dataset:
        kept = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
        out.append((tokenizer.decode(row["input_ids"]), tokenizer.decode(kept)))
    return out


@pytest.mark.parametrize("answers", [[4.0, 6.5], [4, 6]], ids=["float completion column", "int completion column"])
def test_numeric_completions_are_written_with_str_in_every_layout(tokenizer, answers):
    """A typed `Dataset` with a float `Answer` column trains `str(answer)` as lists and streams do."""
    rows = [{"Question": f"What is {i}?", "Answer": a} for i, a in enumerate(answers)]
    seen = {name: texts(tokenizer, pipeline(tokenizer).prepare(data)) for name, data in layouts(rows).items()}
    expected = [(f"What is {i}?{a}<|eos|>", f"{a}<|eos|>") for i, a in enumerate(answers)]
    for name, got in seen.items():
        assert [(full.replace(" ", ""), kept.replace(" ", "")) for full, kept in got] == [
            (full.replace(" ", ""), kept.replace(" ", "")) for full, kept in expected
        ], name
    assert seen["list"] == seen["dataset"] == seen["stream"]


def test_numeric_prompts_are_written_with_str_in_every_layout(tokenizer):
    """An int prompt column is text too, in a typed `Dataset` as in a list."""
    rows = [{"Question": 7, "Answer": " seven"}, {"Question": 8, "Answer": " eight"}]
    seen = {name: texts(tokenizer, pipeline(tokenizer).prepare(data)) for name, data in layouts(rows).items()}
    assert seen["list"] == seen["dataset"] == seen["stream"]
    assert seen["dataset"][0][1] == " seven<|eos|>"


@pytest.mark.parametrize("layout", ["list", "dataset", "stream"])
@pytest.mark.parametrize(
    ("value", "fix"),
    [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (True, "a bool is not text")],
)
def test_numbers_without_text_are_refused_naming_the_users_column(tokenizer, layout, value, fix):
    """NaN, inf and bools name `Answer` (the user's column), never the internal `completion`, and no field
    the user did not set (`dataset_text_field`, `formatting_func`)."""
    rows = [{"Question": "What is 1?", "Answer": value}, {"Question": "What is 2?", "Answer": value}]
    with pytest.raises(DatasetTypeError) as info:
        prepared = pipeline(tokenizer).prepare(layouts(rows)[layout])
        list(prepared.dataset)  # a stream is checked as it is read
    message = str(info.value)
    assert "Row 0 of the train dataset" in message and "`Answer`" in message and fix in message
    for wrong in ("`completion`", "dataset_text_field", "formatting_func", "holds a number"):
        assert wrong not in message


def test_trainer_takes_a_typed_float_answer_column(tokenizer, model, make_config):
    """The issue's case: `completion_column="Answer"` over a float column trains instead of being refused."""
    data = Dataset.from_dict(
        {"Question": [f"What is {i} + 0.5?" for i in range(8)], "Answer": [i + 0.5 for i in range(8)]}
    )
    config = make_config(prompt_column="Question", completion_column="Answer")
    trainer = MaskedSFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    kept = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])
    assert kept.replace(" ", "") == "0.5<|eos|>"


@pytest.mark.parametrize(("answer", "shown"), [(4.0, " <answer>4.0</answer>"), (7, " <answer>7.0</answer>")])
def test_question_answer_pairs_keep_the_homework_format(tokenizer, answer, shown):
    """`[question, answer]` rows: a numeric answer is `" <answer>{answer}</answer>"`."""
    prepared = pipeline(tokenizer).prepare([["What is it?", answer]])
    assert texts(tokenizer, prepared)[0][1] == shown + "<|eos|>"


def test_question_answer_pair_with_nan_names_the_completion_column(tokenizer):
    """A NaN answer in a pair is refused naming the configured column."""
    with pytest.raises(DatasetTypeError, match=r"Row 1 of the train dataset: column `Answer`.*NaN or infinite"):
        pipeline(tokenizer).prepare([["q", 1.0], ["r", float("nan")]])
