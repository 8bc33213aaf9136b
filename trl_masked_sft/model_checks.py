"""Checks that the model can learn, run before step 1 and after the first backward pass.

- `check_model_before_training` (at `train()`): some parameter trains; a PeftModel's active adapter is not frozen
  (an adapter loaded with `PeftModel.from_pretrained(...)`, whose `is_trainable` defaults to False); with activation
  checkpointing and frozen input embeddings, the embedding output requires grad (fixed with
  `enable_input_require_grads()`, and said so).
- `check_token_ids` (at `train()`): the dataset's token ids, its labels and the pad token fit the model's embeddings
  (a tokenizer that gained tokens without `resize_token_embeddings` otherwise fails deep inside torch).
- `check_processing_class` (at construction): a tokenizer can be found, and it has an eos token to end completions.
- `check_gradients_reached` (after the first backward pass, before the optimizer step): every trainable parameter
  received a gradient.
- `check_prompt_learning` (at `train()`): a prefix-tuning adapter is not set up with activation checkpointing.
- `first_label_is_target`: whether the model trains a row's first label (prompt tuning, p-tuning), which the batch
  check and the health guard count.

Each failure raises `ModelSetupError` naming the parameters and the fix; a partial problem warns (`MaskedSFTWarning`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from transformers import PreTrainedTokenizerBase

from .errors import ModelSetupError
from .hf_compat import active_peft_config, checkpointing_on
from .logs import get_logger, warn

__all__ = [
    "ensure_pad_token",
    "check_peft_setup",
    "check_prompt_learning",
    "adapter_parameters",
    "check_gradients_reached",
    "check_model_before_training",
    "check_processing_class",
    "check_token_ids",
    "first_label_is_target",
    "quiet_peft_checkpointing_probe",
]

logger = get_logger(__name__)


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def adapter_parameters(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """`(name, parameter)` of the active adapters' weights of a PeftModel (LoRA A/B, IA3 vectors, ...)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover
        return
    active = set(getattr(model, "active_adapters", None) or [])
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for layer_name in module.adapter_layer_names:
            holder = getattr(module, layer_name, None)
            if not isinstance(holder, (torch.nn.ModuleDict, torch.nn.ParameterDict)):
                continue
            for adapter, sub in holder.items():
                if active and adapter not in active:
                    continue
                params = [(layer_name, sub)] if isinstance(sub, torch.nn.Parameter) else sub.named_parameters()
                for param_name, param in params:
                    if id(param) not in seen:
                        seen.add(id(param))
                        yield f"{module_name}.{layer_name}.{adapter}.{param_name}".replace("..", "."), param


def _check_something_trains(model) -> None:
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    if trainable:
        return
    if _is_peft_model(model):
        frozen = [name for name, config in (model.peft_config or {}).items() if getattr(config, "inference_mode", 0)]
        how = (
            f"adapter {', '.join(repr(n) for n in frozen)} is in inference mode, which is what "
            "`PeftModel.from_pretrained(model, path)` gives (`is_trainable` defaults to False)"
            if frozen
            else "its adapter weights have `requires_grad=False`"
        )
        raise ModelSetupError(
            f"The PeftModel has no trainable parameter (0 of {total:,} require grad): {how}, so training would "
            "change nothing. Fix: load the adapter with `PeftModel.from_pretrained(model, path, is_trainable=True)` "
            "to keep training it, or pass the base model with `peft_config=` to train a new adapter."
        )
    raise ModelSetupError(
        f"The model has no trainable parameter (0 of {total:,} require grad), so training would change nothing. "
        "Fix: unfreeze what you mean to train (`param.requires_grad_(True)`), or pass `peft_config=` (e.g. "
        "`homework_lora_config()`) to train a LoRA adapter."
    )


