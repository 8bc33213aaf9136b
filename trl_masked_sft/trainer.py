"""`MaskedSFTTrainer`: `trl.SFTTrainer` that never trains silently on nothing or on the wrong tokens.

The trainer only wires TRL's hooks: construction checks, `_prepare_dataset` delegating to the preparation pipeline
(`pipeline.py`), per-batch validation, the health guard, in-batch packing and the supervised-only loss
(`loss.py`). It holds no masking or loss arithmetic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from datasets import IterableDataset
from trl import SFTTrainer

from . import hints
from .batch_checks import (
    check_collator_ignore_index,
    check_collator_keeps_labels,
)
from .collator import DataCollatorForCompletionOnlyLM
from .distributed import (
    agree_on_checkpoint,
    fsdp_not_sharded,
    prepare_once,
    sum_across_ranks,
    validate_batch_across_ranks,
)
from .formats import coerce_datasets
from .hf_compat import accelerator_precision, check_resume_supported, checkpointing_on
from .logs import get_logger, warn
from .loss import SupervisedLoss, count_packed_tokens
from .masking import WEIGHTS
from .memory import checkpointing_by_memory
from .metrics import MaskMetrics, audit_logs, batch_mask_stats, write_audit_text
from .model_checks import (
    check_model_before_training,
    check_peft_setup,
    check_processing_class,
    check_prompt_learning,
    ensure_pad_token,
    first_label_is_target,
    quiet_peft_checkpointing_probe,
)
from .options import MaskingOptions, trainer_config
from .packing import PACKED_TOKENS_KEY, PackingCollator, packing_blocker
from .pipeline import PreparationPipeline
from .precision import resolve_cpu_bf16, training_precision, weights_as_given
from .report import AuditReport, save_audits
from .run_checks import TrainingHealthGuard, check_run_length, check_stream_kept_rows
from .stops import add_to_generation_config, generation_config_saved, model_stop_ids, with_model_stops
from .weights import WeightedBatches, collating, is_weighted, pack_weighted

__all__ = ["MaskedSFTTrainer"]

logger = get_logger(__name__)


class MaskedSFTTrainer(WeightedBatches, SFTTrainer):
    """`trl.SFTTrainer` with completion-only loss enforced and checked. Same constructor: swap the import.

    What it adds:
    - completion-only loss for every data format TRL accepts, prepared by `PreparationPipeline` (prompt/completion,
      `[question, answer]` rows, text with a response template, conversations under any chat template,
      pre-tokenized rows whose `completion_mask` is merged into the labels rather than ignored);
    - a pre-flight audit of the prepared train and eval datasets that finds rows with no supervised token and
      applies `masked_row_policy`, naming the rows, the reason and the fix (`trainer.audit_reports`);
    - `validate_batch` on every train and eval batch before the forward pass; mask metrics in the logs;
    - `label_names=["labels"]` for PEFT models; a pad token when the tokenizer has none (the eos, said in the log);
    - a check that a user `data_collator` does not overwrite the prepared labels;
    - model checks at `train()` (`model_checks.py`), resuming only from complete checkpoints (`checkpoints.py`);
    - `TrainingHealthGuard` (`health_checks=True`, `run_checks.py`) and, under several processes, the same verdict on
      every rank (`distributed.py`); in-batch packing (`pack_within_batch`, `packing.py`);
    - the loss on CPU with only the supervised positions through the LM head (`score_supervised_only`, `loss.py`).

    An explicit `completion_only_loss=False` still trains on the whole sequence (with one warning). The config
    passed in is copied, never changed.
    """

    def __init__(
        self,
        model: hints.Model,
        args: hints.Config = None,
        data_collator: hints.Collator | None = None,
        train_dataset: hints.Rows | None = None,
        eval_dataset: hints.EvalRows | None = None,
        processing_class: hints.Tokenizer | None = None,
        compute_loss_func: hints.LossFunc | None = None,
        compute_metrics: hints.MetricsFunc | None = None,
        callbacks: hints.Callbacks | None = None,
        optimizers: hints.Optimizers = (None, None),
        optimizer_cls_and_kwargs: hints.OptimizerClsAndKwargs | None = None,
        preprocess_logits_for_metrics: hints.LogitsFunc | None = None,
        quantization_config: hints.Quantization = None,
        peft_config: hints.Peft = None,
        formatting_func: hints.FormattingFunc | None = None,
    ) -> None:
        args = trainer_config(model, args)
        self._msft_options = options = MaskingOptions.from_args(args)
        self._msft_model_stops = model_stop_ids(model)  # the stop set comes from the model (`stops.py`)
        self._msft_precision = resolve_cpu_bf16(model, args)  # said once training starts
        if not options.completion_only:
            warn(
                "`completion_only_loss=False`: the loss covers the whole sequence, prompts included. Set "
                "`completion_only_loss=True` (the MaskedSFTConfig default) to train on the answers only.",
                stacklevel=2,
            )
        # Assistant-only masks are built by the pipeline for any chat template, so TRL's own path (which needs
        # `{% generation %}` markers) is off; completion-only is the product (`None`, TRL's "decide", means on).
        args.completion_only_loss, args.assistant_only_loss = options.completion_only, False

        train_dataset, eval_dataset = coerce_datasets(train_dataset, eval_dataset, options)

        ensure_pad_token(getattr(processing_class, "tokenizer", processing_class))
        check_processing_class(model, processing_class, train_dataset)
        check_collator_ignore_index(data_collator)
        self._msft_collator = data_collator
        # Formatting is applied by the pipeline (also for datasets passed to `evaluate`), so that a formatting
        # function works with completion-only loss and a response-template collator, as in old TRL scripts.
        self._msft_formatting_func = formatting_func
        self._msft_pipeline: PreparationPipeline | None = None  # built once TRL has the tokenizer
        self._msft_audits: dict[str, AuditReport] = {}
        self._msft_streams: dict[str, dict] = {}  # by name: the stream as given ("source") and its row counts
        if peft_config is not None or (not isinstance(model, str) and is_peft_model(model)):
            check_peft_setup(args, model, peft_config)

        with quiet_peft_checkpointing_probe(), accelerator_precision(args):  # peft 0.21; transformers 4.x: docstrings
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
        self._msft_mask_metrics, self._msft_audit_logged = MaskMetrics(), False
        add_to_generation_config(self.model, self._msft_options)  # the template's stop, where the model lacked it
        if (unsharded := fsdp_not_sharded(self)) is not None:
            logger.warning(unsharded)
        if data_collator is not None and options.completion_only:
            check_collator_keeps_labels(self.data_collator, self.train_dataset)
        self._msft_loss, self._msft_checkpointing = SupervisedLoss(self), checkpointing_by_memory(self)
        self._msft_health = TrainingHealthGuard(self) if getattr(self.args, "health_checks", True) else None
        if self._msft_health is not None:
            self.add_callback(self._msft_health)

    # ------------------------------------------------------------------ dataset preparation (the pipeline)

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if getattr(self, "_skip_prepare_dataset", False):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        streamed = isinstance(dataset, torch.utils.data.IterableDataset | IterableDataset)
        if streamed:
            self._msft_streams.setdefault(dataset_name, {})["source"] = dataset
        dataset, report = prepare_once(  # each node's main process prepares; its other ranks load the result
            lambda: self._msft_prepare(dataset, processing_class, args, packing, formatting_func, dataset_name),
            streamed=streamed,
        )
        if report is not None:
            self._msft_audits[dataset_name] = report
        return dataset

    def _msft_prepare(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """The pipeline (then TRL's packing, or the shuffle) on this process: `(dataset, its audit report)`."""
        if self._msft_pipeline is None:  # here the tokenizer is known, also when `model` was given as a path
            collator = self._msft_collator
            matcher = collator.matcher if isinstance(collator, DataCollatorForCompletionOnlyLM) else None
            self._msft_options = with_model_stops(self._tokenizer, self._msft_options, self._msft_model_stops)
            self._msft_pipeline = PreparationPipeline(self._tokenizer, self._msft_options, template=matcher)
        pipeline = self._msft_pipeline
        if packing and args.packing_strategy != "bfd":
            # "bfd_split" and "wrapped" split long rows instead of truncating them, losing no token: only count.
            pipeline = PreparationPipeline(
                self._tokenizer,
                dataclasses.replace(self._msft_options, max_length=None),
                template=pipeline.template,
            )
        prepared = pipeline.prepare(
            dataset, dataset_name, formatting_func=formatting_func or self._msft_formatting_func
        )
        dataset = prepared.dataset
        if prepared.stream_counts is not None:
            self._msft_streams.setdefault(dataset_name, {})["counts"] = prepared.stream_counts
        if packing and is_weighted(dataset):  # TRL's packing would drop the weights
            dataset = pack_weighted(dataset, args, dataset_name)
        elif packing:  # TRL packs (and shuffles) the prepared rows; its truncation is a no-op now
            dataset = super()._prepare_dataset(dataset, processing_class, args, packing, None, dataset_name)
        elif args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset, prepared.report

    def _save(self, output_dir: str | None = None, state_dict=None):
        with generation_config_saved(self.model, output_dir or self.args.output_dir, self._msft_options):
            super()._save(output_dir, state_dict)  # an adapter's folder gets the generation config too

    @property
    def audit_reports(self) -> dict[str, AuditReport]:
        """The pre-flight audit of each prepared dataset (`"train"`, `"eval"`, ...)."""
        return dict(self._msft_audits)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        check_model_before_training(self.model, self.args, self.train_dataset, self.processing_class)
        check_prompt_learning(self.model, activation_checkpointing=checkpointing_on(self.args))
        resume_from_checkpoint = agree_on_checkpoint(resume_from_checkpoint, self.args.output_dir, self.model)
        check_resume_supported(resume_from_checkpoint, self.args)
        check_run_length(self.train_dataset, self.eval_dataset, self.args, self._msft_audits, self._msft_streams)
        if self.is_world_process_zero() and self._msft_audits:
            save_audits(self._msft_audits, Path(self.args.output_dir) / "masked_sft_audit.json")
        with training_precision(self, (self._msft_precision, self._msft_checkpointing)):  # puts the weights back
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        check_stream_kept_rows(self.state.global_step, self._msft_streams.get("train", {}).get("counts"), self.args)
        return output

    def _save_checkpoint(self, model, trial):
        with weights_as_given(self):  # saved from the user's float32 weights, not the bfloat16 copies
            super()._save_checkpoint(model, trial)

    def save_last_good_checkpoint(self) -> None:
        """Save a checkpoint of the current weights: the health guard's one way into the trainer."""
        self._save_checkpoint(self.model_wrapped, trial=None)

    def _msft_packer(self) -> PackingCollator | None:
        """The packing collator for training batches, or `None` where packing is off, unsupported or not exact."""
        if hasattr(self, "_msft_packing"):
            return self._msft_packing
        self._msft_packing = None
        collator = self.data_collator
        if not getattr(self.args, "pack_within_batch", True):
            return None
        reason = packing_blocker(self, custom_collator=self._msft_collator is not None, base=MaskedSFTTrainer)
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
        with collating(self, self._msft_packer() or self.data_collator, self.train_dataset):
            return super().get_train_dataloader()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packed_tokens = inputs.pop(PACKED_TOKENS_KEY, None)
        mode = "train" if model.training else "eval"
        self._msft_mask_metrics.add(batch_mask_stats(inputs, real_tokens=packed_tokens), mode)
        labels = inputs.get("labels")
        if labels is not None:
            where = f"{mode} batch at step {self.state.global_step}"
            first = first_label_is_target(model)
            validate_batch_across_ranks(inputs, where=where, tokenizer=self._tokenizer, first_label_is_target=first)
        weights = inputs.pop(WEIGHTS, None)  # only in weighted batches, which `_msft_loss` always takes
        result = self._msft_loss(model, inputs, return_outputs, num_items_in_batch, weights)  # None: TRL's path
        if result is None:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if packed_tokens is not None and model.training:
            count_packed_tokens(self, inputs, packed_tokens)
        return result

    def log(self, logs, start_time=None):
        """TRL's logs plus the mask metrics (`metrics.py`) and, once, the train dataset's audit."""
        mode, metrics = "train" if self.model.training else "eval", self._msft_mask_metrics
        metrics.rows_dropped = {name: report.rows_dropped for name, report in self._msft_audits.items()}
        step = self.state.global_step if mode == "train" else None
        logs.update(metrics.pop(mode, global_step=step, reduce=sum_across_ranks))  # the whole step, every rank
        if mode == "train" and not self._msft_audit_logged and "train" in self._msft_audits:
            logs.update(audit_logs(self._msft_audits["train"]))  # the scalars; the summary text goes to TensorBoard:
            write_audit_text(self.callback_handler.callbacks, self._msft_audits["train"], self.state.global_step)
            self._msft_audit_logged = True
        super().log(logs, start_time)

    def training_step(self, model, inputs, num_items_in_batch=None):
        labels = inputs.get("labels") if hasattr(inputs, "get") else None
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
