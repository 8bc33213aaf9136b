"""A table of malformed inputs (data, config, model, tokenizer): each fails early with our message, never trains.

Every case asserts the exception type, that the message names the row or the field and says how to fix it, that the
error is not raised from inside torch, datasets or tokenizers (a raw traceback), and that no optimizer step ran.
"""

from __future__ import annotations

import atexit
import math
import re
import shutil
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
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
from trl_masked_sft.errors import ConfigError, DataSourceError, MaskedSFTError
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer

IGNORE = -100
RAW_SOURCES = ("/torch/", "/datasets/", "/tokenizers/", "/jinja2/", "/pyarrow/", "/safetensors/", "/huggingface_hub/")


def qa_rows(n: int = 8) -> list[list]:
    return [[f"How many meters are there in {i} km?", f" <answer>{i * 1000}</answer>"] for i in range(1, n + 1)]


def chat(*messages: tuple[str, object]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in messages]


def _listing(folder: Path) -> set[tuple[str, int, int]]:
    if not folder.exists():
        return set()
    return {(str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*")}


@dataclass
class Run:
    """What a case gets: the shared tokenizer, a config factory and a tmp folder. `train`, `resume`, `prepare` and
    `cli` record the state of `out/` and of the model's weights just before the call that must fail."""

    tokenizer: object
    make_config: Callable
    tmp_path: Path
    trainer: MaskedSFTTrainer | None = None
    model: object = None
    weights: dict | None = None
    out_before: set | None = None

    def _mark(self, model=None):
        self.out_before = _listing(self.tmp_path / "out")
        self.model = model
        if model is not None:
            self.weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    def train(self, data=None, *, model=None, tokenizer=None, config=None, **kwargs):
        tokenizer = tokenizer or self.tokenizer
        model = model if model is not None else build_tiny_model(self.tokenizer)
        self._mark(model)
        self.trainer = MaskedSFTTrainer(
            model,
            args=config or self.make_config(),
            train_dataset=qa_rows() if data is None else data,
            processing_class=tokenizer,
            **kwargs,
        )
        self.trainer.train()

    def resume(self, checkpoint: str | bool, *, model=None):
        model = model if model is not None else build_tiny_model(self.tokenizer)
        self._mark(model)
        self.trainer = MaskedSFTTrainer(
            model, args=self.make_config(), train_dataset=qa_rows(), processing_class=self.tokenizer
        )
        self.trainer.train(resume_from_checkpoint=checkpoint)

    def resume_from(self, checkpoint: str):
        self.resume(str(self.tmp_path / "out" / checkpoint))

    def resolve(self, checkpoint: str):
        """The trainer's resume check, given the model (`MaskedSFTTrainer.train` passes it once wired)."""
        from trl_masked_sft.checkpoints import resolve_resume_checkpoint

        model = build_tiny_model(self.tokenizer)
        self._mark(model)
        return resolve_resume_checkpoint(checkpoint, str(self.tmp_path / "out"), model=model)

    def prepare(self, data, *, tokenizer=None, config=None, **overrides):
        from trl_masked_sft import PreparationPipeline

        self._mark()
        pipeline = PreparationPipeline.from_config(
            tokenizer or self.tokenizer, config or self.make_config(**overrides)
        )
        prepared = pipeline.prepare(data, "train")
        return list(prepared.dataset)  # a streaming dataset is checked as it is read

    def cli(self, *argv: str):
        self._mark()
        return _cli(*argv)


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


def _gen(rows: list[dict]) -> IterableDataset:
    return IterableDataset.from_generator(_rows_generator, gen_kwargs={"rows": rows})


def _rows_generator(rows):
    yield from rows


def _pc(prompts, completions) -> Dataset:
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def _conversation(tools=None, **extra) -> Dataset:
    row = {"messages": [chat(("user", "hi"), ("assistant", "yo"))] * 2}
    if tools is not None:
        row["tools"] = [tools] * 2
    row.update({key: [value] * 2 for key, value in extra.items()})
    return Dataset.from_dict(row)


def _sft_config(r: Run, **overrides):
    from trl import SFTConfig

    settings = {"output_dir": str(r.tmp_path / "out"), "report_to": "none", "use_cpu": True, "bf16": False}
    return SFTConfig(**{**settings, **overrides})


def _changed_config(r: Run, **changes):
    config = r.make_config()
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def _checkpoint(r: Run, step: int, *, state: str | None = "", **files: bytes) -> str:
    """A checkpoint folder under `out/` written by a real save: model weights, optimizer, scheduler, RNG, state
    (the saved one unless `state` gives its text; `None` removes it)."""
    path = r.tmp_path / "out" / f"checkpoint-{step}"
    shutil.copytree(_saved_checkpoint(r), path)
    if state is None:
        (path / "trainer_state.json").unlink()
    elif state:
        (path / "trainer_state.json").write_text(state)
    for name, content in files.items():
        (path / name.replace("__", ".")).write_bytes(content)
    return str(path)


_SAVED: list[Path] = []


def _saved_checkpoint(r: Run) -> Path:
    """One real checkpoint (one step of the tiny model), written once per session and copied by the cases."""
    if not _SAVED:
        folder = Path(tempfile.mkdtemp(prefix="bad-inputs-checkpoint-"))
        atexit.register(shutil.rmtree, folder, True)
        trainer = MaskedSFTTrainer(
            build_tiny_model(r.tokenizer),
            args=r.make_config(max_steps=1, save_strategy="steps", save_steps=1, output_dir=str(folder)),
            train_dataset=qa_rows(4),
            processing_class=r.tokenizer,
        )
        trainer.train()
        _SAVED.append(folder / "checkpoint-1")
    return _SAVED[0]


def _truncated(r: Run, step: int, name: str) -> str:
    path = Path(_checkpoint(r, step)) / name
    path.write_bytes(path.read_bytes()[: max(8, path.stat().st_size // 2)])
    return str(path.parent)


def _without(r: Run, step: int, name: str) -> str:
    path = Path(_checkpoint(r, step))
    (path / name).unlink()
    return str(path)


def _other_model_checkpoint(r: Run) -> str:
    path = Path(_checkpoint(r, 3))
    build_tiny_model(r.tokenizer, hidden_size=32).save_pretrained(path)
    return str(path)


def _write(r: Run, name: str, text: str) -> str:
    path = r.tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _folder(r: Run, *names: str) -> str:
    for name in names:
        _write(r, name, '{"prompt": "a?", "completion": " b"}\n')
    return str(r.tmp_path / "data")


def _cli(*argv: str):
    from trl_masked_sft.cli.main import run  # `main` reports the errors as `error:` lines; `run` lets them through

    return run(list(argv))


def _eos_tokenizer():
    """A tokenizer whose post-processor appends the eos token to every text (as T5 and some Llama setups do)."""
    from tokenizers import processors

    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.eos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    return tokenizer


# id, what the case does (given a Run), exception type, pattern the message must match (row/field ... fix)
CASES = [
    # ------------------------------------------------------------------------------------------------ data
    (
        "empty-list",
        lambda r: r.train([]),
        DatasetFormatError,
        r"train dataset is an empty list.*Fix: pass at least one",
    ),
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
        ConfigError,
        r"`masked_row_policy` must be one of 'error', 'drop', 'warn', got 'ignore'.*Fix",
    ),
    (
        "max-length-one",
        lambda r: r.make_config(max_length=1),
        ConfigError,
        r"`max_length` must be at least 2, got 1",
    ),
    (
        "negative-learning-rate",
        lambda r: r.make_config(learning_rate=-1e-4),
        ConfigError,
        r"`learning_rate` must be >= 0, got -0\.0001.*Fix",
    ),
    (
        "zero-gradient-accumulation",
        lambda r: r.make_config(gradient_accumulation_steps=0),
        ConfigError,
        r"`gradient_accumulation_steps` must be at least 1, got 0",
    ),
    (
        "zero-epochs-and-no-max-steps",
        lambda r: r.make_config(max_steps=-1, num_train_epochs=0),
        ConfigError,
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
        ModelSetupError,
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


_MSG = [chat(("user", "hi"), ("assistant", "yo"))]
_TRUNC = "cut short"

# ---------------------------------------------------------------------------------------------------- data, more
CASES += [
    (
        "list-of-dicts-first-row-lacks-completion",
        lambda r: r.train([{"prompt": "a?"}, {"prompt": "b?", "completion": " c"}]),
        DatasetFormatError,
        r"Row 0 of the train dataset has no `completion` key, which row 1 has.*Fix: give row 0",
    ),
    (
        "list-of-dicts-later-row-lacks-prompt",
        lambda r: r.prepare([{"prompt": "a?", "completion": " b"}] * 2 + [{"completion": " c"}]),
        DatasetFormatError,
        r"Row 2 of the train dataset has no `prompt` key.*Fix",
    ),
    (
        "list-of-dicts-string-then-list",
        lambda r: r.prepare([{"prompt": "a?", "completion": " x"}, {"prompt": ["b?"], "completion": " y"}]),
        DatasetTypeError,
        r"Row 1 of the train dataset: `prompt` is list .*row 0 holds a str.*Fix",
    ),
    (
        "list-of-dicts-string-then-dict",
        lambda r: r.prepare([{"prompt": "a?", "completion": " x"}, {"prompt": "b?", "completion": {"a": 1}}]),
        DatasetTypeError,
        r"Row 1 of the train dataset: `completion` is dict .*Fix",
    ),
    (
        "list-of-dicts-bool-then-string",
        lambda r: r.prepare([{"prompt": "a?", "completion": True}, {"prompt": "b?", "completion": " y"}]),
        DatasetTypeError,
        r"Row 1 of the train dataset: `completion` is str .*row 0 holds a bool.*Fix",
    ),
    (
        "list-of-dicts-extra-column-mixed",
        lambda r: r.prepare(
            [{"prompt": "a?", "completion": " x", "id": 1}, {"prompt": "b", "completion": " y", "id": "2"}]
        ),
        DatasetTypeError,
        r"Row 1 of the train dataset: `id` is str .*Fix",
    ),
    (
        "list-mixing-dicts-and-pairs",
        lambda r: r.prepare([{"prompt": "a?", "completion": " x"}, ["b?", " y"]]),
        DatasetFormatError,
        r"Row 0 of the train dataset is dict .*every row as a dict.*Fix",
    ),
    (
        "pair-with-none-question",
        lambda r: r.prepare([[None, 1.0]]),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `prompt` must be a string, got NoneType.*Fix: fill in",
    ),
    (
        "pair-with-bytes-answer",
        lambda r: r.prepare([["q?", b" 5"]]),
        DatasetTypeError,
        r"Row 0 .*column `completion` must be a string, got bytes.*Fix: decode it",
    ),
    (
        "pair-with-infinite-answer",
        lambda r: r.prepare([["q?", 1.0], ["r?", math.inf]]),
        DatasetTypeError,
        r"Row 1 .*got float inf.*Fix",
    ),
    (
        "pair-with-bool-answer",
        lambda r: r.prepare([["q?", True]]),
        DatasetTypeError,
        r"Row 0 .*`completion` must be a string, got bool.*Fix",
    ),
    (
        "pair-with-lone-surrogate",
        lambda r: r.prepare([["q?", " fine"], ["bad \udcff text", " x"]]),
        DatasetTypeError,
        r"Row 1 of the train dataset: `prompt` is not valid Unicode.*Fix: decode the source",
    ),
    (
        "dict-rows-with-lone-surrogate",
        lambda r: r.prepare([{"prompt": "q?", "completion": " ok \udcff"}]),
        DatasetTypeError,
        r"Row 0 of the train dataset: `completion` is not valid Unicode.*Fix",
    ),
    (
        "completion-empty-list-in-a-dataset",
        lambda r: r.prepare(_pc(["a?", "b?"], [[], []])),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `completion` must be a string, got list \[\].*empty list",
    ),
    (
        "completion-empty-list-in-a-list-of-dicts",
        lambda r: r.train([{"prompt": "a?", "completion": []}, {"prompt": "b?", "completion": []}]),
        DatasetTypeError,
        r"Row 0 .*`completion` must be a string, got list \[\].*Fix",
    ),
    (
        "completion-list-of-strings",
        lambda r: r.prepare(_pc(["a?"], [["x", "y"]])),
        DatasetTypeError,
        r"Row 0 .*`completion` must be a string, got list.*Fix: join the strings",
    ),
    (
        "completion-messages-among-strings",
        lambda r: r.prepare([{"prompt": "a?", "completion": " x"}, {"prompt": "b?", "completion": _MSG[0]}]),
        DatasetTypeError,
        r"Row 1 of the train dataset: `completion` is list .*row 0 holds a str",
    ),
    (
        "renamed-prompt-column-none",
        lambda r: r.prepare(
            Dataset.from_dict({"question": ["a?", None], "completion": [" x", " y"]}), prompt_column="question"
        ),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `question` must be a string, got NoneType",
    ),
    (
        "renamed-column-clashes",
        lambda r: r.prepare(
            Dataset.from_dict({"question": ["a?"], "prompt": ["b"], "completion": [" x"]}), prompt_column="question"
        ),
        DatasetFormatError,
        r"both `question` \(`prompt_column`\) and `prompt` columns.*Fix: drop or rename",
    ),
    (
        "text-column-of-ints",
        lambda r: r.prepare(Dataset.from_dict({"text": [1, 2]})),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `text` .*got int 1.*Fix",
    ),
    (
        "text-column-of-lists",
        lambda r: r.prepare(Dataset.from_dict({"text": [["a", "b"]]})),
        DatasetTypeError,
        r"Row 0 .*column `text` .*got list.*Fix",
    ),
    (
        "configured-text-field-missing",
        lambda r: r.prepare(Dataset.from_dict({"body": ["x"]}), dataset_text_field="content"),
        DatasetFormatError,
        r"columns \['body'\].*`content` \(`dataset_text_field`\).*Fix",
    ),
    (
        "only-a-labels-column",
        lambda r: r.prepare(Dataset.from_dict({"labels": [[1, 2, 3]]})),
        DatasetFormatError,
        r"columns \['labels'\].*Fix",
    ),
    (
        "formatting-func-raises",
        lambda r: r.train(Dataset.from_dict({"q": ["a", "b"]}), formatting_func=lambda ex: ex["missing"]),
        DatasetFormatError,
        r"Row 0 of the train dataset: `formatting_func` raised KeyError.*Fix",
    ),
    (
        "formatting-func-returns-a-list-per-row",
        lambda r: r.train(Dataset.from_dict({"q": ["a", "b"]}), formatting_func=lambda ex: [ex["q"], ex["q"]]),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `text` .*`formatting_func`.*got list.*Fix",
    ),
    (
        "formatting-func-returns-a-number",
        lambda r: r.train(Dataset.from_dict({"q": ["a", "b"]}), formatting_func=lambda ex: 3),
        DatasetTypeError,
        r"Row 0 .*column `text` .*got int 3.*Fix",
    ),
    (
        "dataset-with-a-transform",
        lambda r: r.prepare(_pc(["a?"], [" b"]).with_transform(lambda batch: batch)),
        DatasetFormatError,
        r"`Dataset.with_transform\(\)`.*Fix: apply deterministic transforms with `Dataset.map\(\)`",
    ),
    (
        "dict-of-splits",
        lambda r: r.train({"train": _pc(["a?"], [" b"]), "test": _pc(["c?"], [" d"])}),
        DatasetFormatError,
        r"train dataset is a dict with splits \['train', 'test'\].*Fix: pass one split",
    ),
    (
        "iterable-dataset-dict",
        lambda r: r.prepare(IterableDatasetDict({"train": _gen([{"prompt": "a?", "completion": " b"}])})),
        DatasetFormatError,
        r"IterableDatasetDict with splits \['train'\].*Fix",
    ),
    (
        "dict-of-columns",
        lambda r: r.train({"prompt": ["a?"], "completion": [" b"]}),
        DatasetTypeError,
        r"train dataset is dict .*Fix: a dict of columns becomes a dataset with `datasets.Dataset.from_dict",
    ),
    (
        "a-path-string-instead-of-a-dataset",
        lambda r: r.train("data.jsonl"),
        DatasetTypeError,
        r"train dataset is str 'data.jsonl'.*Fix: load the file first",
    ),
    (
        "a-generator-instead-of-a-dataset",
        lambda r: r.train(row for row in qa_rows()),
        DatasetTypeError,
        r"train dataset is generator .*Fix: pass `list\(rows\)`",
    ),
    (
        "a-pandas-dataframe",
        lambda r: r.train(__import__("pandas").DataFrame({"prompt": ["a?"], "completion": [" b"]})),
        DatasetTypeError,
        r"train dataset is DataFrame .*Fix: convert the DataFrame with `datasets.Dataset.from_pandas",
    ),
    (
        "a-number-instead-of-a-dataset",
        lambda r: r.prepare(42),
        DatasetTypeError,
        r"train dataset is int 42.*Fix",
    ),
    (
        "empty-streaming-dataset",
        lambda r: r.prepare(_gen([])),
        DatasetFormatError,
        r"train dataset has no rows.*Fix",
    ),
    (
        "streaming-text-none",
        lambda r: r.prepare(_gen([{"text": "hi"}, {"text": None}])),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `text` .*got NoneType None.*Fix",
    ),
    (
        "streaming-completion-none",
        lambda r: r.prepare(_gen([{"prompt": "hi", "completion": " x"}, {"prompt": "yo", "completion": None}])),
        DatasetTypeError,
        r"Row 1 of the train dataset: column `completion` must be a string, got NoneType.*Fix",
    ),
    (
        "streaming-prompt-dict",
        lambda r: r.prepare(_gen([{"prompt": {"q": "a"}, "completion": " x"}])),
        DatasetTypeError,
        r"Row 0 of the train dataset: column `prompt` must be a string, got dict.*Fix",
    ),
    (
        "streaming-message-content-none",
        lambda r: r.prepare(_gen([{"messages": _MSG[0]}, {"messages": chat(("user", "hi"), ("assistant", None))}])),
        DatasetTypeError,
        r"Row 1 of the train dataset: message 1 \(role 'assistant'\) has `content` NoneType.*Fix",
    ),
    (
        "streaming-empty-completion",
        lambda r: r.prepare(_gen([{"prompt": "a?", "completion": " x"}] * 3 + [{"prompt": "b?", "completion": " "}])),
        UnsupervisedRowsError,
        r"Row 3 of the streamed train dataset has no supervised token: empty completion.*Fix",
    ),
    (
        "streaming-prompt-truncated-away",
        lambda r: r.prepare(_gen([{"prompt": "a long prompt here ok", "completion": " x"}] * 2), max_length=3),
        UnsupervisedRowsError,
        r"Row 0 of the streamed train dataset .*truncated at max_length 3.*Fix: raise `max_length`",
    ),
    (
        "streaming-labels-minus-one",
        lambda r: r.prepare(
            _gen([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 6, 7], "labels": [-1, 6, 7]}])
        ),
        DatasetFormatError,
        r"Row 1 of the train dataset: `labels` holds -1.*Fix: use -100",
    ),
    (
        "streaming-input-ids-padded-with-minus-100",
        lambda r: r.prepare(_gen([{"input_ids": [5, 6, 7]}, {"input_ids": [5, 6, -100]}])),
        DatasetFormatError,
        r"Row 1 of the train dataset: `input_ids` holds -100 at position 2.*Fix: pad `input_ids` with",
    ),
    (
        "streaming-input-ids-nested",
        lambda r: r.prepare(_gen([{"input_ids": [[5, 6, 7]]}])),
        DatasetFormatError,
        r"Row 0 of the train dataset: `input_ids` is nested one level too deep.*Fix",
    ),
    (
        "tools-column-not-json",
        lambda r: r.prepare(_conversation(tools="{not json")),
        DatasetFormatError,
        r"Row 0 of the train dataset: `tools` is text that is not JSON.*Fix: store the tool schemas",
    ),
    (
        "tools-column-json-but-not-a-list",
        lambda r: r.prepare(_conversation(tools='"search"')),
        DatasetTypeError,
        r"Row 0 of the train dataset: `tools` must be a list of tool schemas.*Fix",
    ),
    (
        "chat-template-kwargs-not-a-dict",
        lambda r: r.prepare(_conversation(chat_template_kwargs="think")),
        DatasetTypeError,
        r"Row 0 of the train dataset: `chat_template_kwargs` must be a dict.*Fix",
    ),
    (
        "messages-not-a-list",
        lambda r: r.prepare(Dataset.from_dict({"messages": ["hello"]})),
        DatasetTypeError,
        r"Row 0 of the train dataset: `messages` must be a list of .*dicts.*Fix",
    ),
    (
        "message-content-a-number",
        lambda r: r.prepare([{"messages": chat(("user", "hi"), ("assistant", 5))}]),
        DatasetTypeError,
        r"Row 0 .*message 1 \(role 'assistant'\) has `content` int.*Fix",
    ),
    (
        "message-role-empty",
        lambda r: r.prepare([{"messages": [{"role": "", "content": "hi"}]}]),
        DatasetFormatError,
        r"Row 0 .*message 0 has no `role`.*Fix",
    ),
    (
        "conversational-completion-without-role",
        lambda r: r.prepare(
            Dataset.from_dict({"prompt": [chat(("user", "hi"))], "completion": [[{"content": "yo"}]]})
        ),
        DatasetFormatError,
        r"Row 0 of the train dataset: message 0 has no `role`.*Fix",
    ),
    (
        "empty-conversation",
        lambda r: r.prepare(Dataset.from_dict({"messages": [[], _MSG[0]]})),
        UnsupervisedRowsError,
        r"row 0: chat turns not located.*Fix",
    ),
    (
        "input-ids-padded-with-minus-100",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7, IGNORE], labels=[IGNORE, 6, 7, IGNORE])),
        DatasetFormatError,
        r"Row 0 of the train dataset: `input_ids` holds -100 at position 3; -100 belongs in `labels` only.*Fix",
    ),
    (
        "input-ids-negative",
        lambda r: r.prepare(_pretokenized(input_ids=[5, -3, 7])),
        DatasetFormatError,
        r"Row 0 .*`input_ids` holds -3 at position 1; token ids are >= 0.*Fix",
    ),
    (
        "input-ids-nested-one-level-too-deep",
        lambda r: r.train(_pretokenized(input_ids=[[5, 6, 7, 8]])),
        DatasetFormatError,
        r"column `input_ids` is nested one level too deep.*Fix: store one flat list",
    ),
    (
        "labels-nested-one-level-too-deep",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], labels=[[5, 6, 7]])),
        DatasetFormatError,
        r"column `labels` is nested one level too deep.*Fix",
    ),
    (
        "input-ids-a-string-per-row",
        lambda r: r.prepare(_pretokenized(input_ids="5 6 7")),
        DatasetTypeError,
        r"column `input_ids` holds string values, one per row.*Fix: store the tokenizer's",
    ),
    (
        "input-ids-an-int-per-row",
        lambda r: r.prepare(_pretokenized(input_ids=5)),
        DatasetTypeError,
        r"column `input_ids` holds int\d+ values, one per row.*Fix",
    ),
    (
        "attention-mask-all-zero",
        lambda r: r.train(_pretokenized(input_ids=[5, 6, 7], attention_mask=[0, 0, 0])),
        DatasetFormatError,
        r"Row 0 of the train dataset: `attention_mask` is all 0.*its labels are not the problem.*Fix",
    ),
    (
        "attention-mask-of-twos",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], attention_mask=[1, 2, 1])),
        DatasetFormatError,
        r"Row 0 .*`attention_mask` holds 2.*Fix",
    ),
    (
        "attention-mask-length-mismatch",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], attention_mask=[1, 1])),
        DatasetFormatError,
        r"Row 0 .*`attention_mask` has 2 entries but `input_ids` has 3.*Fix",
    ),
    (
        "completion-mask-length-mismatch",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], completion_mask=[0, 1])),
        DatasetFormatError,
        r"Row 0 .*`completion_mask` has 2 entries.*Fix",
    ),
    (
        "prompt-length-negative",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], prompt_length=-2)),
        DatasetTypeError,
        r"Row 0 .*`prompt_length` must be an int >= 0.*got int -2.*Fix",
    ),
    (
        "prompt-length-a-float",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], prompt_length=1.5)),
        DatasetTypeError,
        r"Row 0 .*`prompt_length` must be an int.*got float 1.5.*Fix",
    ),
    (
        "prompt-length-covers-the-row",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], prompt_length=3)),
        UnsupervisedRowsError,
        r"row 0: labels are all -100.*Fix",
    ),
    (
        "label-only-at-position-zero",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], labels=[5, IGNORE, IGNORE])),
        UnsupervisedRowsError,
        r"row 0: labels are all -100.*Fix",
    ),
    (
        "completion-mask-all-zero",
        lambda r: r.prepare(_pretokenized(input_ids=[5, 6, 7], completion_mask=[0, 0, 0])),
        UnsupervisedRowsError,
        r"row 0: labels are all -100.*Fix",
    ),
    (
        "text-rows-all-empty",
        lambda r: r.prepare(Dataset.from_dict({"text": ["", ""]})),
        UnsupervisedRowsError,
        r"row 0: .*Fix",
    ),
    (
        "eval-dataset-row-none",
        lambda r: r.train(
            eval_dataset=_pc(["a?", "b?"], [" x", None]), config=r.make_config(eval_strategy="steps", eval_steps=1)
        ),
        DatasetTypeError,
        r"Row 1 of the eval dataset: column `completion` .*NoneType.*Fix",
    ),
    (
        "named-eval-dataset-empty",
        lambda r: r.train(eval_dataset={"holdout": []}, config=r.make_config(eval_strategy="steps", eval_steps=1)),
        DatasetFormatError,
        r"holdout dataset is an empty list.*Fix",
    ),
    (
        "config-response-template-not-in-the-data",
        lambda r: r.prepare(
            Dataset.from_dict({"text": ["### Answer: b"] * 3 + ["nothing"]}), response_template="### Answer:"
        ),
        UnsupervisedRowsError,
        r"row 3: response template not found.*Fix",
    ),
    (
        "streaming-text-not-valid-unicode",
        lambda r: r.prepare(_gen([{"text": "ok"}, {"text": "bad \udcff"}]), dataset_num_proc=2),
        DatasetTypeError,
        r"Row 1 of the train dataset: its text is not valid Unicode.*Fix",
    ),
    (
        "dataset-num-proc-2-pretokenized-negative-id",
        lambda r: r.prepare(Dataset.from_dict({"input_ids": [[5, 6, 7]] * 3 + [[5, -7, 7]]}), dataset_num_proc=2),
        DatasetFormatError,
        r"Row 3 of the train dataset: `input_ids` holds -7.*Fix",
    ),
    (
        "dataset-num-proc-2-text-none",
        lambda r: r.prepare(Dataset.from_dict({"text": ["ok"] * 3 + [None]}), dataset_num_proc=2),
        DatasetTypeError,
        r"Row 3 of the train dataset: column `text` .*got NoneType None.*Fix",
    ),
]

