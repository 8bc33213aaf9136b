"""`hf_compat.py`: the fast per-row map over `datasets`."""

from __future__ import annotations

import pytest
from datasets import Dataset

from trl_masked_sft.hf_compat import map_rows


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
