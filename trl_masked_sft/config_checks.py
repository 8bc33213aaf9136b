"""The rules config values must follow: types, ranges, choices and conflicts, ours and the TRL/transformers fields
the masking and the training loop depend on.

`check_types` runs before `TrainingArguments.__post_init__` (which would otherwise fail inside transformers on a
string or an unknown choice, or accept `2.5` accumulation steps); `check_values` runs after it, on the final values.
`check_masking_fields` re-checks the fields the preparation reads, for a plain `SFTConfig` (or a config changed
after it was built). Every failure is a `ConfigError` naming the field in backticks, the value seen and the fix.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from .errors import ConfigError
from .policies import POLICY_CHOICES, VERDICTS

__all__ = ["check_masking_fields", "check_types", "check_values"]

#: Fields that must be whole numbers (`bool` is refused: `True` is not a batch size), with their least value.
_INTS = {
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": None,  # -1 (use epochs) or > 0, checked with num_train_epochs
    "seed": 0,
    "dataloader_num_workers": 0,
}
_OPTIONAL_INTS = {"max_length": 2, "min_completion_tokens": 1, "dataset_num_proc": 1, "save_total_limit": None}
#: Fields that are numbers (int or float) with their least value (None: no bound) and whether that bound is included.
_NUMBERS = {
    "learning_rate": (0.0, True),
    "num_train_epochs": (0.0, True),
    "weight_decay": (0.0, True),
    "warmup_steps": (0.0, True),
    "adam_epsilon": (0.0, False),
    "max_masked_row_fraction": (0.0, True),
    "max_truncated_completion_fraction": (0.0, True),
}
_OPTIONAL_NUMBERS = {"max_grad_norm": (0.0, True)}
_BOOLS = (
    "health_checks",
    "pack_within_batch",
    "frozen_weights_bf16",
    "packing",
    "padding_free",
    "assistant_only_loss",
    "remove_unused_columns",
    "use_cpu",
    "logging_nan_inf_filter",
    "shuffle_dataset",
)
_OPTIONAL_BOOLS = ("completion_only_loss", "bf16", "fp16", "activation_checkpointing", "gradient_checkpointing")
_CHOICES = {
    **{verdict.policy_field: POLICY_CHOICES for verdict in VERDICTS},
    "assistant_turns": ("all", "last"),
    "reasoning": ("train", "mask"),
    "tool_calls": ("train", "mask"),
    "truncation_mode": ("keep_start", "keep_end"),
    "packing_strategy": ("bfd", "bfd_split", "wrapped"),
    "loss_type": ("nll", "dft", "chunked_nll"),
}
_NAMES = ("prompt_column", "completion_column", "dataset_text_field")
_OPTIONAL_STRINGS = ("response_template", "instruction_template", "eos_token", "pad_token", "chat_template_path")


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _suggest(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _int_fix(name: str, value: Any) -> str:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return f"Fix: write it as a number, `{name}={int(value)}` (a YAML value in quotes is a string)."
    if isinstance(value, float) and value.is_integer():
        return f"Fix: write it as a whole number, `{name}={int(value)}`."
    return f"Fix: set `{name}` to a whole number."


def _check_int(args: Any, name: str, least: int | None, optional: bool) -> None:
    value = getattr(args, name, None)
    if value is None and optional:
        return
    if not _is_int(value):
        raise ConfigError(f"`{name}` must be an int, got {_shown(value)}. {_int_fix(name, value)}")
    if least is not None and value < least:
        raise ConfigError(f"`{name}` must be at least {least}, got {value}. Fix: set `{name}` >= {least}.")


def _check_number(args: Any, name: str, least: float | None, inclusive: bool, optional: bool) -> None:
    value = getattr(args, name, None)
    if value is None and optional:
        return
    if not _is_number(value) or not math.isfinite(value):
        fix = f"`{name}={float(value)}`" if isinstance(value, str) and _parses(value) else "a finite number"
        raise ConfigError(f"`{name}` must be a finite number, got {_shown(value)}. Fix: set it to {fix}.")
    if least is not None and (value < least or (value == least and not inclusive)):
        bound = f">= {least:g}" if inclusive else f"> {least:g}"
        raise ConfigError(f"`{name}` must be {bound}, got {value!r}. Fix: set `{name}` {bound}.")


def _parses(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_choice(args: Any, name: str, choices) -> None:
    value = getattr(args, name, None)
    value = getattr(value, "value", value)  # transformers' enums
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(
            f"`{name}` must be one of {listed}, got {value!r}.{_suggest(value, choices)} Fix: use one of them."
        )


def _transformers_choices() -> dict[str, tuple[str, ...]]:
    """The string enums `TrainingArguments.__post_init__` converts (a typo fails inside transformers otherwise)."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    return {
        "eval_strategy": tuple(s.value for s in IntervalStrategy),
        "logging_strategy": tuple(s.value for s in IntervalStrategy),
        "save_strategy": tuple(s.value for s in SaveStrategy),
        "lr_scheduler_type": tuple(s.value for s in SchedulerType),
        "optim": tuple(s.value for s in OptimizerNames),
    }


