"""Tests for `DataCollatorForCompletionOnlyLM`, with an odd pad id and ignore index so defaults can't hide a bug."""

from __future__ import annotations

import warnings

import pytest
import torch

from trl_masked_sft import (
    DataCollatorForCompletionOnlyLM,
    DatasetFormatError,
    MaskedSFTWarning,
    TemplateNotFoundError,
)
from trl_masked_sft.tiny import build_tiny_tokenizer

IGNORE = -9


@pytest.fixture(scope="module")
def tok():
    """The tiny byte-level tokenizer with `<|im_end|>` (id 4) as its pad token, not the usual `<|pad|>` (id 2)."""
    tokenizer = build_tiny_tokenizer(pad_token="<|im_end|>")
    assert tokenizer.pad_token_id not in (None, 0, tokenizer.eos_token_id, build_tiny_tokenizer().pad_token_id)
    return tokenizer


@pytest.fixture(scope="module")
def eos_pad_tok():
    """The tiny tokenizer in the common pad == eos setup."""
    tokenizer = build_tiny_tokenizer(pad_token="<|eos|>")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    return tokenizer


def _ids(tokenizer, *pieces: str) -> list[int]:
    """Token ids of `pieces` tokenized one by one and concatenated (so prompt/completion boundaries are exact)."""
    out: list[int] = []
    for piece in pieces:
        out += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return out


def _trained(batch, row: int) -> list[int]:
    return [label for label in batch["labels"][row].tolist() if label != IGNORE]


QA_PROMPT = ("### Question: What is the capital of France?", "\n", "### Answer:")
QA_PROMPT_2 = ("### Question: 2+2?", "\n", "### Answer:")


# masking by template


def test_prompt_tokens_and_padding_get_ignore_index(tok):
    """Everything up to the response template and every padding position is labelled `ignore_index`."""
    prompt_a, completion_a = _ids(tok, *QA_PROMPT), _ids(tok, " Paris")
    prompt_b, completion_b = _ids(tok, *QA_PROMPT_2), _ids(tok, " 4")
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": prompt_a + completion_a}, {"input_ids": prompt_b + completion_b}])

    width = len(prompt_a) + len(completion_a)
    pad = width - len(prompt_b) - len(completion_b)
    assert pad > 0
    assert batch["labels"].tolist() == [
        [IGNORE] * len(prompt_a) + completion_a,
        [IGNORE] * len(prompt_b) + completion_b + [IGNORE] * pad,
    ]
    assert batch["input_ids"][1].tolist() == prompt_b + completion_b + [tok.pad_token_id] * pad
    assert batch["attention_mask"].tolist() == [[1] * width, [1] * (width - pad) + [0] * pad]
    assert all(t.dtype == torch.long for t in batch.values())


def test_string_and_token_id_templates_give_the_same_labels(tok):
    """A template given as text and the same template given as its token ids mask a batch identically."""
    rows = [{"input_ids": _ids(tok, *QA_PROMPT, " Paris")}, {"input_ids": _ids(tok, *QA_PROMPT_2, " 4")}]
    by_text = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)(rows)
    by_ids = DataCollatorForCompletionOnlyLM(_ids(tok, "### Answer:"), tokenizer=tok, ignore_index=IGNORE)(rows)

    assert torch.equal(by_text["labels"], by_ids["labels"])
    assert _trained(by_ids, 0) == _ids(tok, " Paris")


def test_template_tokenized_differently_after_a_newline_is_still_found(sp_tokenizer):
    """ "### Answer:" after a newline (ids unlike the template alone) is found and only the answer is trained."""
    prompt = _ids(sp_tokenizer, "What is the capital of France?\n### Answer:")
    answer = _ids(sp_tokenizer, "What is the capital of France?\n### Answer: Paris")[len(prompt) :]
    row = prompt + answer
    alone = _ids(sp_tokenizer, "### Answer:")
    assert not any(row[p : p + len(alone)] == alone for p in range(len(row))), "fixture lost the in-context case"
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=sp_tokenizer, ignore_index=IGNORE)

    batch = collator([{"input_ids": row}])

    assert batch["labels"][0].tolist() == [IGNORE] * len(prompt) + answer
    assert sp_tokenizer.decode(answer).strip() == "Paris"


