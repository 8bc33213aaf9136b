"""`MaskedSFTTrainer`: `trl.SFTTrainer` that never trains silently on nothing or on the wrong tokens.

The trainer wires the pieces together; the masking arithmetic lives in `masking.py`, the checks in `validation.py`,
the data checks in `data.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin, TrainingArguments
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLDataCollatorForLanguageModeling

from .audit import AUDIT_COLUMNS, COUNT, FULL_COUNT, FULL_FIRST, LENGTH, REASON, STOP_OK, AuditReport, build_report
from .chat import chat_labels, special_token_ids
from .checkpoints import resolve_resume_checkpoint
from .collator import DataCollatorForCompletionOnlyLM
from .config import MaskedSFTConfig
from .data import coerce_dataset, column_names, map_rows, normalize_dataset, prepare_pretokenized, tokenize_plain
from .distributed import run_on_main, validate_batch_across_ranks
from .errors import LabelsOverwrittenError, MaskedSFTWarning, UnsupervisedRowsError
from .health import TrainingHealthGuard
from .masking import spans_to_labels
from .model_checks import check_model_before_training, check_processing_class
from .packing import PACKED_TOKENS_KEY, PackingCollator, packing_is_exact
from .validation import RowAudit, audit_labels, supervision_stats

__all__ = ["MaskedSFTTrainer"]

logger = logging.get_logger(__name__)

_IGNORE = -100


def _setting(args: Any, name: str) -> Any:
    """A MaskedSFTConfig field, or its default when the user passed a plain SFTConfig."""
    if hasattr(args, name):
        return getattr(args, name)
    return MaskedSFTConfig.__dataclass_fields__[name].default


def _is_conversation(dataset) -> bool:
    """`messages` rows, or prompt/completion rows given as lists of messages."""
    columns = column_names(dataset)
    if "messages" in columns:
        return True
    if not {"prompt", "completion"} <= set(columns):
        return False
    first = next(iter(dataset))
    return isinstance(first["prompt"], list) and isinstance(first["completion"], list)


def _completion_only(args: Any) -> bool:
    """Completion-only loss is the product: `None` (TRL's "decide from the data") means on; an explicit False stays."""
    return args.completion_only_loss is not False


def _template_masker(args: Any, data_collator: Any, tokenizer: Any) -> DataCollatorForCompletionOnlyLM | None:
    """The template masking to bake into the labels: the user's template collator, else the config's template."""
    if isinstance(data_collator, DataCollatorForCompletionOnlyLM) and data_collator.has_template:
        return data_collator
    response = _setting(args, "response_template")
    if response is None or tokenizer is None:
        return None
    return DataCollatorForCompletionOnlyLM(response, _setting(args, "instruction_template"), tokenizer=tokenizer)


def _stop_token_ids(tokenizer) -> set[int]:
    """Tokens that end a completion: eos and the special end-of-turn tokens of chat templates."""
    ids = special_token_ids(tokenizer)
    if tokenizer.bos_token_id != tokenizer.eos_token_id:  # GPT-2 style tokenizers use one token for both
        ids.discard(tokenizer.bos_token_id)
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        ids.discard(tokenizer.pad_token_id)
    return ids


def truncate_row(
    ids: list[int],
    labels: list[int],
    max_length: int | None,
    *,
    keep_end: bool = False,
    min_completion: int | None = None,
) -> tuple[list[int], list[int]]:
    """Cut a row to `max_length`: its end (`keep_start`) or its start (`keep_end`).

    With `min_completion`, a row that cutting its end would leave with fewer than `min_completion` completion tokens
    loses the start of its prompt instead, keeping as much of the completion as fits: all of it when it fits beside
    one prompt token (position 0 is never a target), else its first `max_length - 1` tokens.
    """
    if max_length is None or len(ids) <= max_length:
        return ids, labels
    if keep_end:
        return ids[-max_length:], labels[-max_length:]
    if min_completion:
        prompt = next((i for i, lab in enumerate(labels) if lab != _IGNORE), len(labels))
        completion = len(ids) - prompt
        if max(0, max_length - prompt) < min(min_completion, completion):
            keep = min(completion, max_length - 1)
            cut = min(prompt + keep - max_length, max(prompt - 1, 0))
            ids, labels = ids[cut:], labels[cut:]
    return ids[:max_length], labels[:max_length]


def _preparer(tokenizer, args: Any, data_collator: Any = None) -> MaskedSFTTrainer:
    """A trainer without a model, for preparing and auditing data exactly as training would (`audit_dataset`, the
    mask inspector, the CLI). Only the preparation methods may be called on it."""
    self = MaskedSFTTrainer.__new__(MaskedSFTTrainer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    self._tokenizer = tokenizer
    self.chat_template = None
    self._skip_prepare_dataset = False
    self.completion_only_loss = self._completion_only = _completion_only(args)
    self._msft_chat = self._completion_only or bool(args.assistant_only_loss)
    self._msft_formatting_func = None
    self._msft_collator = data_collator
    self._msft_said_no_boundary = True
    self._msft_audits, self._msft_verdicts = {}, {}
    self._msft_template = None  # built from the tokenizer in `_prepare_dataset`
    self._msft_audit_only = True
    return self


@contextlib.contextmanager
def _overridden(args: Any, **values: Any):
    """Set attributes of `args` for the duration of the block, then restore them."""
    saved = {name: getattr(args, name) for name in values}
    try:
        for name, value in values.items():
            setattr(args, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(args, name, value)


class MaskedSFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` with completion-only loss enforced and checked. Same constructor: swap the import.

    What it adds:
    - completion-only loss for every data format TRL accepts: prompt/completion, homework question/answer columns
      or `[question, answer]` rows (`prompt_column`, `completion_column`), text with a
      [`DataCollatorForCompletionOnlyLM`] response template, pre-tokenized rows with `labels` and/or a
      `completion_mask` (merged into the labels rather than ignored); pre-padded rows are trimmed;
    - a pre-flight pass over the prepared train and eval datasets that finds rows with no supervised token and
      applies `masked_row_policy`, naming the rows, the reason and the fix;
    - `validate_batch` on every train and eval batch before the forward pass;
    - `label_names=["labels"]` when the model is or becomes a PeftModel and none was given;
    - a pad token when the tokenizer has none (the eos token, said in the log);
    - a check that a user `data_collator` does not overwrite the prepared labels;
    - model checks at `train()` (something trains, adapters not frozen, token ids fit the embeddings, input grads
      under activation checkpointing; `model_checks.py`), resuming only from complete checkpoints (`checkpoints.py`);
    - `TrainingHealthGuard` (`health_checks=True`): a step with a non-finite loss or gradient norm, or no supervised
      token, stops the run before the optimizer applies it (`health.py`);
    - under several processes, every check reaches the same verdict on every rank (`distributed.py`).

    An explicit `completion_only_loss=False` still trains on the whole sequence (with one warning).
    """

    def __init__(
        self,
        model,
        args: SFTConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = MaskedSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1] or 'model'}-SFT")
        elif isinstance(args, TrainingArguments) and not isinstance(args, SFTConfig):
            # As TRL does (it converts to SFTConfig): the fields TrainingArguments lacks take SFTConfig's defaults
            # (e.g. max_length 1024), not the homework's.
            dict_args = args.to_dict()
            dict_args["hub_token"] = args.hub_token
            sft_only = set(SFTConfig.__dataclass_fields__) - set(TrainingArguments.__dataclass_fields__)
            defaults = {name: SFTConfig.__dataclass_fields__[name].default for name in sft_only}
            defaults = {k: v for k, v in defaults.items() if v is not dataclasses.MISSING}
            args = MaskedSFTConfig(**{**defaults, **dict_args})

        # Completion-only loss is the product; an explicit False is the user's choice and stays theirs.
        self._completion_only = _completion_only(args)
        args.completion_only_loss = self._completion_only
        if not self._completion_only:
            warnings.warn(
                "`completion_only_loss=False`: the loss covers the whole sequence, prompts included. Set "
                "`completion_only_loss=True` (the MaskedSFTConfig default) to train on the answers only.",
                MaskedSFTWarning,
                stacklevel=2,
            )

        columns = {
            "prompt_column": _setting(args, "prompt_column"),
            "completion_column": _setting(args, "completion_column"),
        }
        train_dataset = coerce_dataset(train_dataset, dataset_name="train", **columns)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: coerce_dataset(v, dataset_name=k, **columns) for k, v in eval_dataset.items()}
        else:
            eval_dataset = coerce_dataset(eval_dataset, dataset_name="eval", **columns)

        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if isinstance(tokenizer, PreTrainedTokenizerBase) and tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    "The tokenizer has neither a pad token nor an eos token. Fix: set one before building the "
                    "trainer, e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})` (and resize the model's "
                    "embeddings)."
                )
            tokenizer.pad_token = tokenizer.eos_token
            logger.warning(
                f"The tokenizer had no pad token; set `pad_token` to the eos token {tokenizer.eos_token!r}. The eos "
                "token that ends each completion stays supervised: padding is found by length, not by id."
            )
        check_processing_class(model, processing_class, train_dataset)

        if isinstance(data_collator, DataCollatorForCompletionOnlyLM) and data_collator.ignore_index != _IGNORE:
            raise ValueError(
                f"`data_collator` is DataCollatorForCompletionOnlyLM(ignore_index={data_collator.ignore_index}), but "
                f"the trainer's loss ignores only {_IGNORE}: the other value would be trained on as a token id. Fix: "
                "leave `ignore_index` at its default (-100) when training with MaskedSFTTrainer."
            )

        # Formatting is applied in `_prepare_dataset` (also for datasets passed to `evaluate`), so that a formatting
        # function works with completion-only loss and a response-template collator, as in old TRL scripts.
        self._msft_formatting_func = formatting_func
        self._msft_collator = data_collator
        self._msft_said_no_boundary = False
        self._msft_audits: dict[str, AuditReport] = {}
        self._msft_verdicts: dict[str, RowAudit] = {}
        self._msft_template = None  # built in `_prepare_dataset`, once TRL has the tokenizer
        # Assistant-only loss is done here for any chat template (TRL's needs `{% generation %}` markers and swaps
        # in patched templates for known families only), so TRL's own path is turned off.
        self._msft_chat = self._completion_only or bool(args.assistant_only_loss)
        args.assistant_only_loss = False

        if peft_config is not None or (not isinstance(model, str) and is_peft_model(model)):
            if args.label_names is None:
                args.label_names = ["labels"]
            task_type = getattr(peft_config, "task_type", None) if peft_config is not None else None
            if peft_config is None:
                adapter_configs = getattr(model, "peft_config", {}) or {}
                task_type = next((c.task_type for c in adapter_configs.values()), None)
            if task_type is None:
                warnings.warn(
                    "The PEFT config has no `task_type`, so PEFT builds a generic PeftModel instead of "
                    "PeftModelForCausalLM and the labels may not reach the loss the way a causal LM expects. Fix: "
                    "set `task_type='CAUSAL_LM'` in your LoraConfig (homework_lora_config() does).",
                    MaskedSFTWarning,
                    stacklevel=2,
                )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=None,
        )
        if data_collator is not None and self._completion_only:
            self._check_collator_keeps_labels()
        self._msft_health = TrainingHealthGuard(self) if _setting(self.args, "health_checks") else None
        if self._msft_health is not None:
            self.add_callback(self._msft_health)

    # ------------------------------------------------------------------ dataset preparation and pre-flight pass

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class,
        args,
        packing: bool,
        formatting_func,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        if getattr(self, "_skip_prepare_dataset", False):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if self._msft_template is None:  # here the tokenizer is known, also when `model` was given as a path
            self._msft_template = _template_masker(args, self._msft_collator, self._tokenizer)
        formatting_func = formatting_func or self._msft_formatting_func
        columns = column_names(dataset)
        if formatting_func is not None and "input_ids" not in columns:
            kwargs = {"desc": f"Applying formatting function to {dataset_name} dataset"}
            dataset = dataset.map(
                lambda example: {"text": formatting_func(example)},
                **(kwargs if isinstance(dataset, Dataset) else {}),
            )
            dataset = dataset.select_columns(["text"]) if isinstance(dataset, Dataset) else dataset
            text_field = "text"
        else:
            text_field = args.dataset_text_field

        dataset, empty_rows = normalize_dataset(
            dataset,
            prompt_column=_setting(args, "prompt_column"),
            completion_column=_setting(args, "completion_column"),
            text_field=text_field,
            dataset_name=dataset_name,
        )
        dataset = prepare_pretokenized(dataset, dataset_name=dataset_name, completion_only=self._completion_only)
        if self._msft_chat and _is_conversation(dataset):
            dataset = self._tokenize_conversations(dataset, args, dataset_name)
        self._say_if_nothing_to_mask(dataset)
        # String prompt/completion or text rows: TRL's tokenization and labels, batched (TRL then has nothing to do).
        tokenized = tokenize_plain(
            dataset,
            processing_class,
            text_field=text_field,
            completion_only=self._completion_only,
            dataset_name=dataset_name,
            num_proc=args.dataset_num_proc,
        )
        dataset = tokenized if tokenized is not None else dataset

        # TRL tokenizes and builds labels; truncation is left to us so that no row is dropped silently.
        with _overridden(args, max_length=None, shuffle_dataset=False, dataset_text_field=text_field):
            dataset = super()._prepare_dataset(dataset, processing_class, args, False, None, dataset_name)

        # Packing "bfd" truncates each row to `max_length` as plain truncation does, so rows are truncated (and
        # audited) here first; "bfd_split" and "wrapped" split long rows instead, losing no token, so rows are only
        # counted.
        truncate_at = args.max_length if not packing or args.packing_strategy == "bfd" else None
        dataset = self._preflight(dataset, args, dataset_name, empty_rows, truncate_at)

        if packing:
            # TRL packs (and shuffles) the prepared rows; truncation there is a no-op now.
            return super()._prepare_dataset(dataset, processing_class, args, packing, None, dataset_name)
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _say_if_nothing_to_mask(self, dataset) -> None:
        """Text or full-sequence pre-tokenized rows with no template have no prompt to mask: say so once."""
        if self._msft_said_no_boundary or not self._completion_only or self._msft_template is not None:
            return
        columns = set(column_names(dataset))
        if {"prompt", "completion"} <= columns or columns & {"labels", "completion_mask", "messages"}:
            return
        logger.warning(
            "Completion-only loss is on, but these rows have no prompt/completion boundary, so the whole text is "
            "trained. To train on answers only, use prompt/completion columns (`prompt_column`, "
            "`completion_column`), `messages`, or a `response_template`."
        )
        self._msft_said_no_boundary = True

    def _tokenize_conversations(self, dataset, args, dataset_name: str):
        """Assistant-only labels for `messages` rows under any chat template (see `chat.chat_labels`)."""
        tokenizer = self._tokenizer
        turns, train_eot = _setting(args, "assistant_turns"), _setting(args, "train_on_eot")

        def tokenize(example):
            tools = example.get("tools")
            tools = json.loads(tools) if isinstance(tools, str) else tools
            kwargs = {"tools": tools} if tools else {}
            kwargs.update(example.get("chat_template_kwargs") or {})
            if "messages" in example:
                messages, first = example["messages"], 0
            else:  # prompt/completion given as messages: only the completion's replies are trained
                messages, first = example["prompt"] + example["completion"], len(example["prompt"])
            mask = chat_labels(
                tokenizer, messages, assistant_turns=turns, train_eot=train_eot, trainable_from=first, **kwargs
            )
            reason = f"chat turns not located: {mask.problem}" if mask.problem else ""
            return {"input_ids": mask.input_ids, "labels": mask.labels, REASON: reason}

        columns = column_names(dataset)
        kwargs = {"desc": f"Masking assistant turns of {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
        return dataset.map(tokenize, remove_columns=columns, **kwargs)

    def _preflight(self, dataset, args, dataset_name: str, empty_rows: set[int], max_length: int | None):
        """Apply template masks, truncate, audit what each row trains on, apply `masked_row_policy`."""
        template = self._msft_template
        keep_end = args.truncation_mode == "keep_end"
        min_completion = _setting(args, "min_completion_tokens")
        stop_ids = _stop_token_ids(self._tokenizer)

        def mask_and_truncate(example, index):
            ids, labels = example["input_ids"], example["labels"]
            reason = example.get(REASON) or ("empty completion" if index in empty_rows else "")
            if template is not None and not reason:
                spans = template.template_spans(ids)
                if spans is None:
                    reason = "response template not found"
                labels = spans_to_labels(labels, spans or [], _IGNORE)
            full_count, first = supervision_stats(labels)
            ids, labels = truncate_row(ids, labels, max_length, keep_end=keep_end, min_completion=min_completion)
            count = 0 if reason else supervision_stats(labels)[0]
            last = next((lab for lab in reversed(labels) if lab != _IGNORE), None)
            return {
                "input_ids": ids,
                "labels": labels,
                FULL_COUNT: full_count,
                FULL_FIRST: first,
                REASON: reason,
                COUNT: count,
                STOP_OK: last in stop_ids,
                LENGTH: len(ids),
            }

        if isinstance(dataset, IterableDataset):
            return self._preflight_streaming(
                dataset.map(mask_and_truncate, with_indices=True), args, dataset_name, max_length
            )
        dataset = map_rows(
            dataset,
            mask_and_truncate,
            desc=f"Checking supervised tokens of {dataset_name} dataset",
            columns=["input_ids", "labels", REASON],
        )
        policy = _setting(args, "masked_row_policy")
        # Audited once, on the main process; every rank gets the same verdict (and raises the same error).
        report, verdict = run_on_main(
            lambda: build_report(
                # the audit columns as lists, read once (a `Column` is read row by row)
                dataset.select_columns([c for c in AUDIT_COLUMNS if c in dataset.column_names]).to_dict(),
                dataset_name=dataset_name,
                max_length=max_length,
                policy=policy,
            )
        )
        dataset = dataset.remove_columns([c for c in AUDIT_COLUMNS if c in dataset.column_names])
        for index in list(verdict.unsupervised)[:5]:
            labels, ids = dataset[index]["labels"], dataset[index]["input_ids"]
            first = next((i for i, lab in enumerate(labels) if lab != _IGNORE), len(ids))
            verdict.prompt_tails[index] = self._tokenizer.decode(ids[:first])[-60:]
        if getattr(self, "_msft_audit_only", False):  # `audit_dataset` / `inspect`: report, don't enforce
            self._msft_audits[dataset_name], self._msft_verdicts[dataset_name] = report, verdict
            return dataset
        drop = verdict.enforce(policy, _setting(args, "max_masked_row_fraction"))
        report.rows_dropped = len(drop)
        self._msft_audits[dataset_name] = report
        logger.warning(report.summary())
        if drop:
            message = f"{verdict.describe()}\nDropped them (`masked_row_policy={policy!r}`). {verdict.fix()}"
            if policy == "warn":
                warnings.warn(message, MaskedSFTWarning, stacklevel=2)
            else:
                logger.info(message)
            dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
        return dataset

    def _preflight_streaming(self, dataset, args, dataset_name: str, max_length: int | None):
        """A streaming dataset can't be counted up front: rows are checked as they are read, with running counts.

        `error` raises at the first row with no supervised token; `drop`/`warn` drop it (`warn` names the first one
        in a warning) and raise once more than `max_masked_row_fraction` of the rows read so far (at least 10) went.
        """
        policy = _setting(args, "masked_row_policy")
        max_fraction = _setting(args, "max_masked_row_fraction")
        seen = {"rows": 0, "dropped": 0}

        def check(example, index):
            seen["rows"] += 1
            if not example[REASON] and example[COUNT] > 0:
                return True
            row_audit = audit_labels(
                supervised_counts=[example[COUNT]],
                full_supervised=[example[FULL_COUNT]],
                full_first=[example[FULL_FIRST]],
                dataset_name=dataset_name,
                max_length=max_length,
                preset_reasons={0: example[REASON]} if example[REASON] else None,
            )
            reason, fix = row_audit.unsupervised[0], row_audit.fix()
            where = f"row {index} of the streamed {dataset_name} dataset"
            if policy == "error":
                raise UnsupervisedRowsError(
                    f"{where[0].upper()}{where[1:]} has no supervised token: {reason}. With "
                    f"`masked_row_policy='error'` (the default) training stops here instead of training on nothing. "
                    f"{fix}"
                )
            seen["dropped"] += 1
            if policy == "warn" and seen["dropped"] == 1:
                warnings.warn(
                    f"Dropped {where}: no supervised token ({reason}). Later rows like it are dropped without a "
                    f"warning while they stay within `max_masked_row_fraction` ({max_fraction:.1%}). {fix}",
                    MaskedSFTWarning,
                    stacklevel=2,
                )
            if seen["rows"] >= 10 and seen["dropped"] > max_fraction * seen["rows"]:
                raise UnsupervisedRowsError(
                    f"{seen['dropped']} of the first {seen['rows']} rows of the streamed {dataset_name} dataset had no "
                    f"supervised token (latest: {where}, {reason}): more than `max_masked_row_fraction` "
                    f"({max_fraction:.1%}) allows with `masked_row_policy={policy!r}`. {fix}"
                )
            return False

        return dataset.filter(check, with_indices=True).remove_columns(AUDIT_COLUMNS)

    @property
    def audit_reports(self) -> dict[str, AuditReport]:
        """The pre-flight audit of each prepared dataset (`"train"`, `"eval"`, ...)."""
        return dict(self._msft_audits)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        check_model_before_training(self.model, self.args, self.train_dataset, self.processing_class)
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if self.is_world_process_zero() and self._msft_audits:
            path = Path(self.args.output_dir) / "masked_sft_audit.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: v.to_dict() for k, v in self._msft_audits.items()}, indent=2) + "\n")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ checks around training

    def _check_collator_keeps_labels(self) -> None:
        """Collate a few prepared rows with the user's collator and compare its labels with the dataset's."""
        dataset = self.train_dataset
        if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names or len(dataset) == 0:
            return
        rows = dataset.select(range(min(8, len(dataset))))
        features = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        try:
            batch = self.data_collator(features)
        except Exception:
            # Collators built for raw `input_ids` (e.g. transformers' DataCollatorForLanguageModeling) fail on
            # ragged `labels`; what they do with `input_ids` alone is what they would train on.
            try:
                batch = self.data_collator([{"input_ids": f["input_ids"]} for f in features])
            except Exception:  # needs other columns: the batch validator still checks every batch
                return
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[0] != len(features):
            return
        batch_ids = batch.get("input_ids")
        extra = missing = 0
        for i, feature in enumerate(features):
            expected = torch.tensor(feature["labels"])
            n, ids = len(expected), torch.tensor(feature["input_ids"])
            # Find the row where the collator put it: padded on the right (the usual) or on the left.
            if isinstance(batch_ids, torch.Tensor) and batch_ids.shape[1] >= n:
                if torch.equal(batch_ids[i, :n].cpu(), ids):
                    got = labels[i, :n]
                elif torch.equal(batch_ids[i, -n:].cpu(), ids):
                    got = labels[i, -n:]
                else:
                    continue  # the collator changed the tokens themselves; the batch validator still checks
            else:
                got = labels[i, :n]
            got = got.cpu()
            extra += int(((got != _IGNORE) & (expected == _IGNORE))[1:].sum())
            missing += int(((got == _IGNORE) & (expected != _IGNORE))[1:].sum())
        name = type(self.data_collator).__name__
        if extra:
            raise LabelsOverwrittenError(
                f"The data collator ({name}) overwrites the labels: on the first {len(features)} rows it trains "
                f"{extra} tokens that the prepared dataset masks (prompt tokens). Fix: pass no `data_collator` "
                "(MaskedSFTTrainer builds the labels), use DataCollatorForCompletionOnlyLM, or make your collator "
                "keep the `labels` it receives. Set `completion_only_loss=False` if training on prompts is intended."
            )
        if missing:
            warnings.warn(
                f"The data collator ({name}) masks {missing} of the supervised tokens of the first {len(features)} "
                "rows (often the eos token when pad == eos and padding is found by id), so the model may never "
                "learn to stop. Fix: pass no `data_collator`, or use DataCollatorForCompletionOnlyLM.",
                MaskedSFTWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ in-batch packing (`pack_within_batch`)

    def _msft_packer(self) -> PackingCollator | None:
        """The packing collator for training batches, or `None` where packing is off, unsupported or not exact."""
        if hasattr(self, "_msft_packing"):
            return self._msft_packing
        self._msft_packing = None
        args, collator = self.args, self.data_collator
        accelerator_config = getattr(args, "accelerator_config", None)
        reason = None
        if not _setting(args, "pack_within_batch"):
            return None
        if self._msft_collator is not None or not isinstance(collator, TRLDataCollatorForLanguageModeling):
            reason = "a custom `data_collator` is used"
        elif args.packing or getattr(self, "padding_free", False) or getattr(self, "_is_vision_dataset", False):
            reason = "`packing`/`padding_free` or a vision dataset lays out the batches"
        elif self.compute_loss_func is not None:
            reason = "a `compute_loss_func` may expect one row per example"
        elif self.is_deepspeed_enabled or self.is_fsdp_enabled:
            reason = "DeepSpeed/FSDP are not supported by the packing check"
        elif args.world_size > 1 and (
            isinstance(self.train_dataset, torch.utils.data.IterableDataset)
            or getattr(accelerator_config, "split_batches", False)
        ):
            reason = "batches are split or dispatched across processes"
        elif not packing_is_exact(self.model, pad_token_id=collator.pad_token_id):
            reason = "the model gives different logits for rows packed and alone (its attention ignores position ids)"
        if reason is not None:
            logger.info(f"`pack_within_batch`: training batches are padded, not packed: {reason}.")
            return None
        self._msft_packing = PackingCollator(
            pad_token_id=collator.pad_token_id,
            fallback=collator,
            pad_to_multiple_of=collator.pad_to_multiple_of,
            single_row="flash" in str(getattr(self.model.config, "_attn_implementation", "")),
        )
        logger.info("`pack_within_batch`: each training batch's rows are packed end to end (checked exact).")
        return self._msft_packing

    def get_train_dataloader(self):
        packer = self._msft_packer()
        if packer is None:
            return super().get_train_dataloader()
        with _overridden(self, data_collator=packer):
            return super().get_train_dataloader()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packed_tokens = inputs.pop(PACKED_TOKENS_KEY, None)
        labels = inputs.get("labels")
        if labels is not None:
            mode = "train" if model.training else "eval"
            validate_batch_across_ranks(
                inputs,
                where=f"{mode} batch at step {self.state.global_step}",
                tokenizer=self._tokenizer,
            )
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if (
            packed_tokens is not None
            and model.training
            and isinstance(getattr(self, "_total_train_tokens", None), int)
        ):
            # TRL 1.16 counts `position_ids.size(1)` tokens for a batch without `attention_mask` (its padding-free
            # batches are one row); a packed batch has several rows and padding, so count its real tokens instead.
            extra = int(packed_tokens) - inputs["position_ids"].size(1)  # Python ints: no host sync
            if self.accelerator.num_processes > 1:
                extra = int(self.accelerator.gather_for_metrics(torch.tensor([extra], device=labels.device)).sum())
            self._total_train_tokens += extra // getattr(self, "_tp_size", 1)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if getattr(self, "_msft_health", None) is not None:  # the raw loss: the logged one hides NaN
            self._msft_health.observe_loss(loss, num_items_in_batch, labels)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Private in transformers 5.x; were it renamed, the health guard computes the norm from the gradients itself.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if getattr(self, "_msft_health", None) is not None:
            self._msft_health.observe_grad_norm(grad_norm)
        return grad_norm
