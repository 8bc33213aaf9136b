"""Scripts and tests written for TRL's old `DataCollatorForCompletionOnlyLM` (v0.11-v0.19) run against ours.

The cases are those of TRL v0.19's `tests/test_data_collator_completion_only.py` and the collator tests of its
`tests/test_sft_trainer.py`, restated here with offline byte-level BPE tokenizers: a Qwen2-style one (the old tests
used a tiny Qwen2 tokenizer; its pre-tokenizer glues newlines to the punctuation before them) and a GPT-2-style one
(spaces glued to the next word). Where our collator is stricter than the old one, the test says so.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTTrainer, MaskedSFTWarning
from trl_masked_sft.tiny import build_tiny_model

IGNORE = -100

# The Qwen2 pre-tokenizer pattern (GPT-4 style): runs of newlines stick to the punctuation before them ("?\n\n").
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SYSTEM_USER_ASSISTANT = (
    "### System: You are a helpful assistant.\n\n### User: How much is 2+2?\n\n### Assistant: 2+2 equals 4"
)
FIRST_USER_SPELLED_DIFFERENTLY = (
    "## User: First instruction\n\n### Assistant: First response\n\n### User: Second instruction\n\n"
    "### Assistant: Second response"
)
INSTRUCTIONS_RESPONSE = (
    "\n\n### Instructions:\nHello all this should be masked\n\n### Response:\nI have not been masked correctly."
)
LONGER_INSTRUCTIONS_RESPONSE = (
    "\n\n### Instructions:\nThis is another longer text that should also be masked. This text is significantly "
    "longer than\nthe previous one.\n\n### Response:\nI have not been masked correctly."
)
HUMAN_ASSISTANT_ONE_TURN = "### Human: Hello all this should be masked.### Assistant: I should not be masked."
HUMAN_ASSISTANT_TWO_TURNS = (
    HUMAN_ASSISTANT_ONE_TURN + "### Human: All this should be masked\ntoo.### Assistant: I should not be masked too."
)
LLAMAS = "### Question: Does llamas know how to code?\n ### Answer: Yes, llamas are very good at coding."
# The tokenizers' training texts. The "### Human:" rows are left out, so that, as in a real vocabulary, "." and "###"
# stay two tokens there; `test_answer_end_glued_to_the_instruction_template_is_masked_not_trained` glues them.
CORPUS = [
    SYSTEM_USER_ASSISTANT,
    FIRST_USER_SPELLED_DIFFERENTLY,
    INSTRUCTIONS_RESPONSE,
    LONGER_INSTRUCTIONS_RESPONSE,
    LLAMAS,
    "Question: What is the capital of France?\nAnswer: Paris",
]


def _byte_level_bpe(pattern: str | None, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus`: GPT-2's pre-tokenizer (`pattern=None`) or a regex split first."""
    tokenizer = Tokenizer(models.BPE())
    if pattern is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus * 8, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def qwen2_style():
    """Byte-level BPE laid out like Qwen2's (pad `<|endoftext|>`, eos `<|im_end|>`), newlines glued to punctuation."""
    tokenizer = _byte_level_bpe(QWEN2_PATTERN)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("2+2?\n\n### A"))[3] == "?ĊĊ", "fixture lost newline glue"
    return tokenizer


@pytest.fixture(scope="module")
def gpt2_style():
    """Byte-level BPE with GPT-2's pre-tokenizer: a space is glued to the word after it."""
    tokenizer = _byte_level_bpe(None)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Answer: Paris"))[-1] == "ĠParis", "fixture lost the glue"
    return tokenizer


