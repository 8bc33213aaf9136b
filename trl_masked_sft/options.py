"""`MaskingOptions`: the settings that decide what a row trains on, read once from a config and never changed."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments
from trl import SFTConfig

from .config import MaskedSFTConfig
from .config_checks import check_masking_fields
from .policies import VERDICTS, RowVerdict

__all__ = ["MaskingOptions", "kept_defaults", "trainer_config"]


@dataclass(frozen=True)
class MaskingOptions:
    """The settings that decide what a row trains on, read once from a config (`from_args`) and never changed.

    A variant is made with `dataclasses.replace(options, ...)`; the user's config is never mutated.
    """

    completion_only: bool = True
    #: assistant-only masks for conversations (on with `completion_only` or `assistant_only_loss`)
    chat: bool = True
    #: the user asked for `assistant_only_loss=True` (refused on data that is not conversational, as TRL does)
    assistant_only: bool = False
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    text_field: str = "text"
    response_template: str | None = None
    instruction_template: str | None = None
    assistant_turns: str = "all"
    #: `True`/`"turn"`, `False`/`"none"`, `"last"` or `"all"` (see `MaskedSFTConfig.train_on_eot`)
    train_on_eot: bool | str = True
    #: the chat controls (see `chat.controls.ChatControls`)
    train_roles: tuple[str, ...] = ("assistant",)
    message_train_key: str = "train"
    message_weight_key: str = "weight"
    reasoning: str = "train"
    tool_calls: str = "train"
    #: the ids that end generation (`None`: the tokenizer's eos and the template's closing), and where each comes
    #: from (`chat.end_of_turn.GENERATION_CONFIG`, ...; empty: the config's `stop_token_ids`)
    stop_token_ids: tuple[int, ...] | None = None
    stop_sources: tuple[str, ...] = ()
    max_length: int | None = 128
    keep_end: bool = False
    min_completion_tokens: int | None = None
    masked_row_policy: str = "error"
    max_masked_row_fraction: float = 0.1
    truncated_completion_policy: str = "warn"
    max_truncated_completion_fraction: float = 0.5
    #: the `MaskedSFTConfig` defaults kept that differ from `SFTConfig`'s, as `{field: (ours, SFTConfig's)}`
    inherited_defaults: tuple[tuple[str, Any, Any], ...] = ()
    num_proc: int | None = None
    #: the policy fields of row verdicts that have no field above, `((config field, value), ...)`
    more_policies: tuple[tuple[str, Any], ...] = ()

    def policy_of(self, verdict: type[RowVerdict] | RowVerdict) -> tuple[str, float]:
        """`verdict`'s policy and the largest share of rows its `drop`/`warn` accept, as the config set them."""
        more = dict(self.more_policies)
        name, fraction = verdict.policy_field, verdict.fraction_field
        return (
            getattr(self, name, more.get(name, verdict.default)),
            getattr(self, fraction, more.get(fraction, verdict.default_fraction)),
        )

    @classmethod
    def from_args(cls, args: Any) -> MaskingOptions:
        """Read the options from a `MaskedSFTConfig`, an `SFTConfig` (our fields take their defaults) or `None`."""
        if args is None:
            return cls()
        check_masking_fields(args)  # a plain SFTConfig, or a config changed after it was built
        defaults = MaskedSFTConfig.__dataclass_fields__

        def get(name: str) -> Any:
            return getattr(args, name) if hasattr(args, name) else defaults[name].default

        completion_only = get("completion_only_loss") is not False
        ours = hasattr(args, "max_truncated_completion_fraction")
        assistant_only = bool(get("assistant_only_loss"))
        return cls(
            completion_only=completion_only,
            chat=completion_only or assistant_only,
            assistant_only=assistant_only,
            prompt_column=get("prompt_column"),
            completion_column=get("completion_column"),
            text_field=get("dataset_text_field"),
            response_template=get("response_template"),
            instruction_template=get("instruction_template"),
            assistant_turns=get("assistant_turns"),
            train_on_eot=get("train_on_eot"),
            train_roles=tuple(get("train_roles") if hasattr(args, "train_roles") else ("assistant",)),
            message_train_key=get("message_train_key"),
            message_weight_key=get("message_weight_key"),
            reasoning=get("reasoning"),
            tool_calls=get("tool_calls"),
            stop_token_ids=None if (stops := get("stop_token_ids")) is None else tuple(int(i) for i in stops),
            max_length=get("max_length"),
            keep_end=get("truncation_mode") == "keep_end",
            min_completion_tokens=get("min_completion_tokens"),
            masked_row_policy=get("masked_row_policy"),
            max_masked_row_fraction=get("max_masked_row_fraction"),
            truncated_completion_policy=get("truncated_completion_policy"),
            # a plain SFTConfig keeps TRL's behaviour (rows trained as cut), with the warning
            max_truncated_completion_fraction=get("max_truncated_completion_fraction") if ours else 1.0,
            inherited_defaults=kept_defaults(args),
            num_proc=get("dataset_num_proc"),
            more_policies=tuple(
                (name, get(name))
                for verdict in VERDICTS
                for name in (verdict.policy_field, verdict.fraction_field)
                if name not in cls.__dataclass_fields__
            ),
        )


#: `MaskedSFTConfig` defaults that change what or how long a swapped-in config trains, compared with `SFTConfig`'s.
_DIFFERENT_DEFAULTS = ("max_length", "per_device_train_batch_size", "learning_rate", "save_strategy", "report_to")


def kept_defaults(args: Any) -> tuple[tuple[str, Any, Any], ...]:
    """`(field, our default, SFTConfig's default)` for each `MaskedSFTConfig` default in `args` that differs from
    `SFTConfig`'s and still holds its default value (not set by the user); empty for any other config."""
    if not isinstance(args, MaskedSFTConfig):
        return ()

    def plain(value: Any) -> Any:
        value = getattr(value, "value", value)  # transformers' enums
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    kept = []
    for name in _DIFFERENT_DEFAULTS:
        ours, theirs = MaskedSFTConfig.__dataclass_fields__[name].default, SFTConfig.__dataclass_fields__[name].default
        if plain(getattr(args, name)) == plain(ours) and plain(ours) != plain(theirs):
            kept.append((name, plain(ours), plain(theirs)))
    return tuple(kept)


def trainer_config(model, args) -> MaskedSFTConfig | SFTConfig:
    """The trainer's own copy of the config (the user's object is never changed), as TRL builds it."""
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return MaskedSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1] or 'model'}-SFT")
    if isinstance(args, TrainingArguments) and not isinstance(args, SFTConfig):
        # As TRL does (it converts to SFTConfig): the fields TrainingArguments lacks take SFTConfig's defaults
        # (e.g. max_length 1024), not the homework's.
        dict_args = args.to_dict()
        dict_args["hub_token"] = args.hub_token
        sft_only = set(SFTConfig.__dataclass_fields__) - set(TrainingArguments.__dataclass_fields__)
        defaults = {name: SFTConfig.__dataclass_fields__[name].default for name in sft_only}
        defaults = {k: v for k, v in defaults.items() if v is not dataclasses.MISSING}
        return MaskedSFTConfig(**{**defaults, **dict_args})
    return copy.copy(args)