def check_types(args: Any) -> None:
    """Types and choices of every field we check, before `TrainingArguments.__post_init__` reads them."""
    for name, least in _INTS.items():
        if hasattr(args, name):
            _check_int(args, name, least, optional=False)
    for name, least in _OPTIONAL_INTS.items():
        if hasattr(args, name):
            _check_int(args, name, least, optional=True)
    for name, (least, inclusive) in _NUMBERS.items():
        if hasattr(args, name):
            _check_number(args, name, least, inclusive, optional=False)
    for name, (least, inclusive) in _OPTIONAL_NUMBERS.items():
        if hasattr(args, name):
            _check_number(args, name, least, inclusive, optional=True)
    for name in (*_BOOLS, *_OPTIONAL_BOOLS):
        value = getattr(args, name, None)
        if hasattr(args, name) and not isinstance(value, bool) and not (value is None and name in _OPTIONAL_BOOLS):
            fix = (
                f"`{name}={value.strip().lower() in ('true', '1', 'yes')}`"
                if isinstance(value, str)
                else "True or False"
            )
            raise ConfigError(f"`{name}` must be True or False, got {_shown(value)}. Fix: set {fix}.")
    for name, choices in _CHOICES.items():
        if hasattr(args, name):
            _check_choice(args, name, choices)
    for name, choices in _transformers_choices().items():
        if hasattr(args, name):
            _check_choice(args, name, choices)
    for name in _NAMES:
        value = getattr(args, name, "x")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"`{name}` must be a non-empty column name, got {_shown(value)}. Fix: name a column.")
    for name in _OPTIONAL_STRINGS:
        value = getattr(args, name, None)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"`{name}` must be a non-empty string or None, got {_shown(value)}. Fix: set a string.")
    for strategy, steps in (
        ("save_strategy", "save_steps"),
        ("eval_strategy", "eval_steps"),
        ("logging_strategy", "logging_steps"),
    ):
        value = getattr(getattr(args, strategy, None), "value", getattr(args, strategy, None))
        count = getattr(args, steps, None)
        if value == "steps" and count is not None and (not _is_number(count) or count <= 0):
            raise ConfigError(
                f"`{strategy}='steps'` needs `{steps}` > 0, got {_shown(count)}. Fix: set `{steps}` (e.g. 100), or "
                f"another `{strategy}`."
            )
    labels = getattr(args, "label_names", None)
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(n, str) for n in labels)):
        raise ConfigError(f"`label_names` must be a list of strings, got {_shown(labels)}. Fix: e.g. ['labels'].")
    _check_conflicts(args)
    output_dir = getattr(args, "output_dir", "x")
    if output_dir is not None and (not isinstance(output_dir, str) or not output_dir.strip()):
        raise ConfigError(
            f"`output_dir` must be a folder path, got {_shown(output_dir)}. Fix: e.g. `output_dir='out'`; "
            "checkpoints and the audit are written only under it."
        )


def _value(args: Any, name: str) -> Any:
    value = getattr(args, name, None)
    return getattr(value, "value", value)


def _check_conflicts(args: Any) -> None:
    """Fields that each look fine but can't go together (transformers would refuse them with no fix)."""
    if getattr(args, "bf16", False) and getattr(args, "fp16", False):
        raise ConfigError("`bf16` and `fp16` are both True; pick one. Fix: set `fp16=False` (bf16 where supported).")
    if not getattr(args, "load_best_model_at_end", False):
        return
    save, evaluate = _value(args, "save_strategy"), _value(args, "eval_strategy")
    if save != "best" and save != evaluate:
        raise ConfigError(
            f"`load_best_model_at_end=True` needs checkpoints where evaluations happen, but `save_strategy` is "
            f"{save!r} and `eval_strategy` is {evaluate!r}. Fix: set both to 'steps' (or 'epoch'), or "
            "`save_strategy='best'`."
        )
    eval_steps = getattr(args, "eval_steps", None) or getattr(args, "logging_steps", None)
    save_steps = getattr(args, "save_steps", None)
    if save == "steps" and _is_int(eval_steps) and _is_int(save_steps) and save_steps % eval_steps:
        raise ConfigError(
            f"`load_best_model_at_end=True` with `save_steps={save_steps}` and `eval_steps={eval_steps}`: every "
            f"checkpoint must follow an evaluation. Fix: make `save_steps` a multiple of `eval_steps`, e.g. "
            f"{eval_steps * max(1, round(save_steps / eval_steps))}."
        )


#: `train_on_eot` values besides True/False (Axolotl's `train_on_eos` names).
EOT_CHOICES = ("turn", "none", "last", "all")