def _in_context_ids(tokenizer, template: str) -> list[int]:
    """The ids of `template` ("\\n### ...") as they appear inside a row: without the tokens of its leading newline."""
    full = tokenizer.encode(template, add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert full[: len(newline)] == newline
    return full[len(newline) :]


def _trained_text(tokenizer, batch, row: int = 0) -> str:
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    return tokenizer.decode(ids[labels != IGNORE])


# ------------------------------------------------------------- TRL v0.19 tests/test_data_collator_completion_only.py


def test_response_template_given_as_its_in_context_ids_is_found(qwen2_style):
    """Ids of "\\n### Assistant:" minus the newline's tokens (the old docs' workaround) find the answer."""
    collator = DataCollatorForCompletionOnlyLM(_in_context_ids(qwen2_style, "\n### Assistant:"), tokenizer=qwen2_style)

    batch = collator.torch_call([qwen2_style.encode(SYSTEM_USER_ASSISTANT)])

    assert _trained_text(qwen2_style, batch) == " 2+2 equals 4"


def test_response_and_instruction_templates_given_as_in_context_ids_are_found(qwen2_style):
    """Both templates as in-context ids: the assistant turn is trained, the system and user turns are not."""
    collator = DataCollatorForCompletionOnlyLM(
        _in_context_ids(qwen2_style, "\n### Assistant:"),
        _in_context_ids(qwen2_style, "\n### User:"),
        tokenizer=qwen2_style,
    )

    batch = collator.torch_call([qwen2_style.encode(SYSTEM_USER_ASSISTANT)])

    assert _trained_text(qwen2_style, batch) == " 2+2 equals 4"


def test_first_user_turn_spelled_unlike_the_instruction_template_still_trains_only_the_responses(qwen2_style):
    """A first user turn without the instruction template ("## User:") is masked; both responses are trained."""
    collator = DataCollatorForCompletionOnlyLM(
        _in_context_ids(qwen2_style, "\n### Assistant:"),
        _in_context_ids(qwen2_style, "\n### User:"),
        tokenizer=qwen2_style,
    )

    batch = collator.torch_call([qwen2_style.encode(FIRST_USER_SPELLED_DIFFERENTLY)])

    assert _trained_text(qwen2_style, batch) == " First response\n\n Second response"


@pytest.mark.parametrize("instruction_template", [None, "\n### User:"])
def test_row_cut_before_its_response_template_warns_and_trains_nothing(qwen2_style, instruction_template):
    """A row whose response template was cut off (too long) warns, as the old collator did, and is masked whole."""
    row = qwen2_style.encode(
        "### System: You are a helpful assistant.\n\n### User: How much is 2+2? I'm asking because I'm not sure. "
        "And I'm not sure because I'm not good at math.\n"
    )
    collator = DataCollatorForCompletionOnlyLM("\n### Assistant:", instruction_template, tokenizer=qwen2_style)

    with pytest.warns(UserWarning, match="does not contain `response_template`"):  # MaskedSFTWarning is one
        batch = collator.torch_call([row])

    assert bool((batch["labels"] == IGNORE).all())


def test_padding_free_batch_is_the_padded_batch_without_its_padding(qwen2_style):
    """`padding_free=True`: the padded batch's real tokens in one row, positions per row, first labels ignored."""
    tokenizer = copy.deepcopy(qwen2_style)
    tokenizer.pad_token = tokenizer.eos_token  # as the old test set it when a tokenizer had no pad token
    rows = [
        tokenizer("### System: You are a helpful assistant.\n\n### User: How much is 2+2?\n\n### Assistant: 4"),
        tokenizer("### System: Be honest.\n\n### User: What is 22x22?\n\n### Assistant: 22x22 equals 484"),
    ]
    padded = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tokenizer)(rows)
    flat = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tokenizer, padding_free=True)(rows)

    assert "attention_mask" not in flat
    assert flat["input_ids"].shape == flat["labels"].shape == flat["position_ids"].shape
    mask = padded["attention_mask"].bool()
    expected_labels = padded["labels"].clone()
    expected_labels[:, 0] = IGNORE
    assert flat["input_ids"].tolist() == [padded["input_ids"][mask].tolist()]
    assert flat["position_ids"].tolist() == [(padded["attention_mask"].cumsum(1)[mask] - 1).tolist()]
    assert flat["labels"].tolist() == [expected_labels[mask].tolist()]


