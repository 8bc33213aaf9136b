"""Type aliases of the public API: what `MaskedSFTTrainer`, `audit_dataset`, `inspect_rows`, `chat_labels` and
`PreparationPipeline` accept. The library classes are forward references, so importing this module loads none of
them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, IterableDataset
    from peft import PeftConfig, PeftModel
    from transformers import (
        BitsAndBytesConfig,
        EvalPrediction,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        TrainerCallback,
        TrainingArguments,
    )

__all__ = [
    "Callbacks",
    "Collator",
    "Config",
    "EvalRows",
    "FormattingFunc",
    "LogitsFunc",
    "LossFunc",
    "MetricsFunc",
    "Model",
    "OptimizerClsAndKwargs",
    "Optimizers",
    "Peft",
    "Quantization",
    "Rows",
    "Tokenizer",
]

#: A model, or its Hub name or folder (loaded as TRL loads it).
Model = Union[str, "PreTrainedModel", "PeftModel"]
#: Rows: a `datasets` dataset, a list of dict rows, or a list of `[question, answer]` pairs.
Rows = Union["Dataset", "IterableDataset", Sequence[Any]]
#: Evaluation rows: as `Rows`, or several named sets of them.
EvalRows = Rows | dict[str, Rows]
#: The tokenizer (or a processor holding one).
Tokenizer = Union["PreTrainedTokenizerBase", "ProcessorMixin"]
#: A `MaskedSFTConfig`, a `trl.SFTConfig` or plain `TrainingArguments`; `None` takes the defaults.
Config = Union["TrainingArguments", None]
#: A data collator: a list of prepared rows in, a batch out.
Collator = Callable[[list[Any]], dict[str, Any]]
#: A row (or, batched, a dict of lists) in, its text (or texts) out.
FormattingFunc = Callable[[dict[str, Any]], str | list[str]]
#: A PEFT config (e.g. a `LoraConfig`) to wrap the model with.
Peft = Union["PeftConfig", None]
#: The rest of `Trainer`'s constructor, as transformers and TRL type it.
LossFunc = Callable[..., Any]
MetricsFunc = Callable[["EvalPrediction"], dict]
Callbacks = list["TrainerCallback"]
Optimizers = tuple[Union["torch.optim.Optimizer", None], Union["torch.optim.lr_scheduler.LambdaLR", None]]
OptimizerClsAndKwargs = tuple[type["torch.optim.Optimizer"], dict[str, Any]]
LogitsFunc = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
Quantization = Union["BitsAndBytesConfig", None]
