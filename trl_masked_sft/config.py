"""`MaskedSFTConfig`: TRL's `SFTConfig` with the homework's defaults and the masking policy fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy
from transformers.utils import is_torch_bf16_gpu_available
from trl import SFTConfig

from .config_checks import check_types, check_values
from .policies import POLICY_CHOICES
from .precision import has_accelerator, precision_variable_kept

__all__ = ["MaskedSFTConfig", "homework_lora_config"]


@dataclass
class MaskedSFTConfig(SFTConfig):
    r"""
    Configuration of [`MaskedSFTTrainer`]: everything [`~trl.SFTConfig`] has, plus the fields below.

    The defaults mirror the course homework this package grew from (LoRA SFT of SmolLM2-360M-Instruct on unit
    conversions): learning_rate 2e-4, num_train_epochs 3, per_device_train_batch_size 32, activation checkpointing
    on (on a GPU or other accelerator; on a CPU the trainer decides from an estimate of the activation memory
    against the machine's, `memory.py`), save_strategy "epoch", save_total_limit 1, logging_steps 10, report_to "tensorboard", label_names
    ["labels"], max_length 128, completion_only_loss True. `bf16` left unset is True where a GPU supports it; on a
    CPU with native bfloat16 units the trainer turns bfloat16 autocast on for a model of at least 20M parameters
    (`precision.py`), and the config constructs on a CPU-only machine.

    Args:
        masked_row_policy (`str`, *optional*, defaults to `"error"`):
            What the pre-flight pass does with rows that have no supervised token (prompt truncated at `max_length`,
            empty completion, response template not found): `"error"` stops before training and names the rows;
            `"drop"` drops them; `"warn"` drops them with a warning naming the rows. Dropping fails when more than
            `max_masked_row_fraction` of a dataset would go.
        max_masked_row_fraction (`float`, *optional*, defaults to `0.1`):
            Largest share of a dataset's rows (0 to 1) that `masked_row_policy="drop"` or `"warn"` may drop before
            it fails.
        truncated_completion_policy (`str`, *optional*, defaults to `"warn"`):
            What the pre-flight pass does with rows whose completion truncation at `max_length` cuts before its stop
            token (eos or end-of-turn), so that the model would never learn to stop there: `"warn"` trains them with
            a warning naming the rows, their lengths and the fix; `"drop"` drops them; `"error"` stops before
            training. `"warn"` and `"drop"` fail when more than `max_truncated_completion_fraction` of a dataset's
            rows are cut.
        max_truncated_completion_fraction (`float`, *optional*, defaults to `0.5`):
            Largest share of a dataset's rows (0 to 1) that `truncated_completion_policy="warn"` or `"drop"` accepts
            cut before their stop token; past it training stops (by default, when most rows lose their stop token).
            A plain `SFTConfig` keeps TRL's behaviour: the rows are trained as cut, with the warning.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the prompt; renamed to `prompt` before preparation (e.g. `"question"`). Homework rows
            given as `[question, answer]` lists fill this column and `completion_column`.
        completion_column (`str`, *optional*, defaults to `"completion"`):
            Column holding the completion (the answer, the only part trained); renamed to `completion` before
            preparation (e.g. `"answer"`). A finite number in the prompt or completion column is written with
            `str()` in every layout (a list, a typed `Dataset`, a stream); NaN, inf and bools are refused. In
            `[question, answer]` rows a numeric answer is written `" <answer>{round(answer, 3)}</answer>"` (rounded
            to 3 decimals), a string answer as given.
        response_template (`str`, *optional*):
            For `text` datasets: the text right before each answer (e.g. `"### Answer:"`); only what follows it is
            trained, found in context as `DataCollatorForCompletionOnlyLM` does. Rows without it are reported by the
            pre-flight pass.
        instruction_template (`str`, *optional*):
            For multi-turn `text` rows, with `response_template`: the text before each user turn; every response is
            trained up to the next instruction template.
        assistant_turns (`str`, *optional*, defaults to `"all"`):
            For conversational (`messages`) datasets, which assistant turns are trained: `"all"` or `"last"`. Turns
            are located by rendering the conversation prefix by prefix, so any chat template works, with or without
            `{% generation %}` markers; system, user and tool turns are masked.
        train_on_eot (`bool` or `str`, *optional*, defaults to `True`):
            Which end-of-turn tokens (e.g. `<|im_end|>`) are trained: `True`/`"turn"` each trained turn's, `False`/
            `"none"` none, `"last"` only the final trained turn's, `"all"` every one in the conversation, masked turns
            too (Axolotl's `train_on_eos` values). A model that never sees its stop token never learns to stop.
        train_roles (`list[str]`, *optional*, defaults to `["assistant"]`):
            For conversational datasets, the roles whose messages are trained by default, e.g. `["assistant",
            "tool"]`, or `["system", "user", "assistant"]` for the whole conversation; ShareGPT names (`gpt`, `human`)
            count as the roles they become. A message's own `train` key overrides its role.
        message_train_key (`str`, *optional*, defaults to `"train"`):
            The message key that trains (`true`) or masks (`false`) one message whatever its role: all of its text,
            plus its stop token when the template prints one.
        message_weight_key (`str`, *optional*, defaults to `"weight"`):
            The message key of a per-message loss weight (a number >= 0): its tokens count that many times in the
            loss, `sum(w * CE) / sum(w)` over the supervised tokens of a step; 0 masks the message.
        reasoning (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"mask"`: with `"mask"`, the reasoning of a trained reply (`reasoning_content`/`thinking`,
            or `<think>...</think>` in the content) and the wrapper the template renders around it are masked; its
            answer and stop token stay trained.
        tool_calls (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"mask"`: with `"mask"`, the tool-call part of a trained reply is masked; a reply that is only
            a tool call keeps its stop token trained. Tool results stay masked unless `train_roles` or a message's
            `train` key says otherwise.
        stop_token_ids (`list[int]`, *optional*):
            The token ids that end generation, for the end-of-turn rule (`docs/chat_templates.md`): each trained
            assistant turn ends with one of them. `None`: the trainer reads the model's
            `generation_config.eos_token_id`; without a model (`inspect`, `audit`), the tokenizer's eos and the chat
            template's end-of-turn token. The tokenizer's eos is always added.
        min_completion_tokens (`int`, *optional*):
            When set, a row that truncation at `max_length` would leave with fewer than this many completion tokens
            loses the start of its prompt instead, keeping as much of the completion as fits (all of it when it fits
            beside one prompt token). Rows whose completion was partly cut are counted in the audit either way.
        health_checks (`bool`, *optional*, defaults to `True`):
            Install `TrainingHealthGuard`: stop at the first step whose loss or gradient norm is not finite or that
            has no supervised token, before the optimizer applies it, with an error naming the step, the cause and the
            fix; with checkpoints on, the last good weights are saved first. Also checks, at the first step, that the
            trainable parameters received a gradient.
        pack_within_batch (`bool`, *optional*, defaults to `True`):
            Lay the rows of each training batch end to end in fewer, fuller rows (position ids restarting at each row)
            instead of padding every row to the longest: the same rows, order, labels and loss, without the compute
            spent on padding. Used only where it is exact: with the default data collator, without `packing` or
            `padding_free`, and after a check at the start of training that the model gives the same logits for rows
            packed and alone (else batches are padded as usual, said in the log). Evaluation batches are not packed.
        score_supervised_only (`bool`, *optional*, defaults to `True`):
            Project only the positions whose next token is supervised through the LM head when computing the loss,
            on CPU (TRL's fused head does so itself on CUDA/XPU with Triton, and projects every position elsewhere):
            the same loss, gradients and logged metrics, without the head's work on prompt positions. Where it can't
            apply exactly (another device, a `compute_loss_func`, label smoothing, prompt-learning PEFT, DeepSpeed or
            FSDP, a model that can't keep a selection of logits) TRL's path is used, said once in the log.
        frozen_weights_bf16 (`bool`, *optional*, defaults to `True`):
            Under bf16 autocast, hold the frozen float32 weights of the linear layers in bfloat16 while `train()`
            runs, instead of letting autocast cast them again at every matrix product (same numbers, fewer casts).
            The model's own parameters are put back, unchanged, when training ends or fails; trainable weights, the
            optimizer state and LoRA sums stay float32.
    """

    # Parameters whose default values differ from SFTConfig (the homework's settings)
    learning_rate: float = field(default=2e-4, metadata={"help": "The initial learning rate for AdamW."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Total number of training epochs to perform."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Batch size per device accelerator core/CPU for training."}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Trade compute for memory by recomputing activations in the backward pass. If not set, True "
            "(the homework's setting) where a GPU or other accelerator is present; on a CPU the trainer turns it on "
            "only when its estimate of the activation memory (the longest batch's tokens x layers x hidden size x "
            "bytes) exceeds a share of the machine's available memory, and says so in the log; unless the "
            "deprecated `gradient_checkpointing` says otherwise."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing`, will be removed in v6."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to use bf16 mixed precision. If not set, True where a GPU supports it; on a CPU with "
            "native bfloat16 units (AVX512-BF16, AMX, Arm BF16) the trainer turns it on for a model of at least 20M "
            "parameters, and says so in the log."
        },
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "The checkpoint save strategy to use."}
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep at most this many checkpoints."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "The list of integrations to report the results and logs to."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"],
        metadata={"help": "The list of keys in your dictionary of inputs that correspond to the labels."},
    )
    max_length: int | None = field(
        default=128, metadata={"help": "Maximum length of the tokenized sequence; longer rows are truncated."}
    )
    completion_only_loss: bool | None = field(
        default=True,
        metadata={"help": "Compute the loss on the completion only. False trains on the whole sequence."},
    )

    # New parameters
    masked_row_policy: str = field(
        default="error",
        metadata={
            "help": "What the pre-flight pass does with rows that have no supervised token (prompt truncated at "
            '`max_length`, empty completion, response template not found): `"error"` stops before training and '
            'names the rows; `"drop"` drops them; `"warn"` drops them with a warning naming the rows. Dropping fails '
            "when more than `max_masked_row_fraction` of a dataset would go.",
            "choices": list(POLICY_CHOICES),
        },
    )
    max_masked_row_fraction: float = field(
        default=0.1,
        metadata={
            "help": 'Largest share of a dataset\'s rows (0 to 1) that `masked_row_policy="drop"` or `"warn"` may '
            "drop before it fails."
        },
    )
    truncated_completion_policy: str = field(
        default="warn",
        metadata={
            "help": "What the pre-flight pass does with rows whose completion truncation at `max_length` cuts before "
            'its stop token (eos or end-of-turn), so that the model would never learn to stop there: `"warn"` '
            'trains them with a warning naming the rows, their lengths and the fix; `"drop"` drops them; '
            '`"error"` stops before training. `"warn"` and `"drop"` fail when more than '
            "`max_truncated_completion_fraction` of a dataset's rows are cut.",
            "choices": list(POLICY_CHOICES),
        },
    )
    max_truncated_completion_fraction: float = field(
        default=0.5,
        metadata={
            "help": 'Largest share of a dataset\'s rows (0 to 1) that `truncated_completion_policy="warn"` or '
            '`"drop"` accepts cut before their stop token; past it training stops (by default, when most rows lose '
            "their stop token). A plain `SFTConfig` keeps TRL's behaviour: the rows are trained as cut, with the "
            "warning."
        },
    )
    prompt_column: str = field(
        default="prompt",
        metadata={
            "help": 'Column holding the prompt; renamed to `prompt` before preparation (e.g. `"question"`). '
            "Homework rows given as `[question, answer]` lists fill this column and `completion_column`."
        },
    )
    completion_column: str = field(
        default="completion",
        metadata={
            "help": "Column holding the completion (the answer, the only part trained); renamed to `completion` "
            'before preparation (e.g. `"answer"`). A finite number in the prompt or completion column is written '
            "with `str()` in every layout (a list, a typed `Dataset`, a stream); NaN, inf and bools are refused. In "
            '`[question, answer]` rows a numeric answer is written `" <answer>{round(answer, 3)}</answer>"` (rounded '
            "to 3 decimals), a string answer as given."
        },
    )

    response_template: str | None = field(
        default=None,
        metadata={
            "help": 'For `text` datasets: the text right before each answer (e.g. `"### Answer:"`); only what follows '
            "it is trained, found in context as `DataCollatorForCompletionOnlyLM` does. Rows without it are reported "
            "by the pre-flight pass."
        },
    )
    instruction_template: str | None = field(
        default=None,
        metadata={
            "help": "For multi-turn `text` rows, with `response_template`: the text before each user turn; every "
            "response is trained up to the next instruction template."
        },
    )
    assistant_turns: str = field(
        default="all",
        metadata={
            "help": 'For conversational (`messages`) datasets, which assistant turns are trained: `"all"` or `"last"`. '
            "Turns are located by rendering the conversation prefix by prefix, so any chat template works, with or "
            "without `{%% generation %%}` markers; system, user and tool turns are masked.",
            "choices": ["all", "last"],
        },
    )
    train_on_eot: Literal[True, False, "turn", "none", "last", "all"] = field(
        default=True,
        metadata={
            "help": 'Which end-of-turn tokens (e.g. `<|im_end|>`) are trained: `True`/`"turn"` each trained turn\'s, '
            '`False`/ `"none"` none, `"last"` only the final trained turn\'s, `"all"` every one in the conversation, '
            "masked turns too (Axolotl's `train_on_eos` values). A model that never sees its stop token never learns "
            "to stop."
        },
    )
    train_roles: list[str] = field(
        default_factory=lambda: ["assistant"],
        metadata={
            "help": 'For conversational datasets, the roles whose messages are trained by default, e.g. `["assistant", '
            '"tool"]`, or `["system", "user", "assistant"]` for the whole conversation; ShareGPT names (`gpt`, '
            "`human`) count as the roles they become. A message's own `train` key overrides its role."
        },
    )
    message_train_key: str = field(
        default="train",
        metadata={
            "help": "The message key that trains (`true`) or masks (`false`) one message whatever its role: all of its "
            "text, plus its stop token when the template prints one."
        },
    )
    message_weight_key: str = field(
        default="weight",
        metadata={
            "help": "The message key of a per-message loss weight (a number >= 0): its tokens count that many times "
            "in the loss, `sum(w * CE) / sum(w)` over the supervised tokens of a step; 0 masks the message."
        },
    )
    reasoning: str = field(
        default="train",
        metadata={
            "help": '`"train"` or `"mask"`: with `"mask"`, the reasoning of a trained reply (`reasoning_content`/'
            "`thinking`, or `<think>...</think>` in the content) and the wrapper the template renders around it are "
            "masked; its answer and stop token stay trained.",
            "choices": ["train", "mask"],
        },
    )
    tool_calls: str = field(
        default="train",
        metadata={
            "help": '`"train"` or `"mask"`: with `"mask"`, the tool-call part of a trained reply is masked; a reply '
            "that is only a tool call keeps its stop token trained. Tool results stay masked unless `train_roles` or "
            "a message's `train` key says otherwise.",
            "choices": ["train", "mask"],
        },
    )
    stop_token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "The token ids that end generation, for the end-of-turn rule: each trained assistant turn ends "
            "with one of them. None: the trainer reads the model's `generation_config.eos_token_id`; without a model "
            "(`inspect`, `audit`), the tokenizer's eos and the chat template's end-of-turn token. The tokenizer's eos "
            "is always added."
        },
    )
    min_completion_tokens: int | None = field(
        default=None,
        metadata={
            "help": "When set, a row that truncation at `max_length` would leave with fewer than this many completion "
            "tokens loses the start of its prompt instead, keeping as much of the completion as fits (all of it when "
            "it fits beside one prompt token). Rows whose completion was partly cut are counted in the audit either "
            "way."
        },
    )
    health_checks: bool = field(
        default=True,
        metadata={
            "help": "Install `TrainingHealthGuard`: stop at the first step whose loss or gradient norm is not finite "
            "or that has no supervised token, before the optimizer applies it, with an error naming the step, the "
            "cause and the fix; with checkpoints on, the last good weights are saved first. Also checks, at the "
            "first step, that the trainable parameters received a gradient."
        },
    )
    pack_within_batch: bool = field(
        default=True,
        metadata={
            "help": "Lay the rows of each training batch end to end in fewer, fuller rows (position ids restarting at "
            "each row) instead of padding every row to the longest: the same rows, order, labels and loss, without "
            "the compute spent on padding. Used only where it is exact: with the default data collator, without "
            "`packing` or `padding_free`, and after a check at the start of training that the model gives the same "
            "logits for rows packed and alone (else batches are padded as usual, said in the log). Evaluation "
            "batches are not packed."
        },
    )
    score_supervised_only: bool = field(
        default=True,
        metadata={
            "help": "Project only the positions whose next token is supervised through the LM head when computing "
            "the loss, on CPU (TRL's fused head does so itself on CUDA/XPU with Triton, and projects every position "
            "elsewhere): the same loss, gradients and logged metrics, without the head's work on prompt positions. "
            "Where it can't apply exactly (another device, a `compute_loss_func`, label smoothing, prompt-learning "
            "PEFT, DeepSpeed or FSDP, a model that can't keep a selection of logits) TRL's path is used, said once in "
            "the log."
        },
    )
    frozen_weights_bf16: bool = field(
        default=True,
        metadata={
            "help": "Under bf16 autocast, hold the frozen float32 weights of the linear layers in bfloat16 while "
            "`train()` runs, instead of letting autocast cast them again at every matrix product (same numbers, "
            "fewer casts). The model's own parameters are put back, unchanged, when training ends or fails; "
            "trainable weights, the optimizer state and LoRA sums stay float32."
        },
    )

    def __post_init__(self):
        self._checkpointing_auto = False
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = not self.use_cpu and has_accelerator()
            # Off on a CPU unless the trainer, which sees the model and the data, finds it needed (`memory.py`).
            self._checkpointing_auto = not self.activation_checkpointing
        if "activation_checkpointing" not in TrainingArguments.__dataclass_fields__:
            # transformers 4.x knows only `gradient_checkpointing`: resolved as 5.x resolves the two names (the new
            # one wins when set), then mirrored, so either name reads the same and 4.x's Trainer sees the choice.
            if self.activation_checkpointing is None:
                self.activation_checkpointing = bool(self.gradient_checkpointing)
            self.gradient_checkpointing = self.activation_checkpointing
        check_types(self)  # before transformers converts or compares them: a typo fails there with no fix
        self._bf16_auto = False
        if self.bf16 is None and not self.fp16:
            self.bf16 = not self.use_cpu and is_torch_bf16_gpu_available()
            # Left to the trainer, which sees the model: bfloat16 autocast on a CPU that has it (`precision.py`).
            self._bf16_auto = not self.bf16
        # transformers 4.x writes its bf16/fp16 choice into ACCELERATE_MIXED_PRECISION, where every later config in
        # this process and every process started from it read it back (huggingface/transformers#29510, fixed in
        # 5.0.0): it is put back. The trainer hands its accelerator this config's own precision
        # (`hf_compat.accelerator_precision`).
        with precision_variable_kept():
            super().__post_init__()
        check_values(self)


def homework_lora_config(**overrides):
    """The homework's LoRA setup: r 8, lora_alpha 32, all linear layers, no bias, causal LM. Overrides win."""
    from peft import LoraConfig

    settings = {"r": 8, "lora_alpha": 32, "target_modules": "all-linear", "bias": "none", "task_type": "CAUSAL_LM"}
    settings.update(overrides)
    return LoraConfig(**settings)