# ---------------------------------------------------------------------------------------------------- config, every field
CASES += [
    (
        "max-length-a-string",
        lambda r: r.make_config(max_length="128"),
        ConfigError,
        r"`max_length` must be an int, got str '128'.*Fix: write it as a number, `max_length=128`",
    ),
    (
        "max-length-a-float",
        lambda r: r.make_config(max_length=8.0),
        ConfigError,
        r"`max_length` must be an int, got float 8.0.*Fix: write it as a whole number",
    ),
    (
        "max-length-a-bool",
        lambda r: r.make_config(max_length=True),
        ConfigError,
        r"`max_length` must be an int, got bool True",
    ),
    (
        "max-length-negative",
        lambda r: r.make_config(max_length=-5),
        ConfigError,
        r"`max_length` must be at least 2, got -5",
    ),
    (
        "gradient-accumulation-a-fraction",
        lambda r: r.make_config(gradient_accumulation_steps=2.5),
        ConfigError,
        r"`gradient_accumulation_steps` must be an int, got float 2.5",
    ),
    (
        "gradient-accumulation-a-string",
        lambda r: r.make_config(gradient_accumulation_steps="2"),
        ConfigError,
        r"`gradient_accumulation_steps` must be an int, got str '2'",
    ),
    (
        "batch-size-a-fraction",
        lambda r: r.make_config(per_device_train_batch_size=0.5),
        ConfigError,
        r"`per_device_train_batch_size` must be an int",
    ),
    (
        "batch-size-a-string",
        lambda r: r.make_config(per_device_train_batch_size="4"),
        ConfigError,
        r"`per_device_train_batch_size` must be an int, got str",
    ),
    (
        "eval-batch-size-zero",
        lambda r: r.make_config(per_device_eval_batch_size=0),
        ConfigError,
        r"`per_device_eval_batch_size` must be at least 1, got 0",
    ),
    (
        "learning-rate-a-string",
        lambda r: r.make_config(learning_rate="1e-4"),
        ConfigError,
        r"`learning_rate` must be a finite number, got str '1e-4'.*`learning_rate=0.0001`",
    ),
    (
        "learning-rate-nan",
        lambda r: r.make_config(learning_rate=float("nan")),
        ConfigError,
        r"`learning_rate` must be a finite number, got float nan",
    ),
    (
        "epochs-a-string",
        lambda r: r.make_config(num_train_epochs="3"),
        ConfigError,
        r"`num_train_epochs` must be a finite number, got str",
    ),
    (
        "epochs-negative",
        lambda r: r.make_config(num_train_epochs=-1),
        ConfigError,
        r"`num_train_epochs` must be >= 0, got -1",
    ),
    (
        "epochs-infinite",
        lambda r: r.make_config(num_train_epochs=float("inf")),
        ConfigError,
        r"`num_train_epochs` must be a finite number, got float inf",
    ),
    (
        "max-steps-a-fraction",
        lambda r: r.make_config(max_steps=2.5),
        ConfigError,
        r"`max_steps` must be an int, got float 2.5",
    ),
    ("max-steps-zero", lambda r: r.make_config(max_steps=0), ConfigError, r"`max_steps` must be -1 .* or > 0, got 0"),
    (
        "max-steps-below-minus-one",
        lambda r: r.make_config(max_steps=-5),
        ConfigError,
        r"`max_steps` must be -1 .*got -5",
    ),
    (
        "truncation-mode-typo",
        lambda r: r.make_config(truncation_mode="keep_middle"),
        ConfigError,
        r"`truncation_mode` must be one of 'keep_start', 'keep_end', got 'keep_middle'",
    ),
    (
        "truncation-mode-left",
        lambda r: r.make_config(truncation_mode="left"),
        ConfigError,
        r"`truncation_mode` must be one of .*got 'left'",
    ),
    (
        "masked-row-policy-none",
        lambda r: r.make_config(masked_row_policy=None),
        ConfigError,
        r"`masked_row_policy` must be one of .*got None",
    ),
    (
        "masked-row-policy-capitalised",
        lambda r: r.make_config(masked_row_policy="Drop"),
        ConfigError,
        r"`masked_row_policy` must be one of .*got 'Drop'.*Did you mean 'drop'",
    ),
    (
        "max-masked-row-fraction-a-string",
        lambda r: r.make_config(max_masked_row_fraction="0.1"),
        ConfigError,
        r"`max_masked_row_fraction` must be a finite number, got str",
    ),
    (
        "max-masked-row-fraction-a-bool",
        lambda r: r.make_config(max_masked_row_fraction=True),
        ConfigError,
        r"`max_masked_row_fraction` must be a finite number, got bool",
    ),
    (
        "max-masked-row-fraction-above-one",
        lambda r: r.make_config(max_masked_row_fraction=1.5),
        ConfigError,
        r"`max_masked_row_fraction` must be a share between 0 and 1, got 1.5",
    ),
    (
        "max-masked-row-fraction-negative",
        lambda r: r.make_config(max_masked_row_fraction=-0.1),
        ConfigError,
        r"`max_masked_row_fraction` must be >= 0, got -0.1",
    ),
    (
        "assistant-turns-typo",
        lambda r: r.make_config(assistant_turns="first"),
        ConfigError,
        r"`assistant_turns` must be one of 'all', 'last', got 'first'",
    ),
    (
        "train-on-eot-a-string",
        lambda r: r.make_config(train_on_eot="yes"),
        ConfigError,
        r"`train_on_eot` must be True or False, or one of .turn., .none., .last., .all., got str .yes..*`train_on_eot=True`",
    ),
    (
        "health-checks-a-string",
        lambda r: r.make_config(health_checks="no"),
        ConfigError,
        r"`health_checks` must be True or False.*`health_checks=False`",
    ),
    (
        "pack-within-batch-an-int",
        lambda r: r.make_config(pack_within_batch=1),
        ConfigError,
        r"`pack_within_batch` must be True or False, got int 1",
    ),
    (
        "completion-only-loss-a-string",
        lambda r: r.make_config(completion_only_loss="true"),
        ConfigError,
        r"`completion_only_loss` must be True or False",
    ),
    (
        "assistant-only-loss-a-string",
        lambda r: r.make_config(assistant_only_loss="false"),
        ConfigError,
        r"`assistant_only_loss` must be True or False.*`assistant_only_loss=False`",
    ),
    ("packing-a-string", lambda r: r.make_config(packing="yes"), ConfigError, r"`packing` must be True or False"),
    (
        "padding-free-a-string",
        lambda r: r.make_config(padding_free="yes"),
        ConfigError,
        r"`padding_free` must be True or False",
    ),
    (
        "remove-unused-columns-a-string",
        lambda r: r.make_config(remove_unused_columns="False"),
        ConfigError,
        r"`remove_unused_columns` must be True or False.*`remove_unused_columns=False`",
    ),
    ("bf16-a-string", lambda r: r.make_config(bf16="yes"), ConfigError, r"`bf16` must be True or False"),
    (
        "min-completion-tokens-a-float",
        lambda r: r.make_config(min_completion_tokens=2.0),
        ConfigError,
        r"`min_completion_tokens` must be an int, got float 2.0",
    ),
    (
        "min-completion-tokens-a-bool",
        lambda r: r.make_config(min_completion_tokens=True),
        ConfigError,
        r"`min_completion_tokens` must be an int, got bool",
    ),
    (
        "min-completion-tokens-zero",
        lambda r: r.make_config(min_completion_tokens=0),
        ConfigError,
        r"`min_completion_tokens` must be at least 1, got 0",
    ),
    (
        "min-completion-tokens-not-below-max-length",
        lambda r: r.make_config(min_completion_tokens=16, max_length=16),
        ConfigError,
        r"`min_completion_tokens` \(16\) must be below `max_length` \(16\)",
    ),
    (
        "min-completion-tokens-with-keep-end",
        lambda r: r.make_config(min_completion_tokens=4, truncation_mode="keep_end"),
        ConfigError,
        r"`min_completion_tokens=4` .*`truncation_mode='keep_end'`.*Fix: drop one",
    ),
    (
        "prompt-column-a-number",
        lambda r: r.make_config(prompt_column=3),
        ConfigError,
        r"`prompt_column` must be a non-empty column name, got int 3",
    ),
    (
        "prompt-column-empty",
        lambda r: r.make_config(prompt_column=""),
        ConfigError,
        r"`prompt_column` must be a non-empty column name",
    ),
    (
        "prompt-and-completion-column-the-same",
        lambda r: r.make_config(prompt_column="q", completion_column="q"),
        ConfigError,
        r"`prompt_column` and `completion_column` are both 'q'",
    ),
    (
        "dataset-text-field-empty",
        lambda r: r.make_config(dataset_text_field=""),
        ConfigError,
        r"`dataset_text_field` must be a non-empty column name",
    ),
    (
        "dataset-text-field-none",
        lambda r: r.make_config(dataset_text_field=None),
        ConfigError,
        r"`dataset_text_field` must be a non-empty column name, got NoneType",
    ),
    (
        "response-template-empty",
        lambda r: r.make_config(response_template=""),
        ConfigError,
        r"`response_template` must be a non-empty string or None",
    ),
    (
        "response-template-a-number",
        lambda r: r.make_config(response_template=5),
        ConfigError,
        r"`response_template` must be a non-empty string or None, got int 5",
    ),
    (
        "instruction-template-without-response-template",
        lambda r: r.make_config(instruction_template="### Q:"),
        ConfigError,
        r"`instruction_template` is '### Q:' but `response_template` is None",
    ),
    (
        "max-grad-norm-negative",
        lambda r: r.make_config(max_grad_norm=-1),
        ConfigError,
        r"`max_grad_norm` must be >= 0, got -1",
    ),
    (
        "max-grad-norm-a-string",
        lambda r: r.make_config(max_grad_norm="1"),
        ConfigError,
        r"`max_grad_norm` must be a finite number, got str",
    ),
    (
        "weight-decay-negative",
        lambda r: r.make_config(weight_decay=-0.1),
        ConfigError,
        r"`weight_decay` must be >= 0, got -0.1",
    ),
    (
        "warmup-steps-negative",
        lambda r: r.make_config(warmup_steps=-1),
        ConfigError,
        r"`warmup_steps` must be >= 0, got -1",
    ),
    (
        "adam-beta1-above-one",
        lambda r: r.make_config(adam_beta1=1.5),
        ConfigError,
        r"`adam_beta1` must be in \[0, 1\), got float 1.5",
    ),
    (
        "adam-epsilon-negative",
        lambda r: r.make_config(adam_epsilon=-1.0),
        ConfigError,
        r"`adam_epsilon` must be > 0, got -1.0",
    ),
    (
        "logging-steps-zero",
        lambda r: r.make_config(logging_steps=0),
        ConfigError,
        r"`logging_strategy='steps'` needs `logging_steps` > 0, got int 0",
    ),
    (
        "save-steps-zero-with-save-strategy-steps",
        lambda r: r.make_config(save_strategy="steps", save_steps=0),
        ConfigError,
        r"`save_strategy='steps'` needs `save_steps` > 0",
    ),
    (
        "eval-steps-negative",
        lambda r: r.make_config(eval_strategy="steps", eval_steps=-1),
        ConfigError,
        r"`eval_strategy='steps'` needs `eval_steps` > 0",
    ),
    (
        "seed-a-string",
        lambda r: r.make_config(seed="42"),
        ConfigError,
        r"`seed` must be an int, got str '42'.*`seed=42`",
    ),
    ("seed-negative", lambda r: r.make_config(seed=-1), ConfigError, r"`seed` must be at least 0, got -1"),
    (
        "dataset-num-proc-zero",
        lambda r: r.make_config(dataset_num_proc=0),
        ConfigError,
        r"`dataset_num_proc` must be at least 1, got 0",
    ),
    (
        "dataset-num-proc-a-string",
        lambda r: r.make_config(dataset_num_proc="2"),
        ConfigError,
        r"`dataset_num_proc` must be an int, got str",
    ),
    (
        "dataloader-num-workers-negative",
        lambda r: r.make_config(dataloader_num_workers=-1),
        ConfigError,
        r"`dataloader_num_workers` must be at least 0, got -1",
    ),
    (
        "label-names-a-string",
        lambda r: r.make_config(label_names="labels"),
        ConfigError,
        r"`label_names` must be a list of strings, got str 'labels'.*\['labels'\]",
    ),
    (
        "eos-token-an-id",
        lambda r: r.make_config(eos_token=5),
        ConfigError,
        r"`eos_token` must be a non-empty string or None, got int 5",
    ),
    (
        "output-dir-empty",
        lambda r: r.make_config(output_dir=""),
        ConfigError,
        r"`output_dir` must be a folder path, got str ''",
    ),
    (
        "lr-scheduler-typo",
        lambda r: r.make_config(lr_scheduler_type="cosinus"),
        ConfigError,
        r"`lr_scheduler_type` must be one of .*got 'cosinus'.*Did you mean 'cosine'",
    ),
    ("optimizer-typo", lambda r: r.make_config(optim="adamw"), ConfigError, r"`optim` must be one of .*got 'adamw'"),
    (
        "save-strategy-typo",
        lambda r: r.make_config(save_strategy="epochs"),
        ConfigError,
        r"`save_strategy` must be one of 'no', 'steps', 'epoch', 'best', got 'epochs'.*Did you mean 'epoch'",
    ),
    (
        "eval-strategy-typo",
        lambda r: r.make_config(eval_strategy="step"),
        ConfigError,
        r"`eval_strategy` must be one of .*got 'step'.*Did you mean 'steps'",
    ),
    (
        "logging-strategy-typo",
        lambda r: r.make_config(logging_strategy="never"),
        ConfigError,
        r"`logging_strategy` must be one of .*got 'never'",
    ),
    (
        "packing-strategy-typo",
        lambda r: r.make_config(packing_strategy="best"),
        ConfigError,
        r"`packing_strategy` must be one of 'bfd', 'bfd_split', 'wrapped', got 'best'",
    ),
    (
        "loss-type-typo",
        lambda r: r.make_config(loss_type="nl"),
        ConfigError,
        r"`loss_type` must be one of .*got 'nl'.*Did you mean 'nll'",
    ),
    ("fp16-and-bf16", lambda r: r.make_config(fp16=True, bf16=True), ConfigError, r"`bf16` and `fp16` are both True"),
    (
        "load-best-model-without-evaluation",
        lambda r: r.make_config(load_best_model_at_end=True, eval_strategy="no", save_strategy="steps"),
        ConfigError,
        r"`load_best_model_at_end=True` needs checkpoints where evaluations happen.*'steps'.*'no'.*Fix",
    ),
    (
        "load-best-model-with-save-steps-not-a-multiple",
        lambda r: r.make_config(
            load_best_model_at_end=True, eval_strategy="steps", eval_steps=10, save_strategy="steps", save_steps=15
        ),
        ConfigError,
        r"`save_steps=15` and `eval_steps=10`.*Fix: make `save_steps` a multiple of `eval_steps`, e.g. 20",
    ),
]