def test_template_whose_first_token_merged_with_a_space_is_found_in_the_text(tok):
    """ "Answer:" after a space (its first token merged with the space) is found and only the answer is trained."""
    row = _ids(tok, "Q: 3+3?", " Answer:", " 6")
    collator = DataCollatorForCompletionOnlyLM("Answer:", tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": row}])

    assert _trained(batch, 0) == _ids(tok, " 6")


def test_single_template_trains_only_after_its_last_occurrence(tok):
    """Without an instruction template, only the text after the last response template is trained."""
    row = _ids(tok, "### Answer:", " 3000", "\n", "### Answer:", " 300")
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    assert _trained(collator([{"input_ids": row}]), 0) == _ids(tok, " 300")


def test_single_template_trains_after_the_last_occurrence_when_occurrences_tokenize_differently(tok):
    """The last "Answer:" is found even when it follows a space and an earlier one follows a newline."""
    row = _ids(tok, "Example:", "\n", "Answer:", " 4.", " Now", " 3+3?", " Answer:", " 6")
    collator = DataCollatorForCompletionOnlyLM("Answer:", tokenizer=tok, ignore_index=IGNORE)

    assert _trained(collator([{"input_ids": row}]), 0) == _ids(tok, " 6")


def test_multi_turn_with_instruction_template_trains_every_response(tok):
    """With an instruction template every assistant turn is trained, from its template to the next user turn."""
    pieces = ["### Question: hi", "\n", "### Answer:", " yo", "\n", "### Question: ho", "\n", "### Answer:", " ya"]
    trained_pieces = {3, 4, 8}
    labels = []
    for i, piece in enumerate(pieces):
        ids = _ids(tok, piece)
        labels += ids if i in trained_pieces else [IGNORE] * len(ids)
    collator = DataCollatorForCompletionOnlyLM("### Answer:", "### Question:", tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": _ids(tok, *pieces)}])

    assert batch["labels"][0].tolist() == labels


def test_multi_turn_never_trains_a_user_turn_whose_template_follows_a_space(tok):
    """A user turn is masked even when its instruction template follows a space rather than the row start."""
    pieces = ["Question:", " a?", "\n", "Answer:", " b", " Question:", " c?", "\n", "Answer:", " d"]
    collator = DataCollatorForCompletionOnlyLM("Answer:", "Question:", tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": _ids(tok, *pieces)}])

    assert _trained(batch, 0) == _ids(tok, " b", " d")


def test_user_ignore_value_in_labels_is_never_overwritten(tok):
    """An ignore value the row's own `labels` put inside the completion stays; the rest of the completion trains."""
    prompt, completion = _ids(tok, *QA_PROMPT), _ids(tok, " Paris is nice")
    ids = prompt + completion
    labels = list(ids)
    masked_at = len(prompt) + 1
    labels[masked_at] = IGNORE
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    out = collator([{"input_ids": ids, "labels": labels}])["labels"][0].tolist()

    expected = [IGNORE] * len(prompt) + completion
    expected[masked_at] = IGNORE
    assert out == expected


# masking by the rows' own boundary (no template)


def test_completion_mask_without_template_masks_the_prompt(tok):
    """With no template, a row's `completion_mask` decides: 0 is ignored, 1 is trained."""
    prompt, completion = _ids(tok, "What is 2 kg in gram?"), _ids(tok, " 2000")
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    batch = collator(
        [{"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}]
    )

    assert batch["labels"][0].tolist() == [IGNORE] * len(prompt) + completion


def test_prompt_length_without_template_masks_the_first_tokens(tok):
    """With no template, a row's `prompt_length` masks that many leading tokens."""
    prompt, completion = _ids(tok, "Convert 5 hour to minutes."), _ids(tok, " 300")
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    batch = collator(
        [
            {"input_ids": prompt + completion, "prompt_length": len(prompt)},
            {"input_ids": completion, "prompt_length": 0},
        ]
    )

    assert batch["labels"][0].tolist() == [IGNORE] * len(prompt) + completion
    assert batch["labels"][1].tolist()[: len(completion)] == completion


def test_rows_with_their_own_labels_and_no_template_keep_them(tok):
    """With no template, a row's `labels` are used as given (only padding is added)."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    batch = collator(
        [
            {"input_ids": [50, 51, 52, 53], "labels": [IGNORE, IGNORE, 70, 71]},
            {"input_ids": [60, 61], "labels": [IGNORE, 72]},
        ]
    )

    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 70, 71], [IGNORE, 72, IGNORE, IGNORE]]


def test_without_template_or_boundary_every_real_token_is_trained(tok):
    """A row with no template, mask, prompt length or labels trains all its tokens, and never its padding."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": [50, 51, 52]}, {"input_ids": [60]}])

    assert batch["labels"].tolist() == [[50, 51, 52], [60, IGNORE, IGNORE]]


# padding


def test_eos_ending_the_completion_stays_supervised_when_pad_equals_eos(eos_pad_tok):
    """When pad == eos, the eos that ends a completion is trained; only the padding after it is ignored."""
    eos = eos_pad_tok.eos_token_id
    long_row = _ids(eos_pad_tok, *QA_PROMPT, " Paris") + [eos]
    short_row = _ids(eos_pad_tok, *QA_PROMPT_2, " 4") + [eos]
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=eos_pad_tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": long_row}, {"input_ids": short_row}])

    assert _trained(batch, 0) == _ids(eos_pad_tok, " Paris") + [eos]
    assert _trained(batch, 1) == _ids(eos_pad_tok, " 4") + [eos]
    assert batch["labels"][1, len(short_row) - 1].item() == eos
    assert batch["labels"][1, len(short_row) :].tolist() == [IGNORE] * (len(long_row) - len(short_row))


def test_right_padded_rows_are_trimmed_to_the_longest_real_row(eos_pad_tok):
    """Pre-padded rows lose their padding (found by `attention_mask`, not by id) before the batch is padded."""
    eos = eos_pad_tok.eos_token_id
    real = [50, 51, 52, eos]
    shorter = [60, eos]
    collator = DataCollatorForCompletionOnlyLM(tokenizer=eos_pad_tok, ignore_index=IGNORE)

    batch = collator(
        [
            {"input_ids": real + [eos] * 3, "attention_mask": [1] * 4 + [0] * 3},
            {"input_ids": shorter + [eos] * 5, "attention_mask": [1] * 2 + [0] * 5},
        ]
    )

    assert batch["input_ids"].tolist() == [real, shorter + [eos, eos]]
    assert batch["labels"].tolist() == [real, shorter + [IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_left_padded_rows_are_trimmed_and_padded_on_the_right(tok):
    """Left padding is removed with its `labels` entries, and the batch is re-padded on the right."""
    pad = tok.pad_token_id
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    batch = collator(
        [
            {"input_ids": [pad, pad, 50, 51, 52], "attention_mask": [0, 0, 1, 1, 1], "labels": [7, 7, IGNORE, 51, 52]},
            {"input_ids": [pad, pad, pad, pad, 60], "attention_mask": [0, 0, 0, 0, 1], "labels": [7, 7, 7, 7, 60]},
        ]
    )

    assert batch["input_ids"].tolist() == [[50, 51, 52], [60, pad, pad]]
    assert batch["labels"].tolist() == [[IGNORE, 51, 52], [60, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_left_padded_row_is_masked_by_template_after_trimming(tok):
    """A left-padded row is masked by its template as if it had never been padded."""
    row = _ids(tok, *QA_PROMPT_2, " 4")
    pad = tok.pad_token_id
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    batch = collator([{"input_ids": [pad] * 3 + row, "attention_mask": [0] * 3 + [1] * len(row)}])

    assert batch["input_ids"][0].tolist() == row
    assert _trained(batch, 0) == _ids(tok, " 4")


def test_pad_to_multiple_of_rounds_the_batch_length_up(tok):
    """The batch is padded to the next multiple of `pad_to_multiple_of`, the extra positions ignored."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE, pad_to_multiple_of=4)

    batch = collator([{"input_ids": [50, 51, 52, 53, 54]}, {"input_ids": [60]}])

    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [50, 51, 52, 53, 54] + [tok.pad_token_id] * 3
    assert batch["labels"][0].tolist() == [50, 51, 52, 53, 54] + [IGNORE] * 3
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 3


def test_pad_to_multiple_of_keeps_a_length_already_a_multiple(tok):
    """A batch whose longest row is already a multiple is not padded further."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE, pad_to_multiple_of=4)

    assert collator([{"input_ids": [50, 51, 52, 53]}])["input_ids"].shape == (1, 4)


def test_tensors_and_lists_give_the_same_batch(tok):
    """Rows given as tensors collate exactly like the same rows given as lists (or tuples)."""
    ids = _ids(tok, *QA_PROMPT, " Paris")
    padded = ids + [tok.pad_token_id] * 2
    labels = [IGNORE] + padded[1:]
    mask = [1] * len(ids) + [0, 0]
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    with pytest.warns(MaskedSFTWarning, match="Row 1 of the batch: after `response_template`"):  # nothing after it
        from_lists = collator(
            [{"input_ids": padded, "labels": labels, "attention_mask": mask}, {"input_ids": tuple(ids[:-1])}]
        )
    with pytest.warns(MaskedSFTWarning, match="Row 1 of the batch: after `response_template`"):
        from_tensors = collator(
            [
                {
                    "input_ids": torch.tensor(padded),
                    "labels": torch.tensor(labels),
                    "attention_mask": torch.tensor(mask),
                },
                {"input_ids": torch.tensor(ids[:-1])},
            ]
        )

    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(from_lists[key], from_tensors[key]), key
    assert from_tensors["input_ids"].shape == (2, len(ids))
    assert _trained(from_tensors, 0) == _ids(tok, " Paris")
    assert from_tensors["labels"][1].tolist() == [IGNORE] * len(ids)


# errors


def test_row_without_the_template_warns_naming_the_row_and_is_masked_whole(tok):
    """A row lacking the response template warns naming its index and the template, and trains nothing."""
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)
    rows = [{"input_ids": _ids(tok, *QA_PROMPT, " Paris")}, {"input_ids": _ids(tok, "The quick brown fox")}]

    with pytest.warns(
        MaskedSFTWarning, match=r"Row 1 of the batch does not contain `response_template` '### Answer:'"
    ):
        batch = collator(rows)

    assert _trained(batch, 0) == _ids(tok, " Paris")
    assert _trained(batch, 1) == []


def test_row_without_the_template_raises_when_missing_template_is_error(tok):
    """With `missing_template="error"`, a row lacking the template raises `TemplateNotFoundError` naming the row."""
    collator = DataCollatorForCompletionOnlyLM(
        "### Answer:", tokenizer=tok, ignore_index=IGNORE, missing_template="error"
    )
    rows = [{"input_ids": _ids(tok, *QA_PROMPT, " Paris")}, {"input_ids": _ids(tok, "The quick brown fox")}]

    with pytest.raises(TemplateNotFoundError, match=r"Row 1 of the batch does not contain `response_template`"):
        collator(rows)


def test_missing_template_policy_other_than_warn_or_error_raises(tok):
    """`missing_template` accepts "warn" or "error" only, and the message names the field and the value."""
    with pytest.raises(ValueError, match=r"`missing_template` must be one of \('warn', 'error'\), got 'drop'"):
        DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, missing_template="drop")


def test_labels_of_another_length_than_input_ids_raise(tok):
    """`labels` with a different length than `input_ids` raise `DatasetFormatError` naming row and lengths."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    with pytest.raises(DatasetFormatError, match=r"Row 1: `labels` has 2 entries but `input_ids` has 3"):
        collator([{"input_ids": [50, 51]}, {"input_ids": [50, 51, 52], "labels": [IGNORE, 51]}])


def test_completion_mask_of_another_length_than_input_ids_raises(tok):
    """A `completion_mask` with a different length than `input_ids` raises `DatasetFormatError`."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    with pytest.raises(DatasetFormatError, match=r"Row 0: `completion_mask` has 4 entries"):
        collator([{"input_ids": [50, 51, 52], "completion_mask": [0, 1, 1, 1]}])


def test_empty_input_ids_raise(tok):
    """A row with no token raises `DatasetFormatError` naming the row."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    with pytest.raises(DatasetFormatError, match=r"Row 1 has empty `input_ids`"):
        collator([{"input_ids": [50]}, {"input_ids": []}])


def test_empty_list_of_examples_raises(tok):
    """Collating no example raises instead of returning an empty batch."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE)

    with pytest.raises(ValueError, match="empty list of examples"):
        collator([])


def test_empty_response_template_raises(tok):
    """An empty string as `response_template` raises naming the argument."""
    with pytest.raises(ValueError, match=r"`response_template` is an empty string"):
        DataCollatorForCompletionOnlyLM("", tokenizer=tok)


def test_empty_instruction_template_raises(tok):
    """An empty string as `instruction_template` raises naming the argument."""
    with pytest.raises(ValueError, match=r"`instruction_template` is an empty string"):
        DataCollatorForCompletionOnlyLM("### Answer:", "", tokenizer=tok)


@pytest.mark.parametrize("template", [3, [], ["###", "Answer"], {"ids": [1]}])
def test_response_template_of_wrong_type_raises(tok, template):
    """A response template that is neither a non-empty string nor non-empty token ids raises `TypeError`."""
    with pytest.raises(TypeError, match=r"`response_template` must be a non-empty string or a non-empty list"):
        DataCollatorForCompletionOnlyLM(template, tokenizer=tok)


def test_instruction_template_of_wrong_type_raises(tok):
    """An instruction template of the wrong type raises `TypeError` naming the argument."""
    with pytest.raises(TypeError, match=r"`instruction_template` must be a non-empty string"):
        DataCollatorForCompletionOnlyLM("### Answer:", 7, tokenizer=tok)


def test_mlm_true_raises(tok):
    """`mlm=True` is refused: the collator is for causal language models."""
    with pytest.raises(ValueError, match=r"`mlm=True` is not supported"):
        DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, mlm=True)


def test_instruction_template_without_response_template_raises(tok):
    """An instruction template alone raises, naming both arguments."""
    with pytest.raises(ValueError, match=r"`instruction_template` was given without `response_template`"):
        DataCollatorForCompletionOnlyLM(instruction_template="### Question:", tokenizer=tok)


def test_return_tensors_other_than_pt_raises(tok):
    """Only PyTorch tensors are supported."""
    with pytest.raises(ValueError, match=r"`return_tensors` must be 'pt', got 'np'"):
        DataCollatorForCompletionOnlyLM(tokenizer=tok, return_tensors="np")


@pytest.mark.parametrize("value", [0, -2, 2.0])
def test_pad_to_multiple_of_not_a_positive_int_raises(tok, value):
    """`pad_to_multiple_of` must be a positive int."""
    with pytest.raises(ValueError, match=r"`pad_to_multiple_of` must be a positive int or None"):
        DataCollatorForCompletionOnlyLM(tokenizer=tok, pad_to_multiple_of=value)


def test_ignore_index_not_an_int_raises(tok):
    """`ignore_index` must be an int."""
    with pytest.raises(TypeError, match=r"`ignore_index` must be an int, got str"):
        DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index="-9")


def test_tokenizer_without_pad_token_warns_and_pads_with_eos():
    """Without a pad token the collator warns with `MaskedSFTWarning` and pads with eos, the final eos trained."""
    tokenizer = build_tiny_tokenizer(pad_token=None)
    eos = tokenizer.eos_token_id

    with pytest.warns(MaskedSFTWarning, match=r"no pad token; padding with the eos token"):
        collator = DataCollatorForCompletionOnlyLM(tokenizer=tokenizer, ignore_index=IGNORE)
    batch = collator([{"input_ids": [50, 51, eos]}, {"input_ids": [60, eos]}])

    assert batch["input_ids"].tolist() == [[50, 51, eos], [60, eos, eos]]
    assert batch["labels"].tolist() == [[50, 51, eos], [60, eos, IGNORE]]


def test_tokenizer_with_pad_token_does_not_warn(tok):
    """A tokenizer with a pad token builds the collator without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        DataCollatorForCompletionOnlyLM(tokenizer=tok)


def test_tokenizer_without_pad_or_eos_token_raises():
    """With neither a pad nor an eos token there is nothing to pad with, so construction fails."""
    tokenizer = build_tiny_tokenizer(pad_token=None)
    tokenizer.eos_token = None

    with pytest.raises(ValueError, match=r"neither a pad token nor an eos token"):
        DataCollatorForCompletionOnlyLM(tokenizer=tokenizer)


# the old constructor and calling conventions (TRL <= 0.19)


def test_old_constructor_arguments_are_accepted(tok):
    """The old signature works: tokenizer third positional, `padding_free`, `mlm=False` and the base class's kwargs."""
    collator = DataCollatorForCompletionOnlyLM(
        "### Answer:",
        None,
        tok,
        mlm=False,
        ignore_index=IGNORE,
        padding_free=False,
        pad_to_multiple_of=None,
        return_tensors="pt",
        mlm_probability=0.15,
        mask_replace_prob=0.8,
        random_replace_prob=0.1,
        seed=0,
        tf_experimental_compile=False,
        whole_word_mask=False,
    )

    assert collator.tokenizer is tok and collator.padding_free is False
    assert _trained(collator([_ids(tok, *QA_PROMPT, " Paris")]), 0) == _ids(tok, " Paris")


def test_missing_tokenizer_raises_naming_the_argument():
    """Without a tokenizer the collator can neither pad nor tokenize templates: `TypeError` naming `tokenizer`."""
    with pytest.raises(TypeError, match=r"needs a `tokenizer`"):
        DataCollatorForCompletionOnlyLM("### Answer:")


def test_unknown_keyword_argument_raises_type_error(tok):
    """A keyword the old constructor did not have either is refused, as Python refuses it."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'response_key'"):
        DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, response_key="x")


def test_torch_call_gives_the_same_batch_as_calling_the_collator(tok):
    """`torch_call(examples)` (the old entry point) and `collator(examples)` return the same batch."""
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)
    rows = [{"input_ids": _ids(tok, *QA_PROMPT, " Paris")}, {"input_ids": _ids(tok, *QA_PROMPT_2, " 4")}]

    by_call, by_torch_call = collator(rows), collator.torch_call(rows)

    assert by_call.keys() == by_torch_call.keys()
    assert all(torch.equal(by_call[key], by_torch_call[key]) for key in by_call)


def test_batch_is_a_batch_encoding_read_by_attribute_or_key(tok):
    """The batch is a `transformers.BatchEncoding`: `batch.input_ids` works and it is still a mapping."""
    from collections.abc import Mapping

    from transformers import BatchEncoding

    batch = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)([_ids(tok, *QA_PROMPT, " Paris")])

    assert isinstance(batch, BatchEncoding) and isinstance(batch, Mapping)
    assert batch.input_ids is batch["input_ids"] and batch.labels is batch["labels"]
    assert batch.to("cpu")["attention_mask"].tolist() == batch["attention_mask"].tolist()


def test_rows_as_lists_dicts_and_batch_encodings_give_the_same_batch(tok):
    """Rows given as lists of ids, as dicts, as per-row `BatchEncoding`s or as one batched `BatchEncoding` agree."""
    texts = ["### Question: 2+2?\n### Answer: 4", "### Question: What is the capital of France?\n### Answer: Paris"]
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)
    as_lists = [tok(text, add_special_tokens=False)["input_ids"] for text in texts]

    batches = [
        collator(as_lists),
        collator([{"input_ids": ids} for ids in as_lists]),
        collator([tok(text, add_special_tokens=False) for text in texts]),
        collator(tok(texts, add_special_tokens=False)),
    ]

    for batch in batches[1:]:
        assert all(torch.equal(batch[key], batches[0][key]) for key in ("input_ids", "attention_mask", "labels"))
    assert tok.decode(_trained(batches[0], 1)) == " Paris"


def test_a_row_that_is_a_string_raises_naming_the_row(tok):
    """Text is not a row: the collator takes token ids, and says so naming the row."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok)

    with pytest.raises(TypeError, match=r"Row 0 of the batch is a str"):
        collator(["### Question: 2+2?"])


def test_left_padding_side_pads_on_the_left(tok):
    """With `tokenizer.padding_side = "left"` the batch is padded on the left, as the old collator did."""
    import copy

    left = copy.deepcopy(tok)
    left.padding_side = "left"
    long_row, short_row = _ids(left, *QA_PROMPT, " Paris"), _ids(left, *QA_PROMPT_2, " 4")
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=left, ignore_index=IGNORE)

    batch = collator([long_row, short_row])

    pad = len(long_row) - len(short_row)
    assert batch["input_ids"][1].tolist() == [left.pad_token_id] * pad + short_row
    assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * len(short_row)
    assert batch["labels"][1].tolist()[:pad] == [IGNORE] * pad
    assert _trained(batch, 1) == _ids(left, " 4")
    assert _trained(batch, 0) == _ids(left, " Paris")


def test_left_padding_with_pad_to_multiple_of_puts_every_pad_on_the_left(tok):
    """Left padding and `pad_to_multiple_of` together: the row's tokens end the row."""
    import copy

    left = copy.deepcopy(tok)
    left.padding_side = "left"
    collator = DataCollatorForCompletionOnlyLM(tokenizer=left, ignore_index=IGNORE, pad_to_multiple_of=4)

    batch = collator([[50, 51, 52, 53, 54]])

    assert batch["input_ids"].tolist() == [[left.pad_token_id] * 3 + [50, 51, 52, 53, 54]]
    assert batch["labels"].tolist() == [[IGNORE] * 3 + [50, 51, 52, 53, 54]]


# padding-free


def test_padding_free_flattens_the_batch_into_one_row_with_restarting_positions(tok):
    """`padding_free=True`: one row, no padding and no `attention_mask`, positions restarting at each row."""
    rows = [[50, 51, 52], [60, 61], [70, 71, 72, 73]]
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE, padding_free=True)

    batch = collator(rows)

    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[50, 51, 52, 60, 61, 70, 71, 72, 73]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE, 51, 52, IGNORE, 61, IGNORE, 71, 72, 73]]
    assert batch["cu_seq_lens_q"].tolist() == [[0, 3, 5, 9]] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"].tolist() == [[0, 3, 5, 9]]
    assert batch["max_length_q"].tolist() == batch["max_length_k"].tolist() == [4]