def _check_chat_controls(args: Any) -> None:
    """`train_on_eot`, `train_roles` and the message keys of the chat controls."""
    eot = getattr(args, "train_on_eot", True)
    if not isinstance(eot, bool) and eot not in EOT_CHOICES:
        fix = (
            "`train_on_eot=True`"
            if not isinstance(eot, str) or eot.lower() in ("yes", "true", "1")
            else ("`train_on_eot=False`" if eot.lower() in ("no", "false", "0") else "one of them")
        )
        raise ConfigError(
            f"`train_on_eot` must be True or False, or one of {', '.join(map(repr, EOT_CHOICES))}, got "
            f"{_shown(eot)}.{_suggest(eot, EOT_CHOICES)} Fix: set {fix}."
        )
    roles = getattr(args, "train_roles", ["assistant"])
    if (
        isinstance(roles, str)
        or not isinstance(roles, (list, tuple))
        or not all(isinstance(r, str) and r for r in roles)
    ):
        raise ConfigError(
            f"`train_roles` must be a list of role names, got {_shown(roles)}. Fix: e.g. `train_roles=['assistant']`, "
            "or `['assistant', 'tool']`."
        )
    keys = [getattr(args, k, d) for k, d in (("message_train_key", "train"), ("message_weight_key", "weight"))]
    for name, key in zip(("message_train_key", "message_weight_key"), keys, strict=True):
        if not isinstance(key, str) or not key or key in ("role", "content"):
            raise ConfigError(
                f"`{name}` must be a message key other than 'role' and 'content', got {_shown(key)}. Fix: e.g. "
                f"`{name}={name.split('_')[1]!r}`."
            )
    if keys[0] == keys[1]:
        raise ConfigError(
            f"`message_train_key` and `message_weight_key` are both {keys[0]!r}; one key can't hold a flag and a "
            "weight. Fix: name two different keys."
        )


def check_values(args: Any) -> None:
    """Ranges and conflicts between fields, on the values `TrainingArguments.__post_init__` left."""
    check_masking_fields(args)
    for beta in ("adam_beta1", "adam_beta2"):
        value = getattr(args, beta, 0.9)
        if not _is_number(value) or not 0 <= value < 1:
            raise ConfigError(
                f"`{beta}` must be in [0, 1), got {_shown(value)}. Fix: e.g. 0.9 (beta1), 0.999 (beta2)."
            )
    if getattr(args, "max_steps", -1) == 0 or getattr(args, "max_steps", -1) < -1:
        raise ConfigError(
            f"`max_steps` must be -1 (train `num_train_epochs` epochs) or > 0, got {args.max_steps}. Fix: set "
            "`max_steps=-1` or a positive number of steps."
        )
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ConfigError(
            f"`num_train_epochs` is {args.num_train_epochs:g} and `max_steps` is {args.max_steps}: training would "
            "run 0 steps. Set `num_train_epochs` > 0 or `max_steps` > 0."
        )


def check_masking_fields(args: Any) -> None:
    """The fields the preparation pipeline reads, and how they combine (also for a plain `SFTConfig`)."""
    if hasattr(args, "truncation_mode"):
        _check_choice(args, "truncation_mode", _CHOICES["truncation_mode"])
    for name in (*(verdict.policy_field for verdict in VERDICTS), "assistant_turns", "reasoning", "tool_calls"):
        if hasattr(args, name):
            _check_choice(args, name, _CHOICES[name])
    _check_chat_controls(args)
    for name, least in (("max_length", 2), ("min_completion_tokens", 1), ("dataset_num_proc", 1)):
        if hasattr(args, name):
            _check_int(args, name, least, optional=True)
    for verdict in VERDICTS:
        name, says, example = verdict.fraction_field, verdict.fraction_says, verdict.default_fraction
        if hasattr(args, name):
            _check_number(args, name, 0.0, True, optional=False)
            if getattr(args, name) > 1:
                raise ConfigError(
                    f"`{name}` must be a share between 0 and 1, got {getattr(args, name)!r}. Fix: e.g. {example} lets "
                    f"{says} up to {example:.0%} of the rows."
                )
    for name in _NAMES:
        value = getattr(args, name, "x")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"`{name}` must be a non-empty column name, got {_shown(value)}. Fix: name a column.")
    prompt, completion = getattr(args, "prompt_column", "prompt"), getattr(args, "completion_column", "completion")
    if prompt == completion:
        raise ConfigError(
            f"`prompt_column` and `completion_column` are both {prompt!r}; they must name two different columns. "
            "Fix: point one of them at the other column."
        )
    response, instruction = getattr(args, "response_template", None), getattr(args, "instruction_template", None)
    if instruction is not None and response is None:
        raise ConfigError(
            f"`instruction_template` is {instruction!r} but `response_template` is None: the instruction template "
            "only marks user turns. Fix: set `response_template` too."
        )
    max_length, keep = getattr(args, "max_length", None), getattr(args, "min_completion_tokens", None)
    if keep is not None and max_length is not None and keep >= max_length:
        raise ConfigError(
            f"`min_completion_tokens` ({keep}) must be below `max_length` ({max_length}) to leave room for at "
            "least one prompt token. Fix: lower `min_completion_tokens` or raise `max_length`."
        )
    if keep is not None and getattr(args, "truncation_mode", "keep_start") == "keep_end":
        raise ConfigError(
            f"`min_completion_tokens={keep}` keeps answers by cutting the start of the prompt, which "
            "`truncation_mode='keep_end'` already does for every row. Fix: drop one of the two (keep_end is deprecated "
            "in TRL; prefer `min_completion_tokens`)."
        )