def _check_adapters_trainable(model) -> None:
    if not _is_peft_model(model):
        return
    adapter = list(adapter_parameters(model))
    if not adapter:
        return  # prompt learning and other adapters without tuner layers: `_check_something_trains` covers them
    frozen = [name for name, param in adapter if not param.requires_grad]
    if len(frozen) == len(adapter):
        others = [name for name, param in model.named_parameters() if param.requires_grad]
        raise ModelSetupError(
            f"The active adapter of the PeftModel ({', '.join(repr(a) for a in model.active_adapters)}) is frozen: "
            f"0 of its {len(adapter)} weight tensors require grad, while {len(others)} other tensors train (e.g. "
            f"{_names(others, 3)}); the run would leave the adapter unchanged. Fix: load it with "
            "`PeftModel.from_pretrained(model, path, is_trainable=True)`, or unfreeze it with "
            "`for n, p in model.named_parameters(): p.requires_grad_('lora_' in n)`."
        )
    if frozen:
        warn(
            f"{len(frozen)} of the {len(adapter)} adapter weight tensors are frozen and will not train: "
            f"{_names(frozen)}. Fix: `param.requires_grad_(True)` on them, or ignore this if it is intended.",
            stacklevel=3,
        )


@contextlib.contextmanager
def quiet_peft_checkpointing_probe() -> Iterator[None]:
    """Silence the one `FutureWarning` that wrapping a model in PEFT triggers on every run, and nothing else.

    peft 0.21 (`PeftModel.__init__`) reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecated in
    favour of `is_activation_checkpointing`; `SFTTrainer.__init__` wraps the model when given a `peft_config`. We
    can't avoid the read, so we filter exactly that message around the wrapping. Remove once peft reads
    `is_activation_checkpointing` (or transformers v6 drops the old property).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _checkpointing_on(model, args) -> bool:
    if checkpointing_on(args):
        return True
    base = model.get_base_model() if _is_peft_model(model) else model
    # transformers 5.x names the model's flag `is_activation_checkpointing`; 4.x `is_gradient_checkpointing` (which
    # 5.x deprecates, so it is read only where the new one is missing).
    if hasattr(base, "is_activation_checkpointing"):
        return bool(base.is_activation_checkpointing)
    return bool(getattr(base, "is_gradient_checkpointing", False))


def _ensure_input_grads(model, args) -> None:
    """With checkpointing and frozen embeddings, reentrant checkpointing passes no gradient into the blocks."""
    if not _checkpointing_on(model, args) or not hasattr(model, "get_input_embeddings"):
        return
    try:
        embeddings = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return
    weight = getattr(embeddings, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.requires_grad or weight.numel() == 0:
        return  # trainable embeddings carry the gradient; an empty weight is sharded (DeepSpeed ZeRO-3): skip
    try:
        with torch.enable_grad():
            probe = embeddings(torch.zeros(1, 1, dtype=torch.long, device=weight.device))
    except Exception:  # an embedding that can't run outside the model: nothing to check
        return
    if probe.requires_grad or not hasattr(model, "enable_input_require_grads"):
        return
    model.enable_input_require_grads()
    logger.warning(
        "Activation checkpointing is on and the input embeddings are frozen, so their output did not require grad: "
        "with reentrant checkpointing no gradient would reach the layers inside the checkpointed blocks (LoRA "
        "adapters included) and the run would train nothing. Called `model.enable_input_require_grads()` to fix "
        "it; call it yourself before building the trainer to silence this message."
    )


def check_model_before_training(model, args=None, train_dataset=None, tokenizer=None) -> None:
    """Raise `ModelSetupError` when nothing would train; fix missing input grads under checkpointing (said in the log).

    Rejects: a model with no trainable parameter (e.g. a LoRA adapter loaded with `is_trainable=False`); a PeftModel
    whose active adapter is frozen while other weights train; token ids the embeddings don't have (`check_token_ids`).
    Warns when only some adapter tensors are frozen.
    """
    _check_something_trains(model)
    _check_adapters_trainable(model)
    check_token_ids(model, train_dataset, tokenizer)
    _ensure_input_grads(model, args)


def _rows(module) -> int | None:
    for name in ("num_embeddings", "out_features"):
        if isinstance(getattr(module, name, None), int):
            return getattr(module, name)
    return None


def check_token_ids(model, dataset=None, tokenizer=None, dataset_name: str = "train") -> None:
    """Raise `ModelSetupError` when the pad token, an input id or a label is beyond the model's vocabulary.

    One Arrow reduction per column; the offending row is looked up only on failure.
    """
    try:
        vocab_in = _rows(model.get_input_embeddings())
        vocab_out = _rows(model.get_output_embeddings()) or vocab_in
    except (AttributeError, NotImplementedError):
        return
    if vocab_in is None:
        return
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    size = (
        f"the tokenizer has {len(tokenizer)} tokens, so "
        if tokenizer is not None and hasattr(tokenizer, "__len__")
        else ""
    )
    resize = (
        "Fix: `model.resize_token_embeddings(len(tokenizer))` before building the trainer if tokens were added to the "
        "tokenizer, or tokenize with the model's own tokenizer"
    )
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int) and pad >= vocab_in:
        raise ModelSetupError(
            f"The tokenizer's pad token id {pad} ({tokenizer.pad_token!r}) is beyond the model's input embeddings, "
            f"which have {vocab_in} rows (ids 0-{vocab_in - 1}): {size}tokens were added to it and the model was not "
            f"resized. {resize} (or use a pad token the model knows, e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
        )
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        return
    import pyarrow.compute as pc

    for column, limit, what in (
        ("input_ids", vocab_in, "input embeddings have"),
        ("labels", vocab_out, "output layer has"),
    ):
        if column not in dataset.column_names:
            continue
        try:
            top = pc.max(pc.list_flatten(dataset.data.column(column))).as_py()
        except Exception:  # not a flat list of ints: the data checks report that
            continue
        if top is None or top < limit:
            continue
        for index, row in enumerate(dataset[column]):
            bad = next((v for v in row if v >= limit), None)
            if bad is not None:
                raise ModelSetupError(
                    f"Row {index} of the {dataset_name} dataset has token id {bad} in `{column}`, but the model's "
                    f"{what} {limit} rows (ids 0-{limit - 1}). {resize}."
                )


def check_processing_class(model, processing_class, train_dataset=None) -> None:
    """At construction: a tokenizer is given (or can be loaded), and it has an eos token to end completions with."""
    if processing_class is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") if not isinstance(model, str) else model
        if not name:
            raise ModelSetupError(
                "`processing_class` is None and the model has no `name_or_path` to load a tokenizer from (it was "
                "built from a config). Fix: pass `processing_class=tokenizer`."
            )
        return
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    columns = getattr(train_dataset, "column_names", None) or []
    if getattr(tokenizer, "eos_token", "") is None and "messages" not in columns:
        raise ModelSetupError(
            "The tokenizer has no eos token: TRL appends it to every completion, and it is what teaches the model to "
            "stop. Fix: set `tokenizer.eos_token` to the model's end token (e.g. '</s>' or '<|endoftext|>'; if it is a "
            "new token, also `model.resize_token_embeddings(len(tokenizer))`)."
        )


def check_gradients_reached(model) -> None:
    """After the first backward pass: raise when no trainable parameter got a gradient, warn when some did not.

    A parameter "received no gradient" when its `.grad` is None (a zero gradient counts as received: LoRA's A matrix
    gets exactly zero at step 1 because B starts at zero). Not meaningful under DeepSpeed or FSDP, which hold the
    gradients elsewhere; the caller skips it there.
    """
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        return
    missing = [name for name, param in trainable if param.grad is None]
    if not missing:
        return
    if len(missing) == len(trainable):
        raise ModelSetupError(
            f"No trainable parameter received a gradient in the first step (0 of {len(trainable)} tensors, e.g. "
            f"{_names(missing, 3)}): the loss does not depend on them, so training would change nothing. Likely "
            "causes: activation checkpointing (reentrant) with frozen input embeddings and no input grads, a forward "
            "pass run under `torch.no_grad()`, or adapters on modules the loss never uses. Fix: call "
            "`model.enable_input_require_grads()` before training (or use `activation_checkpointing_kwargs="
            "{'use_reentrant': False}`), and check `target_modules`."
        )
    warn(
        f"{len(missing)} of {len(trainable)} trainable tensors received no gradient in the first step and will "
        f"never train: {_names(missing)}. Likely: activation checkpointing (reentrant) with frozen input embeddings "
        "(fix: `model.enable_input_require_grads()` before training), or adapters or unfrozen weights on modules "
        "the forward pass does not use (check `target_modules` / which weights you unfroze).",
        stacklevel=2,
    )


def check_peft_setup(args, model, peft_config) -> None:
    """`label_names` for PEFT models (never overriding the user's), and a warning when `task_type` is missing."""
    if args.label_names is None:
        args.label_names = ["labels"]
    if peft_config is not None:
        task_type = getattr(peft_config, "task_type", None)
    else:
        task_type = next((c.task_type for c in (getattr(model, "peft_config", {}) or {}).values()), None)
    if task_type is None:
        warn(
            "The PEFT config has no `task_type`, so PEFT builds a generic PeftModel instead of "
            "PeftModelForCausalLM and the labels may not reach the loss the way a causal LM expects. Fix: "
            "set `task_type='CAUSAL_LM'` in your LoraConfig (homework_lora_config() does).",
            stacklevel=3,
        )


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its eos token (said in the log); refuse one that has neither."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ModelSetupError(
            "The tokenizer has neither a pad token nor an eos token. Fix: set one before building the trainer, e.g. "
            "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` (and resize the model's embeddings)."
        )
    tokenizer.pad_token = tokenizer.eos_token
    logger.warning(
        f"The tokenizer had no pad token; set `pad_token` to the eos token {tokenizer.eos_token!r}. The eos token "
        "that ends each completion stays supervised: padding is found by length, not by id."
    )


