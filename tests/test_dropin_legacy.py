"""Old calling conventions of SFTTrainer scripts (TRL 0.11-0.19 docs, notebooks) that MaskedSFTTrainer must accept."""

from __future__ import annotations

import pytest
from datasets import Dataset

from trl_masked_sft import DatasetFormatError, MaskedSFTTrainer

IGNORE = -100

QUESTIONS = [f"How many meters are there in {i} km?" for i in range(1, 9)]
ANSWERS = [f" <answer>{i * 1000}</answer>" for i in range(1, 9)]


def _trainer(tokenizer, model, make_config, dataset, **config):
    return MaskedSFTTrainer(model, args=make_config(**config), train_dataset=dataset, processing_class=tokenizer)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _trained(row) -> list[int]:
    return [label for label in row["labels"] if label != IGNORE]


def test_batched_formatting_function_from_the_old_docs_gives_one_text_per_row(tokenizer, model, make_config):
    """A formatting function written for batches (lists in, a list of texts out) gives each row its own text."""

    def formatting_prompts_func(batch):
        return [f"### Question: {q}\n### Answer:{a}" for q, a in zip(batch["question"], batch["answer"], strict=True)]

    trainer = MaskedSFTTrainer(
        model,
        args=make_config(),
        train_dataset=Dataset.from_dict({"question": QUESTIONS, "answer": ANSWERS}),
        processing_class=tokenizer,
        formatting_func=formatting_prompts_func,
    )

    first = trainer.train_dataset[0]["input_ids"]
    assert tokenizer.decode(first).startswith("### Question: How many meters are there in")
    assert len(trainer.train_dataset) == len(QUESTIONS)


def test_explicit_dataset_text_field_wins_over_column_guessing(tokenizer, model, make_config):
    """`dataset_text_field="prompt"` names a column of whole texts: each is trained as text, not as a bare prompt."""
    texts = [q + a for q, a in zip(QUESTIONS, ANSWERS, strict=True)]

    trainer = _trainer(
        tokenizer, model, make_config, Dataset.from_dict({"prompt": texts}), dataset_text_field="prompt"
    )

    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["input_ids"]).startswith(texts[0])
    assert _trained(row)[: len(_ids(tokenizer, texts[0]))] == _ids(tokenizer, texts[0])


def test_text_beside_prompt_and_completion_trains_the_completion_and_its_eos(tokenizer, model, make_config):
    """A `text` column next to `prompt`/`completion` does not turn the rows into plain text: the completion trains."""
    texts = [q + a for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    dataset = Dataset.from_dict({"text": texts, "prompt": QUESTIONS, "completion": ANSWERS})

    trainer = _trainer(tokenizer, model, make_config, dataset)

    row = trainer.train_dataset[0]
    assert _trained(row) == _ids(tokenizer, ANSWERS[0]) + [tokenizer.eos_token_id]


def test_stale_input_ids_beside_prompt_and_completion_never_train_the_prompt(tokenizer, model, make_config):
    """Stale `input_ids` beside prompt/completion are rebuilt or refused: the prompt is never trained."""
    stale = [_ids(tokenizer, q + a) for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    dataset = Dataset.from_dict({"prompt": QUESTIONS, "completion": ANSWERS, "input_ids": stale})

    try:
        trainer = _trainer(tokenizer, model, make_config, dataset)
    except DatasetFormatError as error:  # refused: the message names the stale column
        assert "input_ids" in str(error)
        return
    row = trainer.train_dataset[0]
    assert _trained(row) == _ids(tokenizer, ANSWERS[0]) + [tokenizer.eos_token_id]


def test_assistant_only_loss_on_data_that_is_not_conversational_is_refused(tokenizer, model, make_config):
    """`assistant_only_loss=True` with prompt/completion strings raises naming the field, as TRL does."""
    dataset = Dataset.from_dict({"prompt": QUESTIONS, "completion": ANSWERS})

    with pytest.raises(ValueError, match="`assistant_only_loss"):
        _trainer(tokenizer, model, make_config, dataset, assistant_only_loss=True)


class _RecordsBatches(MaskedSFTTrainer):
    """A user subclass (a layer-skip style recipe) that reads the batch in `compute_loss` and `training_step`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_by_compute_loss: list[tuple[set[str], tuple[int, ...]]] = []
        self.seen_by_training_step: list[tuple[set[str], tuple[int, ...]]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen_by_compute_loss.append((set(inputs), tuple(inputs["input_ids"].shape)))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen_by_training_step.append((set(inputs), tuple(inputs["input_ids"].shape)))
        return super().training_step(model, inputs, num_items_in_batch)


def test_subclass_overriding_compute_loss_and_training_step_gets_trl_batch_shape(tokenizer, model, make_config):
    """A subclass's `compute_loss`/`training_step` receive TRL's batch: one row per example, with `attention_mask`."""
    trainer = _RecordsBatches(
        model,
        args=make_config(per_device_train_batch_size=4, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": QUESTIONS, "completion": ANSWERS}),
        processing_class=tokenizer,
    )

    trainer.train()

    for keys, shape in trainer.seen_by_training_step + trainer.seen_by_compute_loss:
        assert {"input_ids", "attention_mask", "labels"} <= keys
        assert not any(key.startswith("msft") for key in keys)
        assert shape[0] == 4


def test_rows_where_only_the_eos_follows_the_response_template_are_refused_by_the_audit(tokenizer, model, make_config):
    """A row whose template is followed by the eos alone counts as unsupervised: refused under policy 'error'."""
    from trl_masked_sft import DataCollatorForCompletionOnlyLM, UnsupervisedRowsError

    texts = [f"### Question: {q}\n### Answer:{a}" for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    texts[3] = f"### Question: {QUESTIONS[3]}\n### Answer:"
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)

    with pytest.raises(UnsupervisedRowsError, match=r"row 3: .*eos"):
        MaskedSFTTrainer(
            model,
            args=make_config(),
            train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=tokenizer,
            data_collator=collator,
        )
