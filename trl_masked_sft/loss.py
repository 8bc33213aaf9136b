"""`SupervisedLoss`: the training loss scored on the supervised positions only, on devices where TRL scores them all.

TRL 1.16 computes `SFTTrainer`'s loss through a fused LM head (`trl.trainer.utils.add_fused_lm_head`). On CUDA/XPU
with Triton it projects only the positions whose next-token label is supervised; on every other device, CPU included,
it projects every position and zeroes the prompt's afterwards. On completion-only data that is most of the head's
work and memory. Here the model itself projects only the supervised positions: transformers 5.x causal LMs take a
boolean `(batch, seq_len)` `logits_to_keep` and return the logits of its true positions only, flattened, with the
model's own logit scaling and soft-capping. Transformers 4.x models take only an int or one row of positions, so there
a pre-hook on the LM head module hands it the same boolean selection of the hidden states (the model's scaling and
soft-capping still follow); the one-time probe checks either way against the full forward. The loss, `entropy`, `mean_token_accuracy` and `num_tokens` are then
computed as TRL computes them (same normalisation by `num_items_in_batch`, same metric definitions).

Where it can't apply exactly — another device, a `compute_loss_func`, label smoothing, an MoE auxiliary loss,
prompt-learning PEFT (virtual tokens shift the positions), DeepSpeed/FSDP, sequence parallelism, `torch_compile`,
a model whose forward can't keep a boolean selection of logits, logits wanted by the caller — `__call__` returns
`None` and the trainer takes TRL's path; the reason is logged once.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .hf_compat import MASK_LOGITS_TO_KEEP
from .logs import get_logger
from .masking import IGNORE_INDEX

__all__ = [
    "MAX_LOGITS",
    "SupervisedLoss",
    "check_weighted_loss",
    "count_packed_tokens",
    "kept_logits",
    "supervised_logits_are_exact",
]

logger = get_logger(__name__)

#: Above this many logits (positions × vocabulary) in one batch, TRL's chunked head takes the batch: it never holds
#: more than a `4096 × 32768` tile, and a batch this full of supervised positions gains little from skipping prompts.
MAX_LOGITS = 2**27
_ENTROPY_CHUNK = 2**24  # log-probabilities per block when computing the entropy (bounds its temporaries)


def kept_logits(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """`model(**inputs)`'s logits of the true positions of the boolean `(batch, seq_len)` `keep`, `(num_kept, vocab)`:
    through `logits_to_keep=keep` on transformers 5.x, through a pre-hook on the LM head module on 4.x."""
    if MASK_LOGITS_TO_KEEP:
        return model(**inputs, logits_to_keep=keep).logits
    with _head_sees_only(model, keep):
        return model(**inputs).logits


@contextmanager
def _head_sees_only(model, keep: torch.Tensor) -> Iterator[None]:
    """While open, the LM head module projects only `hidden_states[keep]` of a `(batch, seq_len, hidden)` input;
    any other input (a model that slices before its head) passes unchanged, and the probe then finds the mismatch."""
    head = _unwrapped(model).get_output_embeddings()

    def select(module, args):
        hidden = args[0]
        if hidden.dim() == 3 and hidden.shape[:2] == keep.shape:
            return (hidden[keep], *args[1:])
        return None

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def _unwrapped(model):
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DDP
    return model


def supervised_logits_are_exact(model, *, tolerance: float = 1e-4) -> bool:
    """Whether `kept_logits(model, mask)` with a boolean `(batch, seq_len)` mask returns the logits of the mask's
    true positions, flattened in row order, as the full forward gives them.

    Runs the model (eval mode, no gradients) on two deterministic rows of six tokens. `tolerance` is relative to the
    largest logit. Any error counts as a failure.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    parameter = next(model.parameters(), None)
    if not vocab or parameter is None:
        return False
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (2, 6), generator=generator).to(parameter.device)
    keep = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=input_ids, use_cache=False).logits.float()
            kept = kept_logits(model, keep, input_ids=input_ids, use_cache=False).float()
    except Exception:  # a model that can't keep a boolean selection trains on TRL's path
        return False
    finally:
        model.train(was_training)
    reference = full[keep]
    if kept.shape != reference.shape:
        return False
    scale = float(reference.abs().max()) or 1.0
    return torch.allclose(kept, reference, rtol=0, atol=tolerance * scale)


