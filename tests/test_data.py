"""Fast preparation paths of `data.py`, each compared with the plain path it replaces on the same rows."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset
from trl import SFTConfig, SFTTrainer

from trl_masked_sft.data import map_rows, tokenize_plain
from trl_masked_sft.tiny import build_tiny_model

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
    """Same input_ids, labels and completion (eos appended once) as TRL, including a prompt that is no token prefix."""
    completions = list(COMPLETIONS)
    completions[1] += tokenizer.eos_token  # already ends with eos: not appended twice
    dataset = Dataset.from_dict({"prompt": PROMPTS, "completion": completions, "extra": [1, 2, 3, 4]})
    ours = tokenize_plain(dataset, tokenizer, text_field="text", completion_only=completion_only, dataset_name="train")
    theirs = _trl_prepared(tokenizer, tmp_path, dataset, completion_only)
    for column in ("input_ids", "labels", "completion", "prompt", "extra"):
        assert ours[column] == theirs[column], column


def test_batched_tokenization_equals_trl_preparation_of_text_rows(tokenizer, tmp_path):
    """Text rows: the eos token appended, every token a label, as TRL does."""
    dataset = Dataset.from_dict({"text": ["hello world", "good morning" + tokenizer.eos_token, "x"]})
    ours = tokenize_plain(dataset, tokenizer, text_field="text", completion_only=True, dataset_name="train")
    theirs = _trl_prepared(tokenizer, tmp_path, dataset, completion_only=True)
    for column in ("input_ids", "labels", "text"):
        assert ours[column] == theirs[column], column


@pytest.mark.parametrize(
    "data",
    [
        {"prompt": [[{"role": "user", "content": "hi"}]], "completion": [[{"role": "assistant", "content": "yo"}]]},
        {"input_ids": [[1, 2, 3]]},
        {"prompt": ["a"], "completion": ["b"], "text": ["ab"]},
        {"prompt": ["a"], "completion": [None]},
    ],
    ids=["conversational", "pre-tokenized", "ambiguous-layout", "null-completion"],
)
def test_batched_tokenization_leaves_other_layouts_to_trl(tokenizer, data):
    """Conversational, pre-tokenized, ambiguous or non-string rows are not tokenized here (`None`)."""
    assert (
        tokenize_plain(Dataset.from_dict(data), tokenizer, text_field="text", completion_only=True, dataset_name="t")
        is None
    )


def test_batched_tokenization_leaves_streaming_datasets_to_trl(tokenizer):
    """A streaming dataset goes through TRL's row-by-row path."""
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "a", "completion": "b"}]))
    assert tokenize_plain(stream, tokenizer, text_field="text", completion_only=True, dataset_name="t") is None


def test_map_rows_equals_a_row_by_row_map_and_keeps_the_other_columns_in_order():
    """Batched, reading only the named columns: same result as `Dataset.map` row by row, untouched columns kept."""
    dataset = Dataset.from_dict(
        {
            "a": [1, 2, 3],
            "chat": [[{"role": "user", "content": "x"}]] * 3,
            "b": [[1], [2, 2], [3, 3, 3]],
            "gone": [0, 0, 0],
        }
    )

    def fn(example, index):
        return {"b": example["b"] + [index], "n": len(example["b"]) + example["a"]}

    ours = map_rows(dataset, fn, desc="test", columns=["a", "b", "gone"], remove_columns=["gone"])
    reference = dataset.map(fn, with_indices=True, remove_columns=["gone"])
    assert ours.column_names == ["a", "chat", "b", "n"]
    assert ours.to_dict() == reference.select_columns(ours.column_names).to_dict()


def test_map_rows_names_the_row_that_fails():
    """An error raised for one row keeps naming that row (indices are passed through)."""
    dataset = Dataset.from_dict({"a": list(range(5))})

    def fn(example, index):
        if index == 3:
            raise ValueError(f"Row {index} is bad")
        return {"a": example["a"]}

    with pytest.raises(ValueError, match="Row 3 is bad"):
        map_rows(dataset, fn, desc="test")