def test_padding_free_batch_carries_flat_positions_and_sequence_boundaries(qwen2_style):
    """Rows of 6 and 7 tokens: positions 0-5 then 0-6, boundaries [[0, 6, 13]], longest row [7], shaped as v0.19.1."""
    marker = qwen2_style.encode(" Assistant")
    assert len(marker) == 1
    template = qwen2_style.decode(marker)
    collator = DataCollatorForCompletionOnlyLM(template, tokenizer=qwen2_style, padding_free=True)
    rows = [
        {"input_ids": [10, 11, 12, marker[0], 14, 15], "attention_mask": [1] * 6},
        {"input_ids": [16, 17, 18, 19, marker[0], 20, 21], "attention_mask": [1] * 7},
    ]

    batch = collator(rows)

    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6]]
    # TRL v0.19.1's shapes (its test_data_collator_for_completion_only_lm): boundaries as a (1, rows + 1) int32
    # tensor, the longest row as a one-element tensor
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [[0, 6, 13]]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == torch.tensor([7]) and batch["max_length_k"] == torch.tensor([7])
    assert isinstance(batch["max_length_k"], torch.Tensor) and batch["max_length_k"].shape == (1,)
    assert batch["labels"].tolist() == [[IGNORE] * 4 + [14, 15] + [IGNORE] * 5 + [20, 21]]


# ------------------------------------------------------------------ the collator tests of TRL v0.19 test_sft_trainer.py


def test_everything_after_the_response_template_and_only_that_is_trained(qwen2_style):
    """ "### Response:\\n" (its newline glued to the colon): the text after it is trained, nothing before."""
    collator = DataCollatorForCompletionOnlyLM("### Response:\n", tokenizer=qwen2_style, mlm=False)

    batch = collator([qwen2_style(INSTRUCTIONS_RESPONSE)])

    labels = batch["labels"][0]
    last_ignored = int((labels == IGNORE).nonzero()[-1])
    assert qwen2_style.decode(batch["input_ids"][0, last_ignored + 1 :]) == "I have not been masked correctly."
    assert _trained_text(qwen2_style, batch) == "I have not been masked correctly."


def test_left_padded_batch_trains_only_the_response_of_each_row(qwen2_style):
    """With `padding_side="left"` each row ends with its response, and only that is trained."""
    tokenizer = copy.deepcopy(qwen2_style)
    tokenizer.padding_side = "left"
    collator = DataCollatorForCompletionOnlyLM("### Response:\n", tokenizer=tokenizer, mlm=False)

    batch = collator([tokenizer(INSTRUCTIONS_RESPONSE), tokenizer(LONGER_INSTRUCTIONS_RESPONSE)])

    assert int(batch["attention_mask"][0, 0]) == 0 and int(batch["attention_mask"][0, -1]) == 1
    for row in range(2):
        labels = batch["labels"][row]
        last_ignored = int((labels == IGNORE).nonzero()[-1])
        assert tokenizer.decode(batch["input_ids"][row, last_ignored + 1 :]) == "I have not been masked correctly."


def test_every_assistant_turn_is_trained_and_every_human_turn_masked(qwen2_style):
    """Instruction and response templates: both assistant turns are trained, the human turns are not."""
    collator = DataCollatorForCompletionOnlyLM(
        response_template="### Assistant:", instruction_template="### Human:", tokenizer=qwen2_style, mlm=False
    )

    batch = collator([qwen2_style(HUMAN_ASSISTANT_TWO_TURNS)])

    assert _trained_text(qwen2_style, batch) == " I should not be masked. I should not be masked too."


def test_left_padded_chat_rows_of_different_lengths_train_their_own_assistant_turns(qwen2_style):
    """A one-turn and a two-turn row, left padded: each trains exactly its own assistant turns."""
    tokenizer = copy.deepcopy(qwen2_style)
    tokenizer.padding_side = "left"
    collator = DataCollatorForCompletionOnlyLM(
        response_template="### Assistant:", instruction_template="### Human:", tokenizer=tokenizer, mlm=False
    )

    batch = collator([tokenizer(HUMAN_ASSISTANT_ONE_TURN), tokenizer(HUMAN_ASSISTANT_TWO_TURNS)])

    assert _trained_text(tokenizer, batch, 0) == " I should not be masked."
    assert _trained_text(tokenizer, batch, 1) == " I should not be masked. I should not be masked too."


def test_answer_end_glued_to_the_instruction_template_is_masked_not_trained():
    """Where a token holds the answer's "." and the next "###" (".###"), it is masked: it belongs to the template too."""
    # Stricter than the old collator, which trained that token, i.e. taught the model to start the next user turn.
    glued = _byte_level_bpe(QWEN2_PATTERN, CORPUS + [HUMAN_ASSISTANT_TWO_TURNS])
    assert ".###" in glued.convert_ids_to_tokens(glued.encode(HUMAN_ASSISTANT_TWO_TURNS))
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", "### Human:", tokenizer=glued)

    batch = collator([glued(HUMAN_ASSISTANT_TWO_TURNS)])

    assert _trained_text(glued, batch) == " I should not be masked I should not be masked too."


