"""Which columns a dataset trains on: an explicit text field beside prompt columns, context columns not used."""

from __future__ import annotations

import pytest
from datasets import Dataset

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTTrainer, MaskedSFTWarning

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


# ---------------------------------------------------------------------------------------------- context columns

STANFORD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_config(make_config, **overrides):
    return make_config(prompt_column="instruction", completion_column="output", max_length=512, **overrides)


def test_llamafactory_alpaca_rows_fold_system_and_history_as_llamafactory_does(
    tokenizer, model, make_config, capture_logs
):
    """`system` becomes the system message, each `history` pair a user and an assistant turn, and the last user
    turn is `instruction` + "\\n" + `input` (LLaMA-Factory's AlpacaDatasetConverter), under the chat template."""
    said = capture_logs("trl_masked_sft")
    rows = [
        {
            "instruction": f"And times {i}?",
            "input": f"(use {i})" if i % 2 else "",
            "output": f"It is {2 * i}.",
            "system": "You are a calculator.",
            "history": [["What is 1 + 1?", "It is 2."]],
        }
        for i in range(8)
    ]
    trainer = MaskedSFTTrainer(
        model, args=alpaca_config(make_config), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    messages = [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "It is 2."},
        {"role": "user", "content": "And times 3?\n(use 3)"},
        {"role": "assistant", "content": "It is 6."},
    ]
    row = trainer.train_dataset[3]
    assert row["input_ids"] == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    trained = supervised(tokenizer, row)
    assert "It is 2." in trained and "It is 6." in trained  # every assistant turn, as LLaMA-Factory trains them
    assert "calculator" not in trained and "1 + 1" not in trained
    assert tokenizer.decode(trainer.train_dataset[2]["input_ids"]).count("And times 2?<|im_end|>") == 1  # no input
    folded = [line for line in said if "LLaMA-Factory" in line]
    assert len(folded) == 1 and "`system`" in folded[0] and "`history`" in folded[0]


def test_stanford_alpaca_rows_fold_input_with_the_alpaca_prompt(tokenizer, model, make_config, capture_logs):
    """`input` goes into Stanford Alpaca's prompt (with or without its Input section); the output is trained."""
    said = capture_logs("trl_masked_sft")
    rows = [{"instruction": f"Double {i}.", "input": str(i) if i % 2 else "", "output": f" {2 * i}"} for i in range(8)]
    trainer = MaskedSFTTrainer(
        model, args=alpaca_config(make_config), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    with_input, without = trainer.train_dataset[3], trainer.train_dataset[2]
    assert tokenizer.decode(with_input["input_ids"]).startswith(
        STANFORD_INPUT.format(instruction="Double 3.", input="3")
    )
    assert tokenizer.decode(without["input_ids"]).startswith(STANFORD_NO_INPUT.format(instruction="Double 2."))
    assert supervised(tokenizer, with_input) == " 6<|eos|>"
    assert any("Stanford Alpaca" in line and "`input`" in line for line in said)


def test_alpaca_rows_with_every_input_empty_are_left_as_they_are(tokenizer, model, make_config, recwarn):
    """Nothing would be lost: the prompt stays the instruction, and nothing is said."""
    rows = [{"instruction": f"Double {i}.", "input": "", "output": f" {2 * i}"} for i in range(8)]
    trainer = MaskedSFTTrainer(model, args=alpaca_config(make_config), train_dataset=rows, processing_class=tokenizer)
    assert tokenizer.decode(trainer.train_dataset[3]["input_ids"]).startswith("Double 3.")
    assert not [w for w in recwarn if "context" in str(w.message)]


def test_unused_context_columns_are_named_in_one_warning_with_the_fix(tokenizer, model, make_config):
    """Columns that hold context beside prompt/completion of no known format: one warning naming them all."""
    rows = [
        {"question": f"Q{i}?", "answer": f" A{i}", "context": f"Passage {i}.", "system": "Be brief.", "id": i}
        for i in range(8)
    ]
    config = make_config(prompt_column="question", completion_column="answer")
    with pytest.warns(MaskedSFTWarning) as caught:
        trainer = MaskedSFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer)
    unused = [str(w.message) for w in caught if "not used" in str(w.message)]
    assert len(unused) == 1
    assert "`context`" in unused[0] and "`system`" in unused[0] and "`id`" not in unused[0]
    assert "Fix:" in unused[0] and "remove_columns" in unused[0]
    assert supervised(tokenizer, trainer.train_dataset[1]) == " A1<|eos|>"  # trained as before
