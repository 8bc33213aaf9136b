"""Which columns a dataset trains on: an explicit text field beside prompt columns, context columns not used."""

from __future__ import annotations

import pytest
from datasets import Dataset

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTTrainer

IGNORE = -100


def supervised(tokenizer, row) -> str:
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])


def qa_text(n: int = 8) -> dict[str, list[str]]:
    questions = [f"What is {i} + {i}?" for i in range(n)]
    answers = [f" {2 * i}" for i in range(n)]
    texts = [f"### Question: {q}\n### Answer:{a}" for q, a in zip(questions, answers, strict=True)]
    return {"prompt": questions, "answers": answers, "text": texts}


@pytest.mark.parametrize("answer_column", ["target", "completion"])
def test_explicit_text_field_with_a_template_collator_wins_over_prompt_columns(
    tokenizer, model, make_config, answer_column
):
    """Old scripts keep `prompt`/`target` (or `completion`) beside `text`: the text is trained, the collator's
    template masking the prompt, instead of a refusal for lacking `completion`."""
    data = qa_text()
    data[answer_column] = data.pop("answers")
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)
    trainer = MaskedSFTTrainer(
        model,
        args=make_config(dataset_text_field="text"),
        train_dataset=Dataset.from_dict(data),
        processing_class=tokenizer,
        data_collator=collator,
    )
    row = trainer.train_dataset[3]
    assert supervised(tokenizer, row) == " 6<|eos|>"
    assert tokenizer.decode(row["input_ids"]).startswith("### Question: What is 3 + 3?")
    trainer.train()


def test_prompt_completion_still_wins_over_text_without_a_template(tokenizer, model, make_config):
    """No template to mask the text by: the prompt/completion pair is the boundary, as before."""
    data = qa_text()
    data["completion"] = data.pop("answers")
    trainer = MaskedSFTTrainer(
        model, args=make_config(), train_dataset=Dataset.from_dict(data), processing_class=tokenizer
    )
    assert supervised(tokenizer, trainer.train_dataset[3]) == " 6<|eos|>"
    assert not tokenizer.decode(trainer.train_dataset[3]["input_ids"]).startswith("###")