def first_label_is_target(model) -> bool:
    """Whether `model` trains the first label of each row.

    A causal LM predicts token `i` from the tokens before it, so label 0 is never a target; but prompt tuning and
    p-tuning (PEFT prompt learning) prepend virtual tokens to each row, with `ignore_index` labels, so the row's label
    0 is then predicted from the last virtual token and trained. Prefix tuning gives its virtual tokens as a
    key/value prefix and adds no position: label 0 stays untrained. Wrappers with a `.module` (DDP) are looked
    through.
    """
    config = active_peft_config(model)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return False
    return str(getattr(config, "peft_type", "")).split(".")[-1] != "PREFIX_TUNING"


def check_prompt_learning(model, *, activation_checkpointing: bool) -> None:
    """Raise `ModelSetupError` when a prompt-learning adapter can't train as set up: prefix tuning under activation
    checkpointing.

    Prefix tuning hands its virtual tokens to every layer as a key/value cache; activation checkpointing turns the
    cache off, so the attention mask keeps the virtual positions while the keys lose them and the first forward pass
    fails with a raw shape error (PEFT 0.21, transformers 5.24; huggingface/peft#869, the check proposed upstream in
    huggingface/peft#2191 is not merged: drop this one once PEFT raises its own error).
    """
    config = active_peft_config(model)
    if not activation_checkpointing or config is None:
        return
    if str(getattr(config, "peft_type", "")).split(".")[-1] == "PREFIX_TUNING":
        raise ModelSetupError(
            f"Prefix tuning (`PrefixTuningConfig`, {config.num_virtual_tokens} virtual tokens) can't train with "
            "`activation_checkpointing=True`: checkpointing turns off the key/value cache that carries the virtual "
            "tokens, and the forward pass fails on mismatched shapes. Fix: set `activation_checkpointing=False` (or "
            "the deprecated `gradient_checkpointing=False`), or use prompt tuning, p-tuning or LoRA, which do work "
            "with checkpointing."
        )