# ------------------------------------------------------------------------------------ config read by the pipeline
CASES += [
    (
        "sft-config-truncation-mode-typo",
        lambda r: r.prepare(qa_rows(), config=_sft_config(r, truncation_mode="keep_middle")),
        ConfigError,
        r"`truncation_mode` must be one of 'keep_start', 'keep_end', got 'keep_middle'.*Fix",
    ),
    (
        "sft-config-truncation-mode-typo-in-the-trainer",
        lambda r: r.train(config=_sft_config(r, truncation_mode="keep_middle", max_steps=1)),
        ConfigError,
        r"`truncation_mode` must be one of .*got 'keep_middle'",
    ),
    (
        "sft-config-max-length-a-float",
        lambda r: r.prepare(qa_rows(), config=_sft_config(r, max_length=8.0)),
        ConfigError,
        r"`max_length` must be an int, got float 8.0",
    ),
    (
        "sft-config-dataset-text-field-none",
        lambda r: r.prepare(qa_rows(), config=_sft_config(r, dataset_text_field=None)),
        ConfigError,
        r"`dataset_text_field` must be a non-empty column name",
    ),
    (
        "config-changed-after-it-was-built",
        lambda r: r.train(config=_changed_config(r, max_length="128")),
        ConfigError,
        r"`max_length` must be an int, got str '128'",
    ),
    (
        "config-policy-changed-after-it-was-built",
        lambda r: r.prepare(qa_rows(), config=_changed_config(r, masked_row_policy="skip")),
        ConfigError,
        r"`masked_row_policy` must be one of .*got 'skip'",
    ),
]

