"""`MaskedSFTTrainer`: `trl.SFTTrainer` that never trains silently on nothing or on the wrong tokens.

The trainer wires the pieces together; the masking arithmetic lives in `masking.py`, the checks in `validation.py`,
the data checks in `data.py`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin, TrainingArguments
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer

from .collator import DataCollatorForCompletionOnlyLM
from .config import MaskedSFTConfig
from .data import coerce_dataset, column_names, normalize_dataset, prepare_pretokenized
from .errors import LabelsOverwrittenError, MaskedSFTWarning
from .masking import spans_to_labels
from .validation import audit_labels, supervision_stats, validate_batch

__all__ = ["MaskedSFTTrainer"]

logger = logging.get_logger(__name__)

_IGNORE = -100
# Columns used by the pre-flight pass; removed before training.
_FULL_COUNT, _FULL_FIRST, _TEMPLATE_MISSING = "_msft_full_count", "_msft_full_first", "_msft_template_missing"


def _setting(args: Any, name: str) -> Any:
    """A MaskedSFTConfig field, or its default when the user passed a plain SFTConfig."""
    if hasattr(args, name):
        return getattr(args, name)
    return MaskedSFTConfig.__dataclass_fields__[name].default


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
    - a check that a user `data_collator` does not overwrite the prepared labels.

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
            dict_args = args.to_dict()
            dict_args["hub_token"] = args.hub_token
            args = MaskedSFTConfig(**dict_args)

        # Completion-only loss is the product; an explicit False is the user's choice and stays theirs.
        if args.completion_only_loss is None:
            args.completion_only_loss = True
        self._completion_only = bool(args.completion_only_loss)
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

        # Formatting is applied in `_prepare_dataset` (also for datasets passed to `evaluate`), so that a formatting
        # function works with completion-only loss and a response-template collator, as in old TRL scripts.
        self._msft_formatting_func = formatting_func
        self._msft_collator = data_collator
        self._msft_said_no_boundary = False

        if peft_config is not None or is_peft_model(model):
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
        self._say_if_nothing_to_mask(dataset)

        # TRL tokenizes and builds labels; truncation is left to us so that no row is dropped silently.
        with _overridden(args, max_length=None, shuffle_dataset=False, dataset_text_field=text_field):
            dataset = super()._prepare_dataset(dataset, processing_class, args, False, None, dataset_name)

        # With packing, TRL's packer handles long rows (truncating or splitting them), so rows are only counted here.
        dataset = self._preflight(dataset, args, dataset_name, empty_rows, None if packing else args.max_length)

        if packing:
            # TRL packs (and shuffles) the prepared rows; truncation there is a no-op now.
            return super()._prepare_dataset(dataset, processing_class, args, packing, None, dataset_name)
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _say_if_nothing_to_mask(self, dataset) -> None:
        """Text or full-sequence pre-tokenized rows with no template have no prompt to mask: say so once."""
        if self._msft_said_no_boundary or not self._completion_only:
            return
        columns = set(column_names(dataset))
        collator = self._msft_collator
        if isinstance(collator, DataCollatorForCompletionOnlyLM) and collator.has_template:
            return
        if {"prompt", "completion"} <= columns or "labels" in columns or "completion_mask" in columns:
            return
        if columns & {"messages", "conversations"}:
            what = "conversational `messages` rows are trained on every turn unless `assistant_only_loss=True`"
        else:
            what = "these rows have no prompt/completion boundary, so the whole text is trained"
        logger.warning(
            f"Completion-only loss is on, but {what}. To train on answers only, use prompt/completion columns "
            "(`prompt_column`, `completion_column`) or pass DataCollatorForCompletionOnlyLM(response_template=...)."
        )
        self._msft_said_no_boundary = True

    def _preflight(self, dataset, args, dataset_name: str, empty_rows: set[int], max_length: int | None):
        """Apply the template collator's masks, truncate, count rows with no supervised token, apply the policy."""
        collator = self._msft_collator
        template = (
            collator if isinstance(collator, DataCollatorForCompletionOnlyLM) and collator.has_template else None
        )
        keep_end = args.truncation_mode == "keep_end"

        def mask_and_truncate(example):
            labels = example["labels"]
            missing = False
            if template is not None:
                spans = template.template_spans(example["input_ids"])
                missing = spans is None
                labels = spans_to_labels(labels, spans or [], _IGNORE)
            count, first = supervision_stats(labels)
            ids = example["input_ids"]
            if max_length is not None and len(ids) > max_length:
                cut = slice(-max_length, None) if keep_end else slice(None, max_length)
                ids, labels = ids[cut], labels[cut]
            return {
                "input_ids": ids,
                "labels": labels,
                _FULL_COUNT: count,
                _FULL_FIRST: first,
                _TEMPLATE_MISSING: missing,
            }

        helper_columns = [_FULL_COUNT, _FULL_FIRST, _TEMPLATE_MISSING]
        if isinstance(dataset, IterableDataset):
            return self._preflight_streaming(
                dataset.map(mask_and_truncate), args, dataset_name, helper_columns, max_length
            )

        dataset = dataset.map(mask_and_truncate, desc=f"Checking supervised tokens of {dataset_name} dataset")
        preset = {i: "empty completion" for i in empty_rows}
        preset.update({i: "response template not found" for i, m in enumerate(dataset[_TEMPLATE_MISSING]) if m})
        audit = audit_labels(
            dataset["labels"],
            full_supervised=dataset[_FULL_COUNT],
            full_first=dataset[_FULL_FIRST],
            dataset_name=dataset_name,
            max_length=max_length,
            preset_reasons=preset,
        )
        dataset = dataset.remove_columns(helper_columns)
        if audit.unsupervised:
            for index in list(audit.unsupervised)[:5]:
                labels, ids = dataset[index]["labels"], dataset[index]["input_ids"]
                first = next((i for i, lab in enumerate(labels) if lab != _IGNORE), len(ids))
                audit.prompt_tails[index] = self._tokenizer.decode(ids[:first])[-60:]
        policy = _setting(args, "masked_row_policy")
        drop = audit.enforce(policy, _setting(args, "max_masked_row_fraction"))
        self._last_audit = audit
        if drop:
            message = f"{audit.describe()}\nDropped them (`masked_row_policy={policy!r}`). {audit.fix()}"
            if policy == "warn":
                warnings.warn(message, MaskedSFTWarning, stacklevel=2)
            else:
                logger.info(message)
            dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
        return dataset

    def _preflight_streaming(
        self, dataset, args, dataset_name: str, helper_columns: list[str], max_length: int | None
    ):
        """A streaming dataset can't be counted up front: rows are checked as they are read."""
        policy = _setting(args, "masked_row_policy")

        def check(example):
            if example[_TEMPLATE_MISSING] or supervision_stats(example["labels"])[0] == 0:
                if policy == "error":
                    audit = audit_labels(
                        [example["labels"]],
                        full_supervised=[example[_FULL_COUNT]],
                        full_first=[example[_FULL_FIRST]],
                        dataset_name=dataset_name,
                        max_length=max_length,
                        preset_reasons={0: "response template not found"} if example[_TEMPLATE_MISSING] else None,
                    )
                    audit.enforce("error", 0.0)
                return False
            return True

        return dataset.filter(check).remove_columns(helper_columns)

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
        extra = missing = 0
        for i, feature in enumerate(features):
            expected = torch.tensor(feature["labels"])
            got = labels[i, : len(expected)]
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is not None:
            mode = "train" if model.training else "eval"
            validate_batch(
                inputs,
                where=f"{mode} batch at step {self.state.global_step}",
                tokenizer=self._tokenizer,
            )
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