def test_padding_free_supervises_the_same_tokens_as_the_padded_batch(eos_pad_tok):
    """Flattened or padded, the same tokens are trained (position 0 of a row is never a target either way)."""
    eos = eos_pad_tok.eos_token_id
    rows = [
        {"input_ids": _ids(eos_pad_tok, *QA_PROMPT, " Paris") + [eos]},
        {"input_ids": _ids(eos_pad_tok, *QA_PROMPT_2, " 4") + [eos]},
    ]
    padded = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=eos_pad_tok, ignore_index=IGNORE)(rows)
    flat = DataCollatorForCompletionOnlyLM(
        "### Answer:", tokenizer=eos_pad_tok, ignore_index=IGNORE, padding_free=True
    )(rows)

    mask = padded["attention_mask"].bool()
    expected = padded["labels"].clone()
    expected[:, 0] = IGNORE
    assert flat["input_ids"][0].tolist() == padded["input_ids"][mask].tolist()
    assert flat["labels"][0].tolist() == expected[mask].tolist()
    assert _trained(flat, 0) == _ids(eos_pad_tok, " Paris") + [eos] + _ids(eos_pad_tok, " 4") + [eos]


def test_first_token_of_each_flattened_row_is_never_supervised(tok):
    """A row's first token would be predicted from the previous row's last token, so its label is ignored."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, ignore_index=IGNORE, padding_free=True)

    batch = collator([{"input_ids": [50, 51], "labels": [50, 51]}, {"input_ids": [60, 61], "labels": [60, 61]}])

    assert batch["labels"].tolist() == [[IGNORE, 51, IGNORE, 61]]


def test_padding_free_batch_gives_the_padded_batch_loss(tok):
    """A model run on the flattened batch gives the padded batch's loss (sdpa reads the packed positions)."""
    # Without a cache (`use_cache=False`, as trainers pass): transformers reads packed positions only then.
    from trl_masked_sft.tiny import build_tiny_model

    model = build_tiny_model(tok).eval()
    rows = [_ids(tok, *QA_PROMPT, " Paris"), _ids(tok, *QA_PROMPT_2, " 4"), _ids(tok, "### Answer:", " 300")]
    padded = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)(rows)
    flat = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, padding_free=True)(rows)

    with torch.no_grad():
        padded_loss = model(**padded, use_cache=False).loss
        flat_loss = model(**flat, use_cache=False).loss

    assert torch.allclose(padded_loss, flat_loss, rtol=1e-5)