# ---------------------------------------------------------------------------------------------------- checkpoints
CASES += [
    (
        "resume-from-a-checkpoint-without-trainer-state",
        lambda r: r.resume(_checkpoint(r, 2, state=None)),
        CheckpointError,
        r"checkpoint-2'` is incomplete: it has no readable `trainer_state.json`.*Fix: train without",
    ),
    (
        "resume-from-a-checkpoint-whose-trainer-state-is-not-json",
        lambda r: r.resume(_checkpoint(r, 2, state='{"global_st')),
        CheckpointError,
        r"checkpoint-2'` is incomplete.*Fix",
    ),
    (
        "resume-from-a-checkpoint-whose-trainer-state-is-a-list",
        lambda r: r.resume(_checkpoint(r, 2, state="[1, 2]")),
        CheckpointError,
        r"trainer_state.json` is not a JSON object.*Fix",
    ),
    (
        "resume-from-a-checkpoint-whose-trainer-state-is-empty",
        lambda r: r.resume(_checkpoint(r, 2, state="{}")),
        CheckpointError,
        r"trainer_state.json` is corrupt: it has no `global_step`.*Fix",
    ),
    (
        "resume-true-past-a-checkpoint-whose-trainer-state-is-empty",
        lambda r: (_checkpoint(r, 1, state="{}"), r.resume(True)),
        CheckpointError,
        r"holds no complete checkpoint \(incomplete: .*checkpoint-1 \(`.*trainer_state.json` is corrupt.*start afresh",
    ),
    (
        "resume-from-a-checkpoint-without-weights",
        lambda r: r.resume(_without(r, 2, "model.safetensors")),
        CheckpointError,
        r"checkpoint-2'` is incomplete: it holds no model weights \(no `model.safetensors`.*adapter.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-a-scheduler-but-no-optimizer",
        lambda r: r.resume(_without(r, 2, "optimizer.pt")),
        CheckpointError,
        r"checkpoint-2'` is incomplete: it has `scheduler.pt` but no `optimizer.pt`.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-truncated-weights",
        lambda r: r.resume(_truncated(r, 2, "model.safetensors")),
        CheckpointError,
        r"model.safetensors` is corrupt: it is cut short.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-garbage-weights",
        lambda r: r.resume(_checkpoint(r, 2, model__safetensors=b"not a tensor file")),
        CheckpointError,
        r"model.safetensors` is corrupt: its header is unreadable.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-a-corrupt-optimizer",
        lambda r: r.resume(_truncated(r, 2, "optimizer.pt")),
        CheckpointError,
        r"optimizer.pt` is corrupt: it is not a readable torch file.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-a-corrupt-scheduler",
        lambda r: r.resume(_checkpoint(r, 2, scheduler__pt=b"\x00" * 10)),
        CheckpointError,
        r"scheduler.pt` is corrupt.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-a-corrupt-rng-state",
        lambda r: r.resume(_truncated(r, 2, "rng_state.pth")),
        CheckpointError,
        r"rng_state.pth` is corrupt.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-a-truncated-adapter",
        lambda r: r.resume(_checkpoint(r, 2, adapter_model__safetensors=b"\x40\x00\x00\x00\x00\x00\x00\x00{")),
        CheckpointError,
        r"adapter_model.safetensors` is corrupt.*Fix",
    ),
    (
        "resume-from-a-checkpoint-with-an-empty-optimizer-file",
        lambda r: r.resume(_checkpoint(r, 2, optimizer__pt=b"")),
        CheckpointError,
        r"optimizer.pt` is corrupt: it is not a readable torch file.*Fix",
    ),
    (
        "resume-names-the-last-sound-checkpoint",
        lambda r: (_checkpoint(r, 1), r.resume(_truncated(r, 2, "optimizer.pt"))),
        CheckpointError,
        r"optimizer.pt` is corrupt.*Fix: resume from .*checkpoint-1 \(the last complete one\)",
    ),
    (
        "resume-true-with-only-corrupt-checkpoints",
        lambda r: (_truncated(r, 2, "model.safetensors"), r.resume(True)),
        CheckpointError,
        r"holds no complete checkpoint \(incomplete: .*checkpoint-2 \(`.*model.safetensors` is corrupt.*start afresh",
    ),
    (
        "resume-from-a-file",
        lambda r: r.resume(str(Path(_checkpoint(r, 2)) / "trainer_state.json")),
        CheckpointError,
        r"is a file, not a checkpoint folder.*Fix",
    ),
    (
        "resume-from-a-number",
        lambda r: r.resume(5),
        CheckpointError,
        r"`resume_from_checkpoint` must be a checkpoint folder, True or None, got int 5.*Fix",
    ),
    (
        "resume-from-a-checkpoint-of-another-model",
        lambda r: r.resolve(_other_model_checkpoint(r)),
        CheckpointError,
        r"holds the weights of another model: `.*` has shape \[.*\] there and \[.*\] in this model.*Fix",
    ),
]