def test_trainer_trains_with_the_padding_free_collator(qwen2_style, tmp_path):
    """MaskedSFTTrainer with `DataCollatorForCompletionOnlyLM(..., padding_free=True)`: finite loss, weights move."""
    texts = [f"### Question: What is {i}+{i}?\n ### Answer: {2 * i}" for i in range(1, 9)]
    collator = DataCollatorForCompletionOnlyLM(" ### Answer:", tokenizer=qwen2_style, padding_free=True)
    model = build_tiny_model(qwen2_style)
    trainer = MaskedSFTTrainer(
        model,
        args=_config(tmp_path),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=qwen2_style,
        data_collator=collator,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch and "attention_mask" not in batch
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])] == []


# ------------------------------------------------------------ old scripts: templates with spaces, GPT-2 tokenizers


@pytest.mark.parametrize("template", ["Answer: ", "\nAnswer: ", "Answer:"])
def test_response_template_with_a_trailing_space_trains_the_answer_with_a_gpt2_style_tokenizer(gpt2_style, template):
    """ "Answer: " ends inside the token " Paris": the template is still found and " Paris" plus eos is trained."""
    row = gpt2_style.encode("Question: What is the capital of France?\nAnswer: Paris") + [gpt2_style.eos_token_id]
    collator = DataCollatorForCompletionOnlyLM(template, tokenizer=gpt2_style)

    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskedSFTWarning)
        batch = collator([row])

    assert _trained_text(gpt2_style, batch) == " Paris<|im_end|>"


def test_leading_space_template_from_the_old_docs_is_found_after_a_newline(gpt2_style):
    """The old docs' " ### Answer:" after "\\n" trains the answer that follows it."""
    row = gpt2_style.encode(LLAMAS) + [gpt2_style.eos_token_id]
    collator = DataCollatorForCompletionOnlyLM(" ### Answer:", tokenizer=gpt2_style)

    assert _trained_text(gpt2_style, collator([row])) == " Yes, llamas are very good at coding.<|im_end|>"


def test_template_that_leaves_only_the_eos_to_train_warns_naming_row_and_template(gpt2_style):
    """A row whose answer is empty (template, then eos) is not trained silently: it warns, naming row and template."""
    good = gpt2_style.encode("Question: What is the capital of France?\nAnswer: Paris") + [gpt2_style.eos_token_id]
    empty = gpt2_style.encode("Question: What is the capital of France?\nAnswer: ") + [gpt2_style.eos_token_id]
    collator = DataCollatorForCompletionOnlyLM("Answer: ", tokenizer=gpt2_style)

    with pytest.warns(MaskedSFTWarning, match=r"Row 1 of the batch: after `response_template` 'Answer: ' only"):
        collator([good, empty])


def _config(tmp_path):
    from trl_masked_sft import MaskedSFTConfig

    return MaskedSFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        activation_checkpointing=False,
    )


def test_trainer_prepares_a_trailing_space_template_to_train_each_answer(gpt2_style, tmp_path):
    """MaskedSFTTrainer with `response_template="Answer: "` (GPT-2-style tokenizer) trains each answer and its eos."""
    answers = ["Paris", "Rome", "Madrid", "Berlin"]
    texts = [f"Question: What is the capital of country {i}?\nAnswer: {a}" for i, a in enumerate(answers)]
    collator = DataCollatorForCompletionOnlyLM("Answer: ", tokenizer=gpt2_style)

    trainer = MaskedSFTTrainer(
        build_tiny_model(gpt2_style),
        args=_config(tmp_path),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=gpt2_style,
        data_collator=collator,
    )

    # " Paris" is one token (trained whole); an unknown word is " " + letters, the " " then part of the template.
    trained = sorted(
        gpt2_style.decode([label for label in row["labels"] if label != IGNORE]).lstrip()
        for row in trainer.train_dataset
    )
    assert trained == sorted(f"{a}<|im_end|>" for a in answers)
