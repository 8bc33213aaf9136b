"""Where one training step's time goes (`run.py --real --profile`): timers around the parts of a step.

`StepProfile.attach(trainer)` times, from the second step on (the first is the warm-up):

- `data`: fetching and collating the batch (`Trainer.get_batch_samples`);
- `embedding`, `attention`, `MLP`: the forward time of the input embedding and of every layer's `self_attn` and `mlp`
  module (LoRA adapters included, as they sit inside them), from forward hooks;
- `other forward`: the rest of the model's forward (norms, rotary embeddings, residual adds);
- `LM head + loss`: the output projection's forward and the loss on its logits (`MaskedSFTTrainer`'s
  `score_supervised_only` loss around the model call);
- `checks and metrics`: what `MaskedSFTTrainer.compute_loss` does around the loss (`validate_batch`, mask metrics);
- `backward`: `accelerator.backward` (every module's backward; checkpointed layers recompute their forward here);
- `optimizer`: gradient clipping (the accelerator's `clip_grad_norm_`) and `optimizer.step()`;
- `rest`: the step's wall time less all of the above (logging, scheduler, callbacks, zeroing gradients).

On a CPU every operation is synchronous, so wall-clock timers around a call measure its work. Forward hooks that fire
during the backward pass (checkpointed recomputation) are counted in `backward`, not twice.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from transformers import TrainerCallback

PARTS = (
    "data",
    "embedding",
    "attention",
    "MLP",
    "other forward",
    "LM head + loss",
    "checks and metrics",
    "backward",
    "optimizer",
    "rest",
)


class StepProfile(TrainerCallback):
    """Seconds spent in each part of the timed steps (see the module docstring), summed over the steps."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps: list[float] = []
        self._in_backward = False
        self._starts: dict[int, float] = {}
        self._last = 0.0
        self._warm = False

    # ------------------------------------------------------------------ wiring

    def attach(self, trainer) -> StepProfile:
        model = trainer.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._hook(base.get_input_embeddings(), "embedding")
        self._hook(base.get_output_embeddings(), "head")
        for name, module in base.named_modules():
            if name.endswith(".self_attn"):
                self._hook(module, "attention")
            elif name.endswith(".mlp"):
                self._hook(module, "MLP")
        self._hook(model, "model forward")
        trainer.get_batch_samples = self._timed(trainer.get_batch_samples, "data")
        trainer.compute_loss = self._timed(trainer.compute_loss, "compute_loss")
        if hasattr(trainer, "_msft_loss"):
            trainer._msft_loss = self._timed(trainer._msft_loss, "supervised loss")
        backward = trainer.accelerator.backward

        def timed_backward(*args, **kwargs):
            self._in_backward = True
            try:
                return self._timed(backward, "backward")(*args, **kwargs)
            finally:
                self._in_backward = False

        trainer.accelerator.backward = timed_backward
        # Gradient clipping: transformers 5.x calls it through `Trainer._clip_grad_norm`, 4.x inline; both through
        # the accelerator's `clip_grad_norm_`, before `on_pre_optimizer_step` (so never counted twice).
        accelerator = trainer.accelerator
        accelerator.clip_grad_norm_ = self._timed(accelerator.clip_grad_norm_, "optimizer")
        trainer.add_callback(self)
        return self

    def _timed(self, function, part: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed

    def _hook(self, module, part: str) -> None:
        if module is None:
            return

        def before(mod, args):
            if not self._in_backward:
                self._starts[id(mod)] = time.perf_counter()

        def after(mod, args, output):
            start = self._starts.pop(id(mod), None)
            if start is not None:
                self.seconds[part] += time.perf_counter() - start

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    # ------------------------------------------------------------------ steps

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.seconds["optimizer"] += time.perf_counter() - self._optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._warm:
            self.steps.append(now - self._last)
        else:  # the warm-up step: forget what it measured
            self.seconds.clear()
            self._warm = True
        self._last = now

    # ------------------------------------------------------------------ the table

    def parts(self) -> dict[str, float]:
        """Seconds per timed step in each of `PARTS` (they sum to the mean step)."""
        n = max(1, len(self.steps))
        s = {k: v / n for k, v in self.seconds.items()}
        forward = s.get("model forward", 0.0)
        loss_total = s.get("supervised loss", forward)  # TRL's path: the loss is inside compute_loss
        inner = s.get("embedding", 0.0) + s.get("attention", 0.0) + s.get("MLP", 0.0) + s.get("head", 0.0)
        out = {
            "data": s.get("data", 0.0),
            "embedding": s.get("embedding", 0.0),
            "attention": s.get("attention", 0.0),
            "MLP": s.get("MLP", 0.0),
            "other forward": max(0.0, forward - inner),
            "LM head + loss": s.get("head", 0.0) + max(0.0, loss_total - forward),
            "checks and metrics": max(0.0, s.get("compute_loss", 0.0) - loss_total),
            "backward": s.get("backward", 0.0),
            "optimizer": s.get("optimizer", 0.0),
        }
        step = sum(self.steps) / n
        out["rest"] = max(0.0, step - sum(out.values()))
        return out

    def record(self) -> dict[str, Any]:
        return {"parts": self.parts(), "profiled_steps": self.steps}