# ---------------------------------------------------------------------------------------------------- tokenizers
CASES += [
    (
        "tokenizer-without-eos-for-prompt-completion-rows",
        lambda r: r.train(qa_rows(4), tokenizer=_tokenizer_without("eos_token")),
        ModelSetupError,
        r"The tokenizer has no eos token.*Fix",
    ),
]

CASES += [
    (
        "pipeline-without-a-tokenizer",
        lambda r: __import__("trl_masked_sft").PreparationPipeline.from_config(None, r.make_config()),
        ModelSetupError,
        r"The tokenizer given is NoneType None.*Fix: pass the model's tokenizer",
    ),
    (
        "pipeline-given-a-tokenizer-path",
        lambda r: r.prepare(qa_rows(), tokenizer="./my-tokenizer"),
        ModelSetupError,
        r"The tokenizer given is str './my-tokenizer'.*Fix: load it first: `AutoTokenizer.from_pretrained",
    ),
    (
        "response-template-ids-not-in-the-data",
        lambda r: r.train(
            Dataset.from_dict({"text": ["### Answer: b"] * 4}),
            data_collator=DataCollatorForCompletionOnlyLM([399, 398], tokenizer=r.tokenizer),
        ),
        UnsupervisedRowsError,
        r"4 of 4 rows .*response template not found.*Fix: make `response_template` match",
    ),
]

