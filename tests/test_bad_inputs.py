"""A table of malformed inputs (data, config, model, tokenizer): each fails early with our message, never trains.

Every case asserts the exception type, that the message names the row or the field and says how to fix it, that the
error is not raised from inside torch, datasets or tokenizers (a raw traceback), and that no optimizer step ran.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from datasets import Dataset, DatasetDict
from peft import PeftModel, get_peft_model
from transformers import DataCollatorForLanguageModeling

from trl_masked_sft import (
    AllMaskedBatchError,
    CheckpointError,
    DataCollatorForCompletionOnlyLM,
    DatasetFormatError,
    DatasetTypeError,
    LabelsOverwrittenError,
    MaskedSFTTrainer,
    ModelSetupError,
    UnsupervisedRowsError,
    homework_lora_config,
)
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

IGNORE = -100
RAW_SOURCES = ("/torch/", "/datasets/", "/tokenizers/", "/jinja2/")


def qa_rows(n: int = 8) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


def chat(*messages: tuple[str, object]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in messages]


@dataclass
class Run:
    """What a case gets: fresh tokenizer and config factories; `train` builds the trainer and trains."""

    tokenizer: object
    make_config: Callable
    tmp_path: object
    trainer: MaskedSFTTrainer | None = None

    def train(self, data=None, *, model=None, tokenizer=None, config=None, **kwargs):
        tokenizer = tokenizer or self.tokenizer
        model = model if model is not None else build_tiny_model(self.tokenizer)
        self.trainer = MaskedSFTTrainer(
            model,
            args=config or self.make_config(),
            train_dataset=qa_rows() if data is None else data,
            processing_class=tokenizer,
            **kwargs,
        )
        self.trainer.train()

    def resume_from(self, checkpoint: str):
        self.trainer = MaskedSFTTrainer(
            build_tiny_model(self.tokenizer),
            args=self.make_config(),
            train_dataset=qa_rows(),
            processing_class=self.tokenizer,
        )
        self.trainer.train(resume_from_checkpoint=str(self.tmp_path / "out" / checkpoint))


def _pretokenized(**columns) -> Dataset:
    return Dataset.from_dict({name: [value] * 4 for name, value in columns.items()})


def _all_masking_collator(tokenizer):
    def collate(features):
        batch = DataCollatorForCompletionOnlyLM(None, tokenizer=tokenizer)(features)
        batch["labels"][:] = IGNORE
        return batch

    return collate


def _frozen_lora(run: Run):
    path = run.tmp_path / "adapter"
    get_peft_model(build_tiny_model(run.tokenizer), homework_lora_config(r=4)).save_pretrained(path)
    return PeftModel.from_pretrained(build_tiny_model(run.tokenizer), path)  # is_trainable defaults to False


def _tokenizer_with_new_pad(run: Run):
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<|new_pad|>"})  # the model is not resized
    return tokenizer


def _tokenizer_without(*names: str):
    tokenizer = build_tiny_tokenizer()
    for name in names:
        setattr(tokenizer, name, None)
    return tokenizer


# id, what the case does (given a Run), exception type, pattern the message must match (row/field ... fix)
CASES = [
    # ------------------------------------------------------------------------------------------------ data
    ("empty-list", lambda r: r.train([]), DatasetFormatError, r"train dataset is an empty list.*Pass at least one"),
    (
        "empty-dataset",
        lambda r: r.train(Dataset.from_dict({"prompt": [], "completion": []})),
        DatasetFormatError,
        r"train dataset has no rows.*Fix:",
    ),
    (
        "datasetdict-instead-of-split",
        lambda r: r.train(DatasetDict({"train": Dataset.from_dict({"prompt": ["a"], "completion": ["b"]})})),
        DatasetFormatError,
        r"train dataset is a DatasetDict with splits \['train'\].*Fix: pass one split, e\.g\. `dataset\['train'\]`",
    ),
    ("string-row", lambda r: r.train(["a", "b"]), DatasetFormatError, r"Row 0 of the train dataset is str 'a'.*Fix"),
    (
        "three-element-row",
        lambda r: r.train([["q?", "a", "extra"]]),
        DatasetFormatError,
        r"Row 0 of the train dataset is list .*`\[question, answer\]` pair.*Fix",
    ),
    (
        "none-completion",
        lambda r: r.train(Dataset.from_dict({"prompt": ["a?", "b?"], "completion": [" x", None]})),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `completion` .*NoneType.*Fix: fill in or remove the row",
    ),
    (
        "nan-answer",
        lambda r: r.train([["q?", 1.0], ["r?", math.nan]]),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `completion` must be a string, got float nan.*Fix",
    ),
    (
        "dict-answer",
        lambda r: r.train([["q?", {"value": 3}]]),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `completion` must be a string, got dict.*Fix",
    ),
    (
        "every-completion-empty",
        lambda r: r.train(Dataset.from_dict({"prompt": ["a?", "b?"], "completion": ["", " "]})),
        DatasetFormatError,
        r"Every completion in the train dataset \(`completion`\) is empty.*Fix: point `completion_column`",
    ),
    (
        "one-empty-completion",
        lambda r: r.train(qa_rows(4) + [["q?", ""]]),
        UnsupervisedRowsError,
        r"row 4: empty completion.*Fix: fill in or remove",
    ),
    (
        "no-usable-column",
        lambda r: r.train(Dataset.from_dict({"question": ["a?"], "answer": ["b"]})),
        DatasetFormatError,
        r"columns \['question', 'answer'\].*Fix: set `prompt_column`/`completion_column`",
    ),
    (
        "missing-completion-column",
        lambda r: r.train(Dataset.from_dict({"prompt": ["a?"], "reply": ["b"]})),
        DatasetFormatError,
        r"no `completion` column.*Fix: set `completion_column`",
    ),
    (
        "text-none",
        lambda r: r.train(Dataset.from_dict({"text": ["hello world", None, "good day"]})),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `text` .*must be a string, got NoneType.*Fix",
    ),
    (
        "formatting-func-returns-none",
        lambda r: r.train(Dataset.from_dict({"q": ["a", "b"]}), formatting_func=lambda example: None),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `text` .*`formatting_func`.*got NoneType.*Fix",
    ),
    (
        "message-content-none",
        lambda r: r.train(Dataset.from_dict({"messages": [chat(("user", "hi"), ("assistant", None))] * 4})),
        DatasetTypeError,
        r"Row 0 of the train dataset: message 1 \(role 'assistant'\) has `content` NoneType.*Fix",
    ),
    (
        "message-without-role",
        lambda r: r.train(
            Dataset.from_dict({"messages": [[{"content": "hi"}, {"role": "assistant", "content": "yo"}]] * 4})
        ),
        DatasetFormatError,
        r"Row 0 of the train dataset: message 0 has no `role`.*Fix",
    ),
    (
        "conversation-without-assistant-turn",
        lambda r: r.train(Dataset.from_dict({"messages": [chat(("user", "hi"))] * 4})),
        UnsupervisedRowsError,
        r"row 0: chat turns not located: no assistant turn.*Fix",
    ),
    (
        "labels-length-mismatch",
        lambda r: r.train(
            Dataset.from_dict({"input_ids": [[5, 6, 7, 8], [5, 6, 7]], "labels": [[IGNORE, 6, 7, 8], [6]]})
        ),
        DatasetFormatError,
        r"Row 1 .*`labels` has 1 entries but `input_ids` has 3.*Fix",
    ),
    (
        "empty-input-ids",
        lambda r: r.train(Dataset.from_dict({"input_ids": [[5, 6, 7], []], "labels": [[IGNORE, 6, 7], []]})),
        DatasetFormatError,
        r"Row 1 of the train dataset has empty `input_ids`.*Remove empty rows",
    ),
    (
        "labels-all-ignored",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, 8], labels=[IGNORE] * 4)),
        UnsupervisedRowsError,
        r"row 0: labels are all -100.*Fix: check how the `labels` column was built",
    ),
    (
        "labels-with-minus-one-as-ignore",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, 8], labels=[-1, -1, 7, 8])),
        DatasetFormatError,
        r"Row 0 of the train dataset: `labels` holds -1.*Fix: use -100",
    ),
    (
        "float-input-ids",
        lambda r: r.train(_pretokenized(input_ids=[5.5, 6.0, 7.0, 8.0])),
        DatasetTypeError,
        r"column `input_ids` holds float64 values.*Fix",
    ),
    (
        "string-labels",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, 8], labels=["a", "b", "c", "d"])),
        DatasetTypeError,
        r"column `labels` holds string values.*Fix",
    ),
    (
        "token-id-beyond-the-vocabulary",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, 1000], labels=[IGNORE, 6, 7, 1000])),
        ModelSetupError,
        r"Row 0 of the train dataset has token id 1000 in `input_ids`.*embeddings have \d+ rows.*Fix",
    ),
    (
        "label-beyond-the-vocabulary",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, 8], labels=[IGNORE, 6, 7, 5000])),
        ModelSetupError,
        r"Row 0 of the train dataset has token id 5000 in `labels`.*output layer has \d+ rows.*Fix",
    ),
    (
        "prompt-truncated-away",
        lambda r: r.train(config=r.make_config(max_length=4)),
        UnsupervisedRowsError,
        r"row 0: prompt of 12 tokens truncated at max_length 4.*Fix: raise `max_length` \(now 4\)",
    ),
    (
        "response-template-not-in-the-data",
        lambda r: r.train(
            Dataset.from_dict({"text": ["### Question: a?\n### Answer: b"] * 3 + ["no template here"]}),
            data_collator=DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=r.tokenizer),
        ),
        UnsupervisedRowsError,
        r"row 3: response template not found.*Fix: make `response_template` match",
    ),
    # ------------------------------------------------------------------------------------------------ config
    (
        "masked-row-policy-typo",
        lambda r: r.make_config(masked_row_policy="ignore"),
        ValueError,
        r"`masked_row_policy` must be 'error', 'drop' or 'warn', got 'ignore'\. Use",
    ),
    (
        "max-length-one",
        lambda r: r.make_config(max_length=1),
        ValueError,
        r"`max_length` must be at least 2 .*got 1",
    ),
    (
        "negative-learning-rate",
        lambda r: r.make_config(learning_rate=-1e-4),
        ValueError,
        r"`learning_rate` must be a finite number >= 0, got -0\.0001.*e\.g\. 2e-4",
    ),
    (
        "zero-gradient-accumulation",
        lambda r: r.make_config(gradient_accumulation_steps=0),
        ValueError,
        r"`gradient_accumulation_steps` must be at least 1, got 0",
    ),
    (
        "zero-epochs-and-no-max-steps",
        lambda r: r.make_config(max_steps=-1, num_train_epochs=0),
        ValueError,
        r"`num_train_epochs` is 0 and `max_steps` is -1: training would run 0 steps.*Set `num_train_epochs`",
    ),
    (
        "eval-strategy-without-eval-dataset",
        lambda r: r.train(config=r.make_config(eval_strategy="steps", eval_steps=1)),
        ValueError,
        r"`args.eval_strategy`.*Either set `args.eval_strategy` to `no` or pass an `eval_dataset`",
    ),
    # ------------------------------------------------------------------------------------------------ model
    (
        "lora-loaded-for-inference",
        lambda r: r.train(model=_frozen_lora(r)),
        ModelSetupError,
        r"no trainable parameter.*Fix: load the adapter with .*is_trainable=True",
    ),
    (
        "every-weight-frozen",
        lambda r: r.train(model=build_tiny_model(r.tokenizer).requires_grad_(False)),
        ModelSetupError,
        r"The model has no trainable parameter.*Fix: unfreeze",
    ),
    (
        "peft-model-and-peft-config",
        lambda r: r.train(
            model=get_peft_model(build_tiny_model(r.tokenizer), homework_lora_config(r=4)),
            peft_config=homework_lora_config(r=4),
        ),
        ValueError,
        r"`PeftModel` instance together with a `peft_config`.*merge and unload",
    ),
    (
        "resume-from-a-missing-checkpoint",
        lambda r: r.resume_from("checkpoint-5"),
        CheckpointError,
        r"`resume_from_checkpoint=.*checkpoint-5'` does not exist.*Fix: train without `resume_from_checkpoint`",
    ),
    (
        "collator-overwrites-the-labels",
        lambda r: r.train(data_collator=DataCollatorForLanguageModeling(r.tokenizer, mlm=False)),
        LabelsOverwrittenError,
        r"overwrites the labels.*Fix: pass no `data_collator`",
    ),
    (
        "collator-masks-every-label",
        lambda r: r.train(data_collator=_all_masking_collator(r.tokenizer)),
        AllMaskedBatchError,
        r"train batch at step 0 has no supervised token.*rows 0-3.*Fix",
    ),
    # ------------------------------------------------------------------------------------------------ tokenizer
    (
        "tokenizer-gained-a-pad-token-model-not-resized",
        lambda r: r.train(tokenizer=_tokenizer_with_new_pad(r)),
        ModelSetupError,
        r"pad token id \d+ .*embeddings, which have \d+ rows.*Fix: .*resize_token_embeddings\(len\(tokenizer\)\)",
    ),
    (
        "tokenizer-without-pad-or-eos",
        lambda r: r.train(tokenizer=_tokenizer_without("pad_token", "eos_token")),
        ValueError,
        r"neither a pad token nor an eos token\. Fix:",
    ),
    (
        "tokenizer-without-eos",
        lambda r: r.train(tokenizer=_tokenizer_without("eos_token")),
        ModelSetupError,
        r"The tokenizer has no eos token.*Fix: set `tokenizer.eos_token`",
    ),
    (
        "chat-data-and-no-chat-template",
        lambda r: r.train(
            Dataset.from_dict({"messages": [chat(("user", "hi"), ("assistant", "yo"))] * 4}),
            tokenizer=_tokenizer_without("chat_template"),
        ),
        ValueError,
        r"chat_template is not set.*setting the tokenizer.chat_template attribute",
    ),
    (
        "no-processing-class-for-a-model-built-from-a-config",
        lambda r: MaskedSFTTrainer(build_tiny_model(r.tokenizer), args=r.make_config(), train_dataset=qa_rows()),
        ModelSetupError,
        r"`processing_class` is None .*Fix: pass `processing_class=tokenizer`",
    ),
]


def test_the_table_has_at_least_25_cases_across_data_config_model_and_tokenizer():
    """The table covers at least 25 malformed inputs."""
    assert len(CASES) >= 25 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "act", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_fails_early_with_our_message(tokenizer, make_config, tmp_path, case, act, error, pattern):
    """The input raises the expected type, naming the row or field and the fix, never from deep inside a library."""
    run = Run(tokenizer=tokenizer, make_config=make_config, tmp_path=tmp_path)
    with pytest.raises(error) as info:
        act(run)
    assert re.search(pattern, str(info.value), re.S), str(info.value)
    raised_in = traceback.extract_tb(info.value.__traceback__)[-1].filename
    assert not any(source in raised_in for source in RAW_SOURCES), f"raw traceback from {raised_in}"
    if run.trainer is not None:
        assert run.trainer.state.global_step == 0  # nothing was trained


def test_valid_edge_cases_pass_the_data_checks(tokenizer, model, make_config):
    """A tool-call message with no content, and -100 labels, are valid: the new checks let them through."""
    from trl_masked_sft.formats import _check_messages

    tool_call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    _check_messages([[{"role": "user", "content": "hi"}, tool_call]], "train")
    data = _pretokenized(input_ids=[5, 6, 7, 8], labels=[IGNORE, IGNORE, 7, 8])
    trainer = MaskedSFTTrainer(model, args=make_config(max_steps=1), train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
