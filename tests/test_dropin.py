"""Drop-in: the scenarios of TRL's own SFTTrainer tests, run with both trainers side by side on the same inputs.

Where both train on the same tokens, the prepared labels and the training loss must be identical (to float32
rounding: MaskedSFTTrainer packs each batch's rows (`pack_within_batch`), which sums the same terms in another
order; one token more or less would move the loss by about 1e-2).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, IterableDataset
from trl import SFTConfig, SFTTrainer

from trl_masked_sft import MaskedSFTTrainer
from trl_masked_sft.tiny import build_tiny_model

LOSS_RTOL = 1e-5
PROMPTS = [f"How many grams are there in {i} kg?" for i in range(1, 17)]
COMPLETIONS = [f" <answer>{i * 1000}</answer>" for i in range(1, 17)]


def sft_args(tmp_path, **overrides) -> SFTConfig:
    settings = {
        "output_dir": str(tmp_path),
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "max_length": 64,
        "learning_rate": 1e-3,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    settings.update(overrides)
    return SFTConfig(**settings)


def run_both(tokenizer, tmp_path, data_fn, **config):
    """Train the same model and data with SFTTrainer and MaskedSFTTrainer; return both trainers."""
    trainers = []
    for cls in (SFTTrainer, MaskedSFTTrainer):
        trainer = cls(
            build_tiny_model(tokenizer),
            args=sft_args(tmp_path / cls.__name__, **config),
            train_dataset=data_fn(),
            processing_class=tokenizer,
        )
        trainer.train()
        trainers.append(trainer)
    return trainers


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_prompt_completion_trains_identically_to_sfttrainer(tokenizer, tmp_path):
    """Prompt/completion rows: same labels, same loss curve as plain TRL."""
    trl_trainer, ours = run_both(
        tokenizer, tmp_path, lambda: Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS})
    )
    assert trl_trainer.train_dataset["labels"] == ours.train_dataset["labels"]
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


def test_conversational_prompt_completion_trains_the_reply_like_sfttrainer_but_not_the_template_newline(
    tokenizer, tmp_path
):
    """Prompt/completion given as messages: TRL's labels, except the template's newline after `<|im_end|>`, which
    (as in `messages` rows and in marker-based templates) is not part of the reply."""

    def data():
        return Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
                "completion": [[{"role": "assistant", "content": c.strip()}] for c in COMPLETIONS],
            }
        )

    trl_trainer, ours = run_both(tokenizer, tmp_path, data)
    newline = tokenizer("\n")["input_ids"]
    for theirs, mine in zip(trl_trainer.train_dataset["labels"], ours.train_dataset["labels"], strict=True):
        assert [theirs[-1]] == newline and theirs[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert mine == theirs[:-1] + [-100]


def test_language_modeling_text_trains_identically_to_sfttrainer(tokenizer, tmp_path):
    """Plain text (no prompt to mask) trains on the whole text, like TRL."""
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    trl_trainer, ours = run_both(tokenizer, tmp_path, lambda: Dataset.from_dict({"text": texts}))
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


MARKED_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def conversations() -> Dataset:
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": c.strip()}]
                for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
            ]
        }
    )


def test_messages_with_completion_only_loss_false_train_like_sfttrainer(tokenizer, tmp_path):
    """Conversational rows with `completion_only_loss=False` train on every turn, exactly as TRL does."""
    trl_trainer, ours = run_both(tokenizer, tmp_path, conversations, completion_only_loss=False)
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


def test_messages_train_assistant_only_like_trl_with_generation_markers(tokenizer, tmp_path):
    """By default `messages` train the assistant turns only: the same labels and loss as TRL's
    `assistant_only_loss=True` on a template with generation markers (which TRL needs and we don't)."""
    tokenizer.chat_template = MARKED_CHATML
    trl_trainer = SFTTrainer(
        build_tiny_model(tokenizer),
        args=sft_args(tmp_path / "trl", assistant_only_loss=True),
        train_dataset=conversations(),
        processing_class=tokenizer,
    )
    ours = MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=sft_args(tmp_path / "ours"),
        train_dataset=conversations(),
        processing_class=tokenizer,
    )
    assert ours.train_dataset["labels"] == trl_trainer.train_dataset["labels"]
    trl_trainer.train()
    ours.train()
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


def test_pretokenized_rows_with_labels_train_identically_to_sfttrainer(tokenizer, tmp_path):
    """Pre-tokenized rows with their own labels: used as given by both trainers."""
    ids = [tokenizer(p + c)["input_ids"] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    labels = [[-100] * 8 + row[8:] for row in ids]
    trl_trainer, ours = run_both(tokenizer, tmp_path, lambda: Dataset.from_dict({"input_ids": ids, "labels": labels}))
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


def test_streaming_dataset_trains(tokenizer, tmp_path):
    """An IterableDataset (streaming) trains with max_steps, rows checked as they are read."""

    def data():
        return IterableDataset.from_generator(
            lambda: ({"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS, strict=True))
        )

    trl_trainer, ours = run_both(tokenizer, tmp_path, data)
    assert losses(ours) == pytest.approx(losses(trl_trainer), rel=LOSS_RTOL)


def test_packing_trains_on_the_same_tokens(tokenizer, tmp_path):
    """With packing, the packed rows carry the same supervised tokens as TRL's."""
    data = lambda: Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS})  # noqa: E731
    trainers = []
    for cls in (SFTTrainer, MaskedSFTTrainer):
        trainer = cls(
            build_tiny_model(tokenizer),
            args=sft_args(tmp_path / cls.__name__, packing=True, packing_strategy="wrapped"),
            train_dataset=data(),
            processing_class=tokenizer,
        )
        trainers.append(trainer)
    theirs, ours = (sorted(t for row in tr.train_dataset["labels"] for t in row) for tr in trainers)
    assert theirs == ours


def test_evaluate_prepares_a_freshly_passed_eval_dataset(tokenizer, tmp_path):
    """evaluate(eval_dataset=raw rows) prepares and checks them, as SFTTrainer.evaluate does."""
    trainer = MaskedSFTTrainer(
        build_tiny_model(tokenizer),
        args=sft_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS}),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate(Dataset.from_dict({"prompt": PROMPTS[:4], "completion": COMPLETIONS[:4]}))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
