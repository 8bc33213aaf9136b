"""Tests for the checks that stop a run from training on nothing: `validate_batch` and the pre-flight row audit."""

from __future__ import annotations

import pytest
import torch

from trl_masked_sft import AllMaskedBatchError, UnsupervisedRowsError, validate_batch
from trl_masked_sft.audit import RowAudit, audit_labels

IGNORE = -9


def _labels(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# validate_batch


def test_all_masked_batch_raises():
    """A batch whose labels are all `ignore_index` raises `AllMaskedBatchError`."""
    with pytest.raises(AllMaskedBatchError, match="has no supervised token"):
        validate_batch(_labels([IGNORE] * 4, [IGNORE] * 4), ignore_index=IGNORE)


def test_batch_supervised_only_at_position_zero_raises():
    """A label at position 0 is no target after the causal shift, so such a batch still counts as all masked."""
    with pytest.raises(AllMaskedBatchError, match=r"after the causal shift"):
        validate_batch(_labels([11, IGNORE, IGNORE], [12, IGNORE, IGNORE]), ignore_index=IGNORE)


def test_batch_with_one_supervised_label_passes():
    """One trained label anywhere after position 0 is enough."""
    assert validate_batch(_labels([IGNORE] * 4, [IGNORE, IGNORE, IGNORE, 13]), ignore_index=IGNORE) is None


def test_validate_batch_accepts_a_dict_batch():
    """A collated batch (a mapping with `labels`) is checked like its labels tensor."""
    ids = torch.tensor([[5, 6, 7]])
    validate_batch({"input_ids": ids, "labels": _labels([IGNORE, 6, 7])}, ignore_index=IGNORE)
    with pytest.raises(AllMaskedBatchError):
        validate_batch({"input_ids": ids, "labels": _labels([5, IGNORE, IGNORE])}, ignore_index=IGNORE)


def test_validate_batch_accepts_a_single_row_tensor():
    """A 1-D labels tensor is one row: its position 0 does not count either."""
    validate_batch(torch.tensor([IGNORE, 4]), ignore_index=IGNORE)
    with pytest.raises(AllMaskedBatchError, match=r"its 1 rows"):
        validate_batch(torch.tensor([4, IGNORE]), ignore_index=IGNORE)


def test_validate_batch_uses_the_given_ignore_index():
    """-100 is a trained label when another value is the ignore index, and the ignore value is not."""
    validate_batch(_labels([IGNORE, -100, IGNORE]), ignore_index=IGNORE)
    with pytest.raises(AllMaskedBatchError, match=r"are -100 after"):
        validate_batch(_labels([-100, -100, -100]), ignore_index=-100)
    with pytest.raises(AllMaskedBatchError, match=rf"are {IGNORE} after"):
        validate_batch(_labels([IGNORE, IGNORE, IGNORE]), ignore_index=IGNORE)


def test_all_masked_message_names_the_rows_and_the_fix():
    """The message names the batch, its row count and range, and the likely fixes."""
    with pytest.raises(AllMaskedBatchError, match=r"all labels of its 3 rows \(rows 0-2\)") as info:
        validate_batch(_labels(*[[IGNORE] * 2] * 3), ignore_index=IGNORE, where="eval batch")
    message = str(info.value)
    assert message.startswith("The eval batch has no supervised token")
    assert "`max_length`" in message


def test_all_masked_message_shows_the_end_of_each_row_given_a_tokenizer(tokenizer):
    """With a tokenizer and `input_ids`, the message shows the end of each row's text, padding left out."""
    ids = tokenizer("### Question: What is the capital of France?", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    batch = {
        "input_ids": torch.tensor([ids, ids[:3] + [pad] * (len(ids) - 3)]),
        "attention_mask": torch.tensor([[1] * len(ids), [1] * 3 + [0] * (len(ids) - 3)]),
        "labels": torch.full((2, len(ids)), IGNORE),
    }

    with pytest.raises(
        AllMaskedBatchError, match=r"row 0: \.\.\.'### Question: What is the capital of France\?'"
    ) as info:
        validate_batch(batch, ignore_index=IGNORE, tokenizer=tokenizer)
    assert f"row 1: ...{tokenizer.decode(ids[:3])!r}" in str(info.value)
    assert tokenizer.pad_token not in str(info.value)


def test_validate_batch_rejects_labels_that_are_not_a_tensor():
    """Labels given as a list raise `TypeError` instead of being checked wrongly."""
    with pytest.raises(TypeError, match=r"`labels` must be a torch.Tensor, got list"):
        validate_batch({"labels": [[IGNORE, 3]]}, ignore_index=IGNORE)


# audit_labels


def _audit(labels_column, *, full_supervised, full_first, max_length=8, preset_reasons=None):
    return audit_labels(
        labels_column,
        full_supervised=full_supervised,
        full_first=full_first,
        dataset_name="train",
        max_length=max_length,
        preset_reasons=preset_reasons,
        ignore_index=IGNORE,
    )


def test_audit_finds_no_row_when_every_row_is_supervised():
    """Rows with a trained label after position 0 are not reported, and enforcing drops nothing."""
    audit = _audit([[IGNORE, 5], [IGNORE, IGNORE, 6]], full_supervised=[1, 1], full_first=[1, 2])
    assert audit.unsupervised == {}
    assert audit.enforce("error", 0.0) == set()


def test_audit_says_a_truncated_prompt_was_cut_at_max_length():
    """A row supervised before truncation but not after is reported as a prompt of M tokens truncated at N."""
    audit = _audit(
        [[IGNORE, 5], [IGNORE] * 8],
        full_supervised=[1, 3],
        full_first=[1, 12],
    )
    assert audit.unsupervised == {1: "prompt of 12 tokens truncated at max_length 8"}


def test_audit_says_a_row_without_completion_has_all_labels_ignored():
    """A row that never had a supervised token is reported as all-ignored, not as truncated."""
    audit = _audit([[IGNORE, IGNORE], [IGNORE, 5]], full_supervised=[0, 1], full_first=[None, 1])
    assert audit.unsupervised == {0: f"labels are all {IGNORE} (no completion token)"}


def test_audit_does_not_count_a_label_at_position_zero():
    """A row whose only label is at position 0 has no supervised token."""
    audit = _audit([[5, IGNORE, IGNORE]], full_supervised=[0], full_first=[None])
    assert list(audit.unsupervised) == [0]


def test_audit_keeps_preset_reasons():
    """Rows already known to be bad keep the reason given for them, even if their labels look supervised."""
    audit = _audit(
        [[IGNORE, 5], [IGNORE, 6]],
        full_supervised=[1, 1],
        full_first=[1, 1],
        preset_reasons={1: "template not found"},
    )
    assert audit.unsupervised == {1: "template not found"}


def test_audit_share_is_the_fraction_of_unsupervised_rows():
    """`share` is unsupervised rows over all rows (0 for an empty dataset)."""
    audit = _audit([[IGNORE] * 2] + [[IGNORE, 5]] * 3, full_supervised=[0, 1, 1, 1], full_first=[None, 1, 1, 1])
    assert audit.share == pytest.approx(0.25)
    assert _audit([], full_supervised=[], full_first=[]).share == 0.0


# RowAudit.enforce


def _truncated_audit(num_rows: int, bad: dict[int, int], max_length: int = 8) -> RowAudit:
    """An audit of `num_rows` rows where each row in `bad` (index -> prompt length) lost its answer to truncation."""
    labels = [[IGNORE] * max_length if i in bad else [IGNORE, 5] for i in range(num_rows)]
    return _audit(
        labels,
        full_supervised=[1] * num_rows,
        full_first=[bad.get(i, 1) for i in range(num_rows)],
        max_length=max_length,
    )


def test_error_policy_raises_naming_count_rows_and_reason():
    """With policy 'error', unsupervised rows raise `UnsupervisedRowsError` naming how many, which and why."""
    audit = _truncated_audit(10, {3: 40, 7: 52}, max_length=32)

    with pytest.raises(UnsupervisedRowsError, match=r"2 of 10 rows \(20\.0%\) of the train dataset") as info:
        audit.enforce("error", 0.5)
    message = str(info.value)
    assert "row 3: prompt of 40 tokens truncated at max_length 32" in message
    assert "row 7: prompt of 52 tokens truncated at max_length 32" in message
    assert "raise `max_length` (now 32)" in message


def test_error_policy_raises_even_when_the_share_is_allowed():
    """Policy 'error' does not drop rows whatever `max_fraction` allows."""
    with pytest.raises(UnsupervisedRowsError, match=r"masked_row_policy='error'"):
        _truncated_audit(100, {0: 9}).enforce("error", 1.0)


@pytest.mark.parametrize("policy", ["drop", "warn"])
def test_drop_policy_returns_the_indices_to_drop(policy):
    """Policies 'drop' and 'warn' return the dataset indices of the unsupervised rows."""
    assert _truncated_audit(10, {2: 9, 5: 9}).enforce(policy, 0.2) == {2, 5}


def test_drop_policy_above_max_fraction_raises():
    """Dropping more than `max_fraction` of the rows raises, naming the limit."""
    audit = _truncated_audit(10, {1: 9, 2: 9, 3: 9})

    with pytest.raises(UnsupervisedRowsError, match=r"more than `max_masked_row_fraction` \(20\.0%\)"):
        audit.enforce("drop", 0.2)


def test_drop_policy_dropping_every_row_raises():
    """Dropping every row raises even when `max_fraction` is 1, since nothing would be left to train on."""
    audit = _truncated_audit(3, {0: 9, 1: 9, 2: 9})

    with pytest.raises(UnsupervisedRowsError, match=r"Every row would be dropped"):
        audit.enforce("drop", 1.0)


def test_describe_lists_at_most_limit_rows():
    """The message names the first rows and says how many more there are."""
    audit = _truncated_audit(20, {i: 9 for i in range(8)})
    text = audit.describe(limit=5)
    assert "row 4:" in text and "row 5:" not in text
    assert "... and 3 more" in text
    assert "8 prompt truncated at max_length" in text