# ---------------------------------------------------------------------------------------------------- the CLI
CASES += [
    (
        "cli-missing-local-dataset-file",
        lambda r: r.cli("audit", "--dataset_name", str(r.tmp_path / "missing.jsonl")),
        DataSourceError,
        r"--dataset_name '.*missing.jsonl': no such file or folder.*Fix: check the path",
    ),
    (
        "cli-missing-relative-dataset-file",
        lambda r: r.cli("audit", "--dataset_name", "./no-such-data.jsonl"),
        DataSourceError,
        r"no such file or folder.*Fix",
    ),
    (
        "cli-missing-dataset-folder",
        lambda r: r.cli("inspect", "--dataset_name", str(r.tmp_path / "nothing") + "/"),
        DataSourceError,
        r"no such file or folder.*Fix",
    ),
    (
        "cli-hub-dataset-offline",
        lambda r: r.cli("audit", "--dataset_name", "no-such-owner/no-such-dataset"),
        DataSourceError,
        r"'no-such-owner/no-such-dataset' is not a local file or folder, and loading it from the Hub failed.*Fix",
    ),
    (
        "cli-unsupported-file-type",
        lambda r: r.cli("audit", "--dataset_name", _write(r, "rows.txt", "a b")),
        DataSourceError,
        r"is a file of an unsupported type \(\.txt\)\. Fix: use one of",
    ),
    (
        "cli-folder-without-train-file",
        lambda r: r.cli("audit", "--dataset_name", _folder(r, "valid.jsonl", "test.jsonl")),
        DataSourceError,
        r"has no train.json/.jsonl/.csv/.parquet file \(found: \['test.jsonl', 'valid.jsonl'\]\).*Fix",
    ),
    (
        "cli-folder-with-two-train-files",
        lambda r: r.cli("audit", "--dataset_name", _folder(r, "train.json", "train.jsonl")),
        DataSourceError,
        r"two files for the split 'train': train.json and train.jsonl.*Fix",
    ),
    (
        "cli-jsonl-that-is-not-json",
        lambda r: r.cli("audit", "--dataset_name", _write(r, "bad.jsonl", '{"prompt": "a?", "completion"\n')),
        DataSourceError,
        r"can't read .*bad.jsonl as JSON.*Fix: check the file",
    ),
    (
        "cli-homework-json-with-a-none-answer",
        lambda r: r.cli("audit", "--dataset_name", _write(r, "hw.json", '[["q?", 1], ["r?", null]]')),
        DatasetTypeError,
        r"Row 1 of the hw.json dataset: column `completion` must be a string, got NoneType.*Fix",
    ),
    (
        "cli-missing-tokenizer-folder",
        lambda r: r.cli("audit", "--dataset_name", _folder(r, "train.jsonl"), "--tokenizer_name_or_path", "./no-tok"),
        DataSourceError,
        r"--tokenizer_name_or_path './no-tok': no such folder.*Fix: point it at a folder",
    ),
    (
        "cli-empty-tokenizer-folder",
        lambda r: r.cli(
            "audit", "--dataset_name", _folder(r, "train.jsonl"), "--tokenizer_name_or_path", str(_folder(r))
        ),
        DataSourceError,
        r"can't load a tokenizer \(the folder has no tokenizer files\).*Fix",
    ),
    (
        "cli-max-length-too-small",
        lambda r: r.cli("audit", "--dataset_name", _folder(r, "train.jsonl"), "--max_length", "1"),
        ConfigError,
        r"`max_length` must be at least 2, got 1",
    ),
]