class SupervisedLoss:
    """`SFTTrainer.compute_loss` for the common case, projecting only the supervised positions through the LM head.

    Built once per trainer; `__call__(model, inputs, return_outputs, num_items_in_batch)` returns the loss and logs
    TRL's metrics, or returns `None` (nothing computed, nothing logged) when TRL's own path must take the batch.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self._blocker: str | None = None
        self._decided = False
        self._said: set[str] = set()

    def blocker(self, model) -> str | None:
        """Why this trainer's batches can't be scored here (decided once, the first time it is asked), or `None`."""
        if not self._decided:
            self._blocker, self._decided = self._find_blocker(model), True
            if self._blocker is None:
                logger.info(
                    "`score_supervised_only`: only the supervised positions are projected through the LM head."
                )
            else:
                logger.info(f"`score_supervised_only`: the loss takes TRL's path: {self._blocker}.")
        return self._blocker

    def _find_blocker(self, model) -> str | None:
        trainer = self.trainer
        args = trainer.args
        if not getattr(args, "score_supervised_only", True):
            return "`score_supervised_only=False`"
        device = next(trainer.model.parameters()).device
        if device.type != "cpu":
            if device.type in ("cuda", "xpu"):
                return f"on {device.type} TRL's fused head already projects only the supervised positions"
            return f"on {device.type} TRL projects every position (a changing shape would recompile there)"
        if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
            return "a `compute_loss_func` or `label_smoothing_factor` needs the full logits"
        if getattr(args, "loss_type", "nll") not in ("nll", "dft") or getattr(trainer, "aux_loss_enabled", False):
            return "the loss type or the MoE auxiliary loss is computed by TRL's path only"
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            return "DeepSpeed/FSDP shard the LM head"
        parallelism = getattr(trainer.accelerator, "parallelism_config", None)
        if getattr(parallelism, "sp_enabled", False) or getattr(parallelism, "cp_enabled", False):
            return "sequence or context parallelism shifts the labels itself"
        if getattr(args, "torch_compile", False):
            return "`torch_compile`: a number of positions that changes every batch would recompile"
        if getattr(trainer, "_is_vision_dataset", False):
            return "vision-language batches"
        unwrapped = trainer.model
        if getattr(getattr(unwrapped, "active_peft_config", None), "is_prompt_learning", False):
            return "prompt-learning PEFT adds virtual tokens in front of every row"
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        if MASK_LOGITS_TO_KEEP and "logits_to_keep" not in inspect.signature(type(base).forward).parameters:
            return f"{type(base).__name__}.forward takes no `logits_to_keep`"
        if base.get_output_embeddings() is None or not supervised_logits_are_exact(unwrapped):
            if MASK_LOGITS_TO_KEEP:
                return f"{type(base).__name__} does not return the logits of a boolean `logits_to_keep` selection"
            return f"{type(base).__name__} does not give the logits of its LM head's selected positions"
        return None

    def _say_once(self, reason: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            logger.info(f"`score_supervised_only`: a batch takes TRL's path: {reason}.")

    def __call__(
        self, model, inputs, return_outputs: bool = False, num_items_in_batch=None, weights: torch.Tensor | None = None
    ) -> Any:
        """The loss (and, with `return_outputs`, the model's outputs); `None` when TRL's path must take the batch.
        `weights` (the batch's `WEIGHTS`, laid out as `labels`) makes it `Σ w·CE / Σ w`, `num_items_in_batch` being
        then the step's `Σ w`; a weighted batch is always scored here, with the full logits where the supervised
        selection can't apply."""
        labels = inputs.get("labels")
        if weights is not None:
            check_weighted_loss(self.trainer)
        elif return_outputs or labels is None or "shift_labels" in inputs or self.blocker(model) is not None:
            return None
        trainer = self.trainer
        keep = torch.zeros_like(labels, dtype=torch.bool)
        label_mask = labels[:, 1:] != IGNORE_INDEX
        keep[:, :-1] = label_mask
        vocab = trainer.model.get_output_embeddings().weight.shape[0]
        num_kept = int(keep.sum())  # CPU only: no device sync
        full = weights is not None and (return_outputs or self.blocker(model) is not None)
        if num_kept * vocab > MAX_LOGITS and not full:
            if weights is None:
                self._say_once(f"more than {MAX_LOGITS:,} supervised logits in one batch")
                return None
            full = True

        mode = "train" if trainer.model.training else "eval"
        inputs["use_cache"] = False
        forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward_inputs) if full else None
        # (num_kept, vocab): the supervised positions only, unless the whole batch's logits are needed
        logits = outputs.logits[:, :-1][label_mask] if full else kept_logits(model, keep, **forward_inputs)
        targets = labels[:, 1:][label_mask]
        # `cross_entropy`'s own steps (log-softmax in float32, then the target's entry), kept so that the entropy
        # below reads the same log-probabilities instead of three more passes over the logits
        all_log_probs = logits.float().log_softmax(dim=-1)
        log_probs = all_log_probs.gather(1, targets[:, None]).squeeze(1)
        per_token_loss = -log_probs
        if trainer.args.loss_type == "dft":  # DFT, as TRL weighs it: each token's loss times its detached probability
            per_token_loss = per_token_loss * log_probs.exp().detach()
        if weights is None:
            num_tokens = label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        else:  # Σ w·CE / Σ w; a batch (or step) with no weight left gives a finite zero
            token_weights = weights[:, 1:][label_mask].to(per_token_loss.dtype)
            total = torch.as_tensor(token_weights.sum() if num_items_in_batch is None else num_items_in_batch)
            loss = (per_token_loss * token_weights).sum() / torch.where(total > 0, total, torch.ones_like(total))
        if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())

        with torch.no_grad():
            entropy = _entropy(all_log_probs.detach())
            correct = (logits.argmax(dim=-1) == targets).sum() if logits.size(0) else targets.new_zeros(())
        self._log(mode, inputs, label_mask.sum(), entropy, correct)
        return (loss, outputs) if return_outputs else loss

    def _log(self, mode: str, inputs, num_valid_local, entropy_sum, num_correct) -> None:
        """`entropy`, `mean_token_accuracy` and `num_tokens`, gathered and averaged as TRL logs them."""
        trainer = self.trainer
        gather = trainer.accelerator.gather_for_metrics
        num_valid = gather(num_valid_local).sum()
        entropy_sum, num_correct = gather(entropy_sum).sum(), gather(num_correct).sum()
        metrics = trainer._metrics[mode]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            elif "position_ids" in inputs:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
            trainer._total_train_tokens += gather(local).sum().item() // trainer._tp_size
        metrics["num_tokens"] = [trainer._total_train_tokens]


