"""The preparation pipeline: raw rows in; token ids, labels, the audit report and the policy's verdict out.

    rows --coerce_dataset--> Dataset --detect_layout--> Layout --check_values--> checked rows
         --tokenize (text_rows: text; chat: conversations; masking.clean_row: pre-tokenized)--> input_ids + labels
         --templates, truncation (masking)--> final labels --audit (report)--> AuditReport + masked_row_policy

It needs a tokenizer and the masking options, no model and no trainer: `MaskedSFTTrainer._prepare_dataset`,
`audit_dataset`, `inspect_rows` and the CLI all prepare data through it, so all of them see the same rows.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from datasets import Dataset, IterableDataset

from .chat import chat_labels
from .chat.controls import ChatControls, carries_weights
from .chat.conversations import conversation_of
from .chat.end_of_turn import given_stops, special_token_ids
from .context import fold_context, warn_unused_context
from .distributed import run_on_main
from .errors import (
    DatasetFormatError,
    ModelSetupError,
)
from .formats import apply_formatting, clean_pretokenized, coerce_dataset
from .hf_compat import column_names, map_rows
from .hints import Collator, Config, FormattingFunc, Rows, Tokenizer
from .layout import Layout, detect_layout
from .logs import get_logger, warn
from .masking import (
    IGNORE_INDEX,
    WEIGHTS,
    TemplateMatcher,
    spans_to_labels,
    supervises_only_stop_tokens,
    supervision_stats,
    truncate_row,
)
from .options import MaskingOptions
from .policies import (
    AUDIT_COLUMNS,
    COUNT,
    FULL_COUNT,
    FULL_FIRST,
    FULL_LENGTH,
    LENGTH,
    MERGED,
    MERGED_HEADER,
    REASON,
    STOP_CUT,
    STOP_OK,
    VERDICTS,
    CutStopToken,
    FullyMasked,
    RowVerdict,
)
from .provenance import WHY, encode, truncate_explained
from .report import AuditReport, build_report
from .row_checks import check_messages, check_values, parse_tools
from .streaming import check_stream
from .text import clip_end, whole_text
from .text_rows import tokenize_text_rows
from .weights import truncate_weighted, weight_spread

__all__ = ["PreparationPipeline", "PreparedDataset"]

logger = get_logger(__name__)


@dataclass
class PreparedDataset:
    """What `PreparationPipeline.prepare` returns.

    `dataset` has `input_ids` and `labels` (truncated to `max_length`; rows the policy dropped are gone when the
    policy was enforced). `report` and `verdict` are `None` for a streaming dataset, whose rows are checked as they
    are read. `supervised_counts` holds each row's supervised tokens after truncation, before any drop.
    """

    dataset: Dataset | IterableDataset
    layout: Layout
    report: AuditReport | None = None
    verdict: FullyMasked | None = None
    supervised_counts: list[int] | None = None
    stops: CutStopToken | None = None
    #: every row verdict (`policies.VERDICTS`, in order); `verdict` and `stops` are the first two
    verdicts: list[RowVerdict] = dataclasses.field(default_factory=list)
    #: a streamed dataset's rows read and kept so far (`{"rows": n, "kept": n}`), growing as it is read
    stream_counts: dict[str, int] | None = None


def stop_token_ids(tokenizer) -> set[int]:
    """Tokens that end a completion: eos and the special end-of-turn tokens of chat templates."""
    ids = special_token_ids(tokenizer)
    if tokenizer.bos_token_id != tokenizer.eos_token_id:  # GPT-2 style tokenizers use one token for both
        ids.discard(tokenizer.bos_token_id)
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        ids.discard(tokenizer.pad_token_id)
    return ids


def _last_label(labels: list[int]) -> int | None:
    """The last supervised label of a row, or None."""
    return next((lab for lab in reversed(labels) if lab != IGNORE_INDEX), None)


class PreparationPipeline:
    """Prepares datasets for completion-only training from a tokenizer and `MaskingOptions`, without a model.

    `template` masks text rows by a response template (the collator's `matcher`, or one built from
    `options.response_template`). Build one with `from_config` to read a `MaskedSFTConfig` (or `SFTConfig`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        options: MaskingOptions,
        *,
        template: TemplateMatcher | None = None,
        explain: bool = False,
    ) -> None:
        text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
        if not callable(text_tokenizer) or not hasattr(text_tokenizer, "eos_token"):
            fix = (
                f"load it first: `AutoTokenizer.from_pretrained({tokenizer!r})`"
                if isinstance(tokenizer, str)
                else "pass the model's tokenizer (a `transformers` tokenizer)"
            )
            raise ModelSetupError(f"The tokenizer given is {type(tokenizer).__name__} {tokenizer!r:.60}. Fix: {fix}.")
        if text_tokenizer.pad_token is None and text_tokenizer.eos_token is not None:
            text_tokenizer.pad_token = text_tokenizer.eos_token
        self.tokenizer = tokenizer
        self.options = options
        if template is None and options.response_template is not None:
            template = TemplateMatcher(tokenizer, options.response_template, options.instruction_template)
        self.template = template
        #: keep why each token is trained or masked beside the ids (`provenance.WHY`, `FULL_IDS`): for the inspector
        self.explain = explain
        self._said_no_boundary = self._said_defaults = False

    @classmethod
    def from_config(
        cls,
        tokenizer: Tokenizer,
        config: Config = None,
        *,
        data_collator: Collator | None = None,
        explain: bool = False,
    ) -> PreparationPipeline:
        """A pipeline for `config` (defaults when `None`), masking by `data_collator`'s template if it has one."""
        matcher = getattr(data_collator, "matcher", None) if getattr(data_collator, "has_template", False) else None
        return cls(tokenizer, MaskingOptions.from_args(config), template=matcher, explain=explain)

    # ------------------------------------------------------------------------------------------------ the steps

    def prepare(
        self,
        dataset: Rows,
        dataset_name: str = "train",
        *,
        formatting_func: FormattingFunc | None = None,
        enforce: bool = True,
    ) -> PreparedDataset:
        """Prepare `dataset` (a `Dataset`, `IterableDataset`, or a list of dicts or `[question, answer]` pairs).

        With `enforce`, `masked_row_policy` applies: rows with no supervised token raise or are dropped, and the
        audit is logged. Without it (audits, the inspector), every row is kept and `report.policy_error` holds the
        error the policy would raise.
        """
        options = self.options
        dataset = coerce_dataset(
            dataset,
            prompt_column=options.prompt_column,
            completion_column=options.completion_column,
            dataset_name=dataset_name,
        )
        if isinstance(dataset, Dataset) and dataset.format["type"] == "custom":
            raise DatasetFormatError(
                f"The {dataset_name} dataset uses `Dataset.with_transform()`; preparation maps over the rows and "
                "would bake the transform in. Fix: apply deterministic transforms with `Dataset.map()` first, or pass "
                "`dataset_kwargs={'skip_prepare_dataset': True}` and make the transform return trainer-ready rows "
                "(`input_ids` and `labels`)."
            )
        if formatting_func is not None and "input_ids" not in column_names(dataset):
            dataset = apply_formatting(dataset, formatting_func, dataset_name)
            options = dataclasses.replace(options, text_field="text")
        dataset = fold_context(dataset, options, dataset_name, self.tokenizer)
        layout = detect_layout(dataset, options, dataset_name, template=self.template is not None)
        if layout in (Layout.PROMPT_COMPLETION, Layout.CONVERSATIONAL_PROMPT_COMPLETION, Layout.CONVERSATION):
            warn_unused_context(dataset, {options.prompt_column, options.completion_column}, dataset_name)
        dataset, empty_rows = check_values(dataset, layout, options, dataset_name)
        self._say_if_nothing_to_mask(layout, column_names(dataset))
        if layout in (Layout.PROMPT_COMPLETION, Layout.TEXT):
            dataset = tokenize_text_rows(dataset, self.tokenizer, layout, options, dataset_name)
        elif layout.is_conversational:
            dataset = self._tokenize_conversations(dataset, layout, dataset_name)
        else:
            dataset = clean_pretokenized(dataset, dataset_name, self.options.completion_only, self.options.num_proc)
        return self._audit(dataset, layout, dataset_name, empty_rows, enforce)

    def _tokenize_conversations(self, dataset, layout: Layout, dataset_name: str):
        """Assistant-only labels for conversations under any chat template (see `chat.chat_labels`)."""
        tokenizer, options = self.tokenizer, self.options

        streamed = isinstance(dataset, IterableDataset)  # a Dataset's messages were checked up front
        controls = ChatControls.of(options)  # the weight column exists only when some message carries a weight
        weighted = not streamed and carries_weights(dataset, controls.message_weight_key)

        def tokenize(example, index):
            kwargs = parse_tools(example, index, dataset_name)
            if streamed:
                for column in ("messages", "prompt", "completion"):
                    if isinstance(example.get(column), list):
                        check_messages([example[column]], dataset_name, start=index, column=column)
            messages, first = conversation_of(example, row=index, dataset_name=dataset_name)
            if not options.chat:  # `completion_only_loss=False`: the whole conversation is trained
                ids = list(
                    tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]
                )
                return {"input_ids": ids, "labels": list(ids), REASON: "", **({WHY: []} if self.explain else {})}
            mask = chat_labels(
                tokenizer,
                messages,
                assistant_turns=options.assistant_turns,
                train_eot=options.train_on_eot,
                stop_token_ids=given_stops(options.stop_token_ids, options.stop_sources),
                trainable_from=first,
                controls=controls,
                where=f"Row {index} of the {dataset_name} dataset",
                **kwargs,
            )
            row = {
                "input_ids": mask.input_ids,
                "labels": mask.labels,
                REASON: mask.row_reason,
                MERGED_HEADER: mask.merged,
            }
            if weighted or mask.weights is not None:  # streamed rows: the collator counts a row without as 1.0
                row[WEIGHTS] = mask.weights or [float(label != IGNORE_INDEX) for label in mask.labels]
            if self.explain:  # the turns' reasons (a row refused as a whole needs none)
                row[WHY] = [] if mask.row_reason else encode(mask.reasons)
            return row

        columns = column_names(dataset)
        kwargs = (
            {"desc": f"Masking assistant turns of {dataset_name} dataset", "num_proc": options.num_proc}
            if isinstance(dataset, Dataset)
            else {}
        )
        return dataset.map(tokenize, with_indices=True, remove_columns=columns, **kwargs)

    def _say_if_nothing_to_mask(self, layout: Layout, columns: list[str]) -> None:
        """Text or full-sequence pre-tokenized rows with no template have no prompt to mask: say so once."""
        if self._said_no_boundary or not self.options.completion_only or self.template is not None:
            return
        boundaries = {"labels", "completion_mask", "prompt_length", "assistant_masks"}
        if layout is not Layout.TEXT and not (layout is Layout.PRETOKENIZED and not boundaries & set(columns)):
            return
        logger.warning(
            "Completion-only loss is on, but these rows have no prompt/completion boundary, so the whole text is "
            "trained. To train on answers only, use prompt/completion columns (`prompt_column`, "
            "`completion_column`), `messages`, or a `response_template`."
        )
        self._said_no_boundary = True

    # ------------------------------------------------------------------------------------------------ the audit

    def _audit(self, dataset, layout: Layout, dataset_name: str, empty_rows: set[int], enforce: bool):
        """Apply template masks, truncate, audit what each row trains on, apply `masked_row_policy`."""
        options, template = self.options, self.template
        stop_ids = stop_token_ids(self.tokenizer) | set(options.stop_token_ids or ())
        cut = {"keep_end": options.keep_end, "min_completion": options.min_completion_tokens}
        truncate = functools.partial(truncate_row, max_length=options.max_length, **cut)

        def mask_and_truncate(example, index):
            ids, labels = example["input_ids"], example["labels"]
            reason = example.get(REASON) or ("empty completion" if index in empty_rows else "")
            if template is not None and not reason:
                spans = template.spans(ids)
                labels = spans_to_labels(labels, spans or [], IGNORE_INDEX)
                if spans is None:
                    reason = "response template not found"
                elif supervises_only_stop_tokens(labels, stop_ids):
                    reason = (
                        f"only the eos/end-of-turn token follows `response_template` {template.response_template!r}"
                    )
            full_count, first = supervision_stats(labels)
            full_length, stop_before = len(ids), _last_label(labels) in stop_ids
            why, weights = {}, example.get(WEIGHTS)
            if self.explain:  # truncated once, by position, so that the cut tokens can be shown
                instruction = options.instruction_template is not None
                weights = truncate_weighted(ids, labels, weights, options.max_length, **cut)[2]
                ids, labels, why = truncate_explained(
                    ids, labels, truncate, reason, example.get(WHY), instruction, IGNORE_INDEX
                )
            else:
                ids, labels, weights = truncate_weighted(ids, labels, weights, options.max_length, **cut)
            count = 0 if reason else supervision_stats(labels)[0]
            last = _last_label(labels)
            return {
                "input_ids": ids,
                "labels": labels,
                **({WEIGHTS: weights} if weights is not None else {}),
                FULL_COUNT: full_count,
                FULL_FIRST: first,
                REASON: reason,
                COUNT: count,
                STOP_OK: last in stop_ids,
                LENGTH: len(ids),
                FULL_LENGTH: full_length,
                STOP_CUT: bool(count) and stop_before and last not in stop_ids and len(ids) < full_length,
                MERGED: bool(example.get(MERGED)),
                **why,
            }

        if isinstance(dataset, IterableDataset):
            mapped = dataset.map(mask_and_truncate, with_indices=True)
            checked, counts = check_stream(mapped, options, dataset_name, enforce)
            return PreparedDataset(checked, layout, stream_counts=counts)
        dataset = map_rows(
            dataset,
            mask_and_truncate,
            desc=f"Checking supervised tokens of {dataset_name} dataset",
            columns=["input_ids", "labels", REASON, MERGED, WEIGHTS, WHY],
            num_proc=options.num_proc,
        )
        # the audit columns as lists, read once (a `Column` is read row by row)
        audit_columns = dataset.select_columns([c for c in AUDIT_COLUMNS if c in dataset.column_names]).to_dict()
        # Audited once, on the main process; every rank gets the same verdict (and raises the same error).
        report, verdicts = run_on_main(
            lambda: build_report(
                audit_columns,
                dataset_name=dataset_name,
                max_length=options.max_length,
                policies={verdict.policy_field: options.policy_of(verdict)[0] for verdict in VERDICTS},
                kept_defaults=options.inherited_defaults,
            )
        )
        dataset = dataset.remove_columns([c for c in AUDIT_COLUMNS if c in dataset.column_names])
        if WEIGHTS in dataset.column_names:  # the weight spread over the supervised tokens
            report.token_weights = weight_spread(dataset.select_columns(["labels", WEIGHTS]).to_dict())
        if layout.is_conversational and (stop := given_stops(options.stop_token_ids, options.stop_sources)):
            report.stop_set = ", ".join(f"{self.tokenizer.decode([i])!r} ({source})" for i, source in stop.items())
        masked = verdicts[0]
        for index in list(masked.rows)[:5]:
            labels, ids = dataset[index]["labels"], dataset[index]["input_ids"]
            first = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(ids))
            masked.prompt_tails[index] = clip_end(whole_text(self.tokenizer, ids[:first]), 60)
        prepared = PreparedDataset(dataset, layout, report, masked, list(audit_columns[COUNT]), verdicts[1], verdicts)
        if not enforce:
            errors, dropped = [], set()
            for verdict in verdicts:
                try:
                    dropped |= verdict.enforce(*options.policy_of(verdict))
                except verdict.error as error:
                    errors.append(str(error))
            report.rows_dropped, report.policy_error = len(dropped), "\n\n".join(errors) or None
            return prepared
        return self._enforce(prepared)

    def _enforce(self, prepared: PreparedDataset) -> PreparedDataset:
        """Apply each row verdict's policy (`masked_row_policy`, `truncated_completion_policy`, ...): raise, or drop
        the rows; log the audit and what each policy did."""
        options, report = self.options, prepared.report
        drops = [verdict.enforce(*options.policy_of(verdict)) for verdict in prepared.verdicts]
        report.rows_dropped = len(set().union(*drops))
        summary = report.summary()
        if options.inherited_defaults and not self._said_defaults:  # once per pipeline (train, then eval)
            kept = ", ".join(
                f"`{name}={ours!r}` (SFTConfig: {theirs!r})" for name, ours, theirs in options.inherited_defaults
            )
            summary += (
                f" MaskedSFTConfig defaults in use that differ from SFTConfig's (not set in the config): {kept}."
            )
            self._said_defaults = True
        logger.warning(summary)
        for verdict, dropped in reversed(list(zip(prepared.verdicts, drops, strict=True))):
            policy = options.policy_of(verdict)[0]
            message = verdict.outcome(policy, bool(dropped))
            if message is None:
                continue
            if policy == "warn":
                warn(message, stacklevel=4)
            else:
                logger.info(message)
        gone = set().union(*drops)
        if gone:
            dataset = prepared.dataset
            prepared.dataset = dataset.select([i for i in range(len(dataset)) if i not in gone])
        return prepared