# templates with whitespace, and rows that train nothing real


@pytest.mark.parametrize("template", ["### Answer: ", "\n### Answer: ", "Answer: "])
def test_template_with_trailing_space_merged_into_the_answer_trains_the_answer(template):
    """ "### Answer: " (its space glued to " Paris" by a byte-level BPE) is found and the answer is trained."""
    tokenizer = build_tiny_tokenizer()
    row = _ids(tokenizer, "### Question: What is the capital of France?\n### Answer: Paris") + [tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(row[-2]) == "ĠParis", "fixture lost the merged-space case"
    collator = DataCollatorForCompletionOnlyLM(template, tokenizer=tokenizer, ignore_index=IGNORE)

    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        batch = collator([row])

    assert _trained(batch, 0) == row[-2:]


def test_row_where_only_the_eos_follows_the_template_warns_naming_row_and_template(eos_pad_tok):
    """An empty answer (the template, then only eos) trains nothing real: it warns, naming the row and template."""
    eos = eos_pad_tok.eos_token_id
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=eos_pad_tok, ignore_index=IGNORE)
    rows = [_ids(eos_pad_tok, *QA_PROMPT, " Paris") + [eos], _ids(eos_pad_tok, *QA_PROMPT_2) + [eos]]

    with pytest.warns(MaskedSFTWarning, match=r"Row 1 of the batch: after `response_template` '### Answer:' only"):
        batch = collator(rows)

    assert _trained(batch, 1) == [eos]