def check_weighted_loss(trainer: Any) -> None:
    """Raise where per-message weights can't be honoured: a loss other than the (weighted) token cross-entropy."""
    args = trainer.args
    why = (
        "a `compute_loss_func`"
        if trainer.compute_loss_func is not None
        else "`label_smoothing_factor`"
        if trainer.label_smoother is not None
        else f"`loss_type={args.loss_type!r}`"
        if getattr(args, "loss_type", "nll") not in ("nll", "dft")
        else "an MoE auxiliary loss"
        if getattr(trainer, "aux_loss_enabled", False)
        else None
    )
    if why is not None:
        raise ValueError(
            f"The train data has per-message weights (`message_weight_key`), which the loss can't apply with {why}. "
            "Fix: remove that setting, or drop the weights from the messages."
        )


def count_packed_tokens(trainer: Any, inputs, packed_tokens: int) -> None:
    """Correct the logged `num_tokens` after a packed training batch (`pack_within_batch`), on either loss path.

    TRL 1.16 counts `position_ids.size(1)` tokens for a batch without `attention_mask` (its padding-free batches are
    one row); a packed batch has several rows and padding, so its real tokens are counted instead.
    """
    if not isinstance(getattr(trainer, "_total_train_tokens", None), int):
        return
    extra = int(packed_tokens) - inputs["position_ids"].size(1)  # Python ints: no host sync
    if trainer.accelerator.num_processes > 1:
        device = inputs["position_ids"].device
        extra = int(trainer.accelerator.gather_for_metrics(torch.tensor([extra], device=device)).sum())
    trainer._total_train_tokens += extra // getattr(trainer, "_tp_size", 1)
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """The summed entropy `-Σ p·log p` of each row's distribution, from its float32 log-probabilities (TRL writes it
    `logsumexp - Σ softmax·logits`, the same quantity; this form sums non-negative terms, with no cancellation)."""
    entropy = log_probs.new_zeros((), dtype=torch.float32)
    rows = max(1, _ENTROPY_CHUNK // max(1, log_probs.size(-1)))
    for start in range(0, log_probs.size(0), rows):
        block = log_probs[start : start + rows]
        entropy -= (block.exp() * block).sum()
    return entropy