def test_the_table_has_at_least_150_cases_across_data_config_model_tokenizer_checkpoints_and_the_cli():
    """The table covers at least 150 malformed inputs, each with its own id."""
    assert len(CASES) >= 150 and len({case[0] for case in CASES}) == len(CASES)


#: Cases whose clear error is raised by TRL or our trainer as a plain ValueError (not a dependency's deep frame).
UPSTREAM = {
    "eval-strategy-without-eval-dataset",
    "peft-model-and-peft-config",
    "chat-data-and-no-chat-template",
}
#: Written when training starts, before a per-batch check can fail: the pre-flight audit (a report, not a result).
REPORTS = {"masked_sft_audit.json"}
FIX = re.compile(r"Fix|fix|Use |Set |set |Pass |pass |resize|merge and unload|Either", re.S)


@pytest.mark.parametrize(("case", "act", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_fails_early_with_our_message(tokenizer, make_config, tmp_path, case, act, error, pattern):
    """The input raises our exception naming the row or field and the fix, from our code, with nothing written or
    trained."""
    run = Run(tokenizer=tokenizer, make_config=make_config, tmp_path=tmp_path)
    with pytest.raises(error) as info:
        act(run)
    message = str(info.value)
    assert re.search(pattern, message, re.S), message
    assert FIX.search(message), f"no fix in: {message}"
    if case not in UPSTREAM:
        assert isinstance(info.value, MaskedSFTError), f"{type(info.value).__module__}.{type(info.value).__name__}"
    raised_in = traceback.extract_tb(info.value.__traceback__)[-1].filename
    assert not any(source in raised_in for source in RAW_SOURCES), f"raw traceback from {raised_in}"
    if case not in UPSTREAM:
        assert "/trl_masked_sft/" in raised_in, f"raised in {raised_in}"
    written = {entry for entry in _listing(tmp_path / "out") - (run.out_before or set()) if entry[0] not in REPORTS}
    assert not written, f"something was written under output_dir: {written}"
    if run.trainer is not None:
        assert run.trainer.state.global_step == 0  # nothing was trained
    if run.weights is not None:
        for name, param in run.model.named_parameters():
            assert torch.equal(param.detach(), run.weights[name]), f"{name} changed"


def test_valid_edge_cases_pass_the_data_checks(tokenizer, model, make_config):
    """A tool-call message with no content, and -100 labels, are valid: the new checks let them through."""
    from trl_masked_sft.row_checks import check_messages

    tool_call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    check_messages([[{"role": "user", "content": "hi"}, tool_call]], "train")
    data = _pretokenized(input_ids=[5, 6, 7, 8], labels=[IGNORE, IGNORE, 7, 8])
    trainer = MaskedSFTTrainer(model, args=make_config(max_steps=1), train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------------------------------------------- not errors


def _prepared(tokenizer, rows, **overrides):
    from trl_masked_sft import MaskedSFTConfig, PreparationPipeline

    config = MaskedSFTConfig(output_dir="unused", report_to="none", use_cpu=True, **overrides)
    return list(PreparationPipeline.from_config(tokenizer, config).prepare(rows, "train").dataset)


def _trained_eos(row, eos_id: int) -> int:
    return sum(1 for label in row["labels"][1:] if label == eos_id)


@pytest.mark.parametrize("layout", ["prompt/completion", "text", "text ending in eos"])
def test_a_tokenizer_that_appends_eos_itself_trains_exactly_one_eos(layout):
    """A post-processor that appends eos, plus the eos the pipeline appends, would train two; one is trained."""
    tokenizer = _eos_tokenizer()
    eos = tokenizer.eos_token
    rows = {
        "prompt/completion": Dataset.from_dict({"prompt": ["How many?", "Why?"], "completion": [" 3", " no" + eos]}),
        "text": Dataset.from_dict({"text": ["hello world", "good day"]}),
        "text ending in eos": Dataset.from_dict({"text": ["hello world" + eos, "good day" + eos]}),
    }[layout]
    for row in _prepared(tokenizer, rows):
        assert _trained_eos(row, tokenizer.eos_token_id) == 1, row
        assert row["input_ids"][-1] == tokenizer.eos_token_id and row["input_ids"][-2] != tokenizer.eos_token_id


def test_prompt_completion_wins_over_text_and_trains_the_eos(tokenizer):
    """A dataset with `text` and prompt/completion trains the completion and its eos, never the prompt."""
    rows = Dataset.from_dict({"text": ["ignored text"], "prompt": ["How many?"], "completion": [" 3"]})
    (row,) = _prepared(tokenizer, rows)
    prompt_length = len(tokenizer("How many?")["input_ids"])
    assert row["labels"][:prompt_length] == [IGNORE] * prompt_length
    assert row["labels"][-1] == tokenizer.eos_token_id and _trained_eos(row, tokenizer.eos_token_id) == 1


def test_numbers_among_strings_in_a_list_of_dicts_are_written_as_text(tokenizer):
    """A completion column mixing numbers and strings is valid: the numbers become text, no row is lost."""
    rows = _prepared(tokenizer, [{"prompt": "a?", "completion": " x"}, {"prompt": "b?", "completion": 3}])
    assert len(rows) == 2
    assert tokenizer.decode([t for t in rows[1]["labels"] if t != IGNORE]).startswith("3")


def test_a_cli_folder_keeps_valid_and_test_rows_apart(tmp_path, capsys):
    """train/valid/test files are three splits; `valid` is not read as `test`, and no row is lost."""
    from trl_masked_sft.cli.sources import load_rows

    for name, count in (("train", 3), ("valid", 2), ("test", 1)):
        lines = [f'{{"prompt": "{name} {i}?", "completion": " x"}}' for i in range(count)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    splits = load_rows(str(tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "valid": 2, "test": 1}
    assert splits["test"][0]["prompt"] == "test 0?"


def test_a_cli_folder_without_test_uses_valid_as_test_and_says_so(tmp_path, capsys):
    """With no test file, `valid` also answers to `test` (TRL's default test split), said on stdout."""
    from trl_masked_sft.cli.sources import load_rows

    for name in ("train", "valid"):
        (tmp_path / f"{name}.jsonl").write_text(f'{{"prompt": "{name}?", "completion": " x"}}\n')
    splits = load_rows(str(tmp_path))
    assert splits["test"][0]["prompt"] == "valid?" and splits["valid"][0]["prompt"] == "valid?"
    assert "Using valid.jsonl as the `test` split" in capsys.readouterr().out


def test_resume_true_falls_back_past_a_corrupt_checkpoint_and_says_so(tokenizer, make_config, tmp_path, capture_logs):
    """The newest checkpoint's optimizer is corrupt: True resumes from the previous one, naming the file."""
    from trl_masked_sft.checkpoints import resolve_resume_checkpoint

    run = Run(tokenizer=tokenizer, make_config=make_config, tmp_path=tmp_path)
    good = _checkpoint(run, 1)
    _truncated(run, 2, "optimizer.pt")
    logs = capture_logs("trl_masked_sft.checkpoints")
    assert resolve_resume_checkpoint(True, str(tmp_path / "out")) == good
    assert any("checkpoint-2" in m and "optimizer.pt` is corrupt" in m and "falling back" in m for m in logs), logs


def test_the_troubleshooting_page_lists_every_case():
    """docs/troubleshooting.md names every case of the table (regenerate its last section when adding one)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    missing = [case[0] for case in CASES if f"`{case[0]}`" not in page]
    assert not missing, missing


def test_a_legacy_torch_file_in_a_checkpoint_is_not_called_corrupt(tmp_path):
    """A `torch.save` file in the pre-1.6 (non-zip) format is left to torch, not refused as corrupt."""
    from safetensors.torch import save_file

    from trl_masked_sft.checkpoints import checkpoint_problem

    (tmp_path / "trainer_state.json").write_text('{"global_step": 1, "train_batch_size": 4}')
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    torch.save({"step": torch.tensor(1)}, tmp_path / "rng_state.pth", _use_new_zipfile_serialization=False)
    assert checkpoint_problem(tmp_path) is None