def test_rows_with_a_real_answer_do_not_warn(tok):
    """A well-formed batch collates without any `MaskedSFTWarning`."""
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)

    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        collator([_ids(tok, *QA_PROMPT, " Paris"), _ids(tok, *QA_PROMPT_2, " 4")])


def test_trains_nothing_real_tells_an_answer_from_eos_or_whitespace(tok):
    """`trains_nothing_real`: nothing, only special tokens, or only whitespace is not an answer; a word is."""
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, ignore_index=IGNORE)
    eos, space = tok.eos_token_id, _ids(tok, " ")
    ids = [50, 51, 52, 53]

    assert collator.trains_nothing_real(ids, [IGNORE] * 4)
    assert collator.trains_nothing_real(ids, [IGNORE, IGNORE, IGNORE, eos])
    assert collator.trains_nothing_real(ids, [IGNORE, IGNORE] + space + [eos])
    assert not collator.trains_nothing_real(ids, [IGNORE, IGNORE] + _ids(tok, " 4") + [eos])


# the masking helpers the collator relies on


def test_supervises_only_stop_tokens_is_true_only_when_something_but_nothing_else_is_trained():
    """Only stop tokens trained: True; an answer token or nothing at all trained: False; position 0 never counts."""
    from trl_masked_sft.masking import supervises_only_stop_tokens

    assert supervises_only_stop_tokens([-9, -9, 2], {2}, ignore_index=-9)
    assert not supervises_only_stop_tokens([-9, 7, 2], {2}, ignore_index=-9)
    assert not supervises_only_stop_tokens([-9, -9, -9], {2}, ignore_index=-9)
    assert not supervises_only_stop_tokens([2, -9, -9], {2}, ignore_index=-9)


def test_text_spans_end_before_the_token_that_holds_the_trailing_space_and_the_answer():
    """In "Answer: Paris" the span of "Answer: " stops before " Paris"; of "Answer:" it stops at the same place."""
    from trl_masked_sft.masking import find_template_in_text_trimmed

    tokenizer = build_tiny_tokenizer()
    ids = _ids(tokenizer, "Q?\nAnswer: Paris")
    paris = len(ids) - 1
    assert tokenizer.convert_ids_to_tokens(ids[paris]) == "ĠParis"

    assert find_template_in_text_trimmed(tokenizer, ids, "Answer: ")[0][1] == paris
    assert find_template_in_text_trimmed(tokenizer, ids, "Answer:")[0][1] == paris
    assert find_template_in_text_trimmed(tokenizer, ids, "\nAnswer: ") == find_template_in_text_trimmed(
        tokenizer, ids, "Answer: "
    )
