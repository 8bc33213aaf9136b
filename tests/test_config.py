"""MaskedSFTConfig: the homework defaults, CPU construction, the new fields and their documentation."""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import pytest
from transformers import HfArgumentParser

from trl_masked_sft import MaskedSFTConfig, homework_lora_config
from trl_masked_sft.precision import has_accelerator

NEW_FIELDS = (
    "masked_row_policy",
    "max_masked_row_fraction",
    "prompt_column",
    "completion_column",
    "response_template",
    "instruction_template",
    "assistant_turns",
    "train_on_eot",
    "train_roles",
    "message_train_key",
    "message_weight_key",
    "reasoning",
    "tool_calls",
    "min_completion_tokens",
    "health_checks",
    "pack_within_batch",
    "score_supervised_only",
)


def test_defaults_mirror_the_homework(tmp_path):
    """The defaults are the homework's training settings."""
    config = MaskedSFTConfig(output_dir=str(tmp_path))
    assert config.learning_rate == 2e-4
    assert config.num_train_epochs == 3
    assert config.per_device_train_batch_size == 32
    # the homework's activation checkpointing where an accelerator is present; on a CPU it only costs time
    assert config.activation_checkpointing is has_accelerator()
    assert config.gradient_checkpointing is has_accelerator()  # the old name mirrors the new one
    assert config.save_strategy == "epoch"
    assert config.save_total_limit == 1
    assert config.logging_steps == 10
    assert config.report_to == ["tensorboard"]
    assert config.label_names == ["labels"]
    assert config.max_length == 128
    assert config.completion_only_loss is True
    assert config.masked_row_policy == "error"


def test_constructs_on_cpu_without_any_warning(tmp_path):
    """On a CPU-only machine the defaults construct, bf16 stays off, and nothing is deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = MaskedSFTConfig(output_dir=str(tmp_path))
    assert config.bf16 is False


def test_explicit_bf16_choice_is_kept(tmp_path):
    """`bf16` is resolved by hardware only when the user left it unset."""
    config = MaskedSFTConfig(output_dir=str(tmp_path), bf16=False, fp16=False)
    assert config.bf16 is False


def test_label_names_default_is_not_shared_between_instances(tmp_path):
    """Each config gets its own `label_names` list."""
    first, second = MaskedSFTConfig(output_dir=str(tmp_path)), MaskedSFTConfig(output_dir=str(tmp_path))
    first.label_names.append("other")
    assert second.label_names == ["labels"]


def _docstring_entry(name: str) -> str:
    doc = inspect.getdoc(MaskedSFTConfig)
    match = re.search(rf"^    {name} \(.*?\):\n(.*?)(?=^    \w+ \(|\Z)", doc, re.S | re.M)
    assert match, f"{name} is not documented in the class docstring"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize("name", NEW_FIELDS)
def test_new_fields_are_documented_identically_in_docstring_and_help(name):
    """Each new field's help says exactly what the class docstring says."""
    help_text = dataclasses.fields(MaskedSFTConfig)[
        [f.name for f in dataclasses.fields(MaskedSFTConfig)].index(name)
    ].metadata["help"]
    # argparse needs `%` written as `%%` in help strings
    assert " ".join(help_text.replace("%%", "%").split()) == _docstring_entry(name)


def test_argument_parser_accepts_the_new_fields(tmp_path):
    """The config works with HfArgumentParser, as `trl sft`-style scripts use it."""
    (config,) = HfArgumentParser(MaskedSFTConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--masked_row_policy", "drop", "--prompt_column", "question"]
    )
    assert config.masked_row_policy == "drop" and config.prompt_column == "question"


@pytest.mark.parametrize(("given", "expected"), [("False", False), ("True", True), ("last", "last"), ("all", "all")])
def test_argument_parser_reads_train_on_eot_as_a_bool_or_a_mode(tmp_path, given, expected):
    """`--train_on_eot False` is the bool, `--train_on_eot last` the mode; `--train_roles` takes several roles."""
    (config,) = HfArgumentParser(MaskedSFTConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--train_on_eot", given, "--train_roles", "assistant", "tool"]
    )
    assert config.train_on_eot == expected and config.train_roles == ["assistant", "tool"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"masked_row_policy": "ignore"}, r"`masked_row_policy` must be .*got 'ignore'"),
        ({"max_masked_row_fraction": 1.5}, r"`max_masked_row_fraction` must be .*got 1.5"),
        ({"max_masked_row_fraction": -0.1}, r"`max_masked_row_fraction` must be .*got -0.1"),
        ({"prompt_column": ""}, r"`prompt_column` must be a non-empty column name"),
        ({"prompt_column": "q", "completion_column": "q"}, r"both 'q'"),
        ({"max_length": 1}, r"`max_length` must be at least 2"),
    ],
)
def test_bad_config_values_raise_naming_the_field(tmp_path, overrides, match):
    """Every bad value of a new field raises a ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=match):
        MaskedSFTConfig(output_dir=str(tmp_path), **overrides)


def test_homework_lora_config_matches_the_homework():
    """The LoRA helper returns r 8, alpha 32, all linear layers, no bias, causal LM; overrides win."""
    config = homework_lora_config()
    assert (config.r, config.lora_alpha, config.target_modules, config.bias) == (8, 32, "all-linear", "none")
    assert str(config.task_type.value if hasattr(config.task_type, "value") else config.task_type) == "CAUSAL_LM"
    assert homework_lora_config(r=16).r == 16
