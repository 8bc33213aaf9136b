"""`text_rows.py`: prompt/completion rows tokenized as generation sees them, checked byte by byte on real vocabularies.

Every test reads what a row trains as bytes: the trained labels must be exactly the completion's bytes plus the eos,
the masked ids exactly the prompt's own tokenization (with its bos), whatever merges the joint text would make.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from real_vocab import require
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast
from trl.data_utils import common_prefix_length

from trl_masked_sft import DataCollatorForCompletionOnlyLM, MaskedSFTConfig, PreparationPipeline
from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR
from trl_masked_sft.masking import IGNORE_INDEX
from trl_masked_sft.metrics import audit_logs
from trl_masked_sft.text import token_pieces

HOMEWORK = Path("/work/shared/data/unit_conversion/train.json")

#: (prompt, completion): merges across the boundary with byte-level vocabularies, and rows that must not merge
MID_WORD = ("The capital of France is Par", "is, of course.")
TRAILING_SPACE = ("Say ", "hello")
BOUNDARY_ROWS = [
    MID_WORD,
    TRAILING_SPACE,
    ("Question:\n", "\n\nThe answer is 4."),  # the completion starts with newlines, the prompt ends with one
    ("Answer with two spaces:", "  yes"),
    ("Tabs\t", "\tand more"),
    ("温", "度是多少？"),  # CJK on both sides: byte-level tokens can hold part of a character
    ("Un café ", "crème"),
    ("cafe", "\u0301 au lait"),  # the completion starts with a combining accent over the prompt's last letter
    ("Emoji: 👍", "🏽 done"),  # a skin-tone modifier joins the prompt's emoji
    ("How many grams are there in 3 kg?", " <answer>3000.0</answer>"),  # the homework's format: no merge
]


def _prepare(tokenizer, rows, **overrides):
    config = MaskedSFTConfig(output_dir="unused", report_to="none", use_cpu=True, **overrides)
    return PreparationPipeline.from_config(tokenizer, config).prepare(rows, "train", enforce=False)


def _bytes(tokenizer, ids) -> bytes:
    """The bytes the tokens stand for (a special token as its vocabulary string)."""
    special = set(tokenizer.all_special_ids)
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in token_pieces(tokenizer, ids, special))


def _check_bytes(tokenizer, rows, prepared) -> None:
    """Trained = the completion's bytes + eos; masked = the prompt's own ids; nothing else."""
    for (prompt, completion), row in zip(rows, prepared.dataset, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        trained = [label for label in labels if label != IGNORE_INDEX]
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert labels[first:] == ids[first:], (prompt, completion)  # one trained run, to the end
        assert _bytes(tokenizer, trained) == (completion + tokenizer.eos_token).encode(), (prompt, completion)
        assert ids[:first] == tokenizer(prompt)["input_ids"], (prompt, completion)


def _with_bos(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same vocabulary with a post-processor that puts bos before every text, as Llama 3's hub tokenizer does."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tokenizer.eos_token)


def _trl_trained(tokenizer, prompt: str, completion: str) -> list[int]:
    """What TRL 1.16 trains of the row: the joint ids from the first one that differs from the prompt's own."""
    joint = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    return joint[common_prefix_length(tokenizer(prompt)["input_ids"], joint) :]


def test_a_prompt_ending_mid_word_trains_the_completion_bytes_only_with_llama3():
    """`"…France is Par"` + `"is, of course."`: `" Paris"` (TRL's trained token) holds `" Par"`; we train `"is…"`."""
    tokenizer = require("llama3")
    prepared = _prepare(tokenizer, [MID_WORD])
    _check_bytes(tokenizer, [MID_WORD], prepared)
    assert tokenizer.decode(_trl_trained(tokenizer, *MID_WORD)[:1]) == " Paris"  # TRL's rule, for the record
    assert prepared.report.rows_merged_boundary == 1


def test_a_prompt_ending_in_a_space_keeps_its_space_with_llama3():
    """`"Say "` + `"hello"`: the prompt's `" "` token stays the prompt's; `"hello"` is trained, not `" hello"`."""
    tokenizer = require("llama3")
    prepared = _prepare(tokenizer, [TRAILING_SPACE])
    _check_bytes(tokenizer, [TRAILING_SPACE], prepared)
    assert tokenizer.decode(_trl_trained(tokenizer, *TRAILING_SPACE)[:1]) == " hello"
    assert prepared.report.rows_merged_boundary == 1


@pytest.mark.parametrize("vocab", ["llama3", "llama3 with bos", "qwen3", "qwen3.6", "smollm2"])
def test_every_completion_byte_and_no_prompt_byte_is_trained_on_real_vocabularies(vocab, request):
    """Mid-word, whitespace, newline and non-ASCII boundaries: trained bytes are exactly the completion's + eos."""
    tokenizer = {
        "llama3": lambda: require("llama3"),
        "llama3 with bos": lambda: _with_bos(require("llama3")),
        "qwen3": lambda: require("qwen", "3"),
        "qwen3.6": lambda: require("qwen", "3.6"),
        "smollm2": lambda: request.getfixturevalue("smollm2_tokenizer"),
    }[vocab]()
    prepared = _prepare(tokenizer, BOUNDARY_ROWS)
    _check_bytes(tokenizer, BOUNDARY_ROWS, prepared)
    merged = [
        i
        for i, (p, c) in enumerate(BOUNDARY_ROWS)
        if tokenizer(p + c + tokenizer.eos_token)["input_ids"] != prepared.dataset[i]["input_ids"]
    ]
    assert prepared.report.rows_merged_boundary == len(merged) > 0
    assert len(BOUNDARY_ROWS) - 1 not in merged  # the homework-format row tokenizes as TRL does


def test_the_bos_a_tokenizer_adds_starts_the_prompt_and_never_the_completion():
    """Llama 3 with its bos post-processor: `<|begin_of_text|>` once, first; the eos once, last."""
    tokenizer = _with_bos(require("llama3"))
    (row,) = _prepare(tokenizer, [MID_WORD]).dataset
    assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"].count(tokenizer.bos_token_id) == 1
    assert row["input_ids"][-1] == tokenizer.eos_token_id and row["input_ids"].count(tokenizer.eos_token_id) == 1
    assert row["labels"][0] == IGNORE_INDEX


@pytest.mark.parametrize("fixture", ["sp_tokenizer", "byte_fallback_tokenizer"])
def test_a_sentencepiece_tokenizer_puts_no_space_before_a_completion_that_has_none(fixture, request):
    """Tokenized alone, `"is"` would read `"▁is"` (a space the completion lacks); after the prompt it is `"is"`."""
    tokenizer = request.getfixturevalue(fixture)
    rows = [("The capital is Par", "is"), ("The capital is", " Paris")]
    prepared = _prepare(tokenizer, rows)
    for (_, completion), row in zip(rows, prepared.dataset, strict=True):
        trained = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert _bytes(tokenizer, trained[:-1]) == completion.encode()
        assert trained[-1] == tokenizer.eos_token_id


def test_the_log_line_says_what_is_trained(capture_logs):
    """The merge is said once, naming both sides, and says the prompt is not trained (which is now true)."""
    tokenizer = require("llama3")
    said = capture_logs("trl_masked_sft.text_rows")
    _prepare(tokenizer, [MID_WORD, TRAILING_SPACE])
    (line,) = [m for m in said if "merge" in m]
    assert "'The capital of France is Par'" in line and "' Paris'" in line
    assert "the prompt is not trained and every byte of the completion is" in line


def test_the_audit_counts_merged_boundary_rows_in_json_html_and_tensorboard(tmp_path):
    """`rows_merged_boundary` is in the report's JSON, its summary, the audit page and the `audit/` scalars."""
    from trl_masked_sft.audit_html import render_audit_html

    tokenizer = require("llama3")
    report = _prepare(tokenizer, [MID_WORD, TRAILING_SPACE, BOUNDARY_ROWS[-1]]).report
    assert report.rows_merged_boundary == 2
    assert json.loads(report.write_json(tmp_path / "a.json").read_text())["rows_merged_boundary"] == 2
    assert "2 whose prompt and completion merge across their boundary" in report.summary()
    assert audit_logs(report)["audit/rows_merged_boundary"] == 2.0
    page = render_audit_html(report, [1, 2, 3], [])
    assert "prompt and completion merge across their boundary" in page


def _homework_rows(limit: int = 2000) -> list[list]:
    if HOMEWORK.exists():
        return json.loads(HOMEWORK.read_text())[:limit]
    return [[f"How many grams are there in {n} kg?", n * 1000.0] for n in range(1, 50)]


@pytest.mark.parametrize("vocab", ["tiny", "smollm2"])
def test_homework_rows_tokenize_exactly_as_trl_tokenizes_them(vocab, request, tokenizer):
    """`" <answer>120.0</answer>"` after a question merges with nothing: the same ids as before, so the benchmark's
    loss equality with TRL holds."""
    tok = tokenizer if vocab == "tiny" else request.getfixturevalue("smollm2_tokenizer")
    rows = _homework_rows()
    prepared = _prepare(tok, rows)
    assert prepared.report.rows_merged_boundary == 0
    for (question, _), row in zip(rows, prepared.dataset, strict=True):
        assert row["labels"][: len(tok(question)["input_ids"])] == [IGNORE_INDEX] * len(tok(question)["input_ids"])
    completions = [" <answer>" + str(round(float(a), 3)) + "</answer>" + tok.eos_token for _, a in rows]
    joint = tok([q + c for (q, _), c in zip(rows, completions, strict=True)])["input_ids"]
    assert prepared.dataset["input_ids"] == joint


def test_the_response_template_collator_trains_the_merged_token_as_documented():
    """The collator masks ids it is given (text tokenized whole): a template ending in a space that merges with the
    answer's first word trains that token, space included (docs/prompt_completion.md says so). A template without
    the trailing space trains exactly the answer."""
    tokenizer = require("llama3")
    text = "Question: capital of France?\nAnswer: Paris" + tokenizer.eos_token
    ids = tokenizer(text)["input_ids"]
    for template, trained_text in (("Answer: ", " Paris"), ("Answer:", " Paris")):
        collator = DataCollatorForCompletionOnlyLM(template, tokenizer=tokenizer)
        labels = collator([{"input_ids": ids}])["labels"][0].tolist()
        trained = [label for label in labels if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == trained_text + tokenizer.eos_token, template


def test_a_masked_sft_trainer_run_trains_exactly_the_completions(tmp_path):
    """End to end on a tiny model with Llama 3's vocabulary: the trainer's rows train the completion bytes + eos,
    the audit counts the merged rows, and training runs."""
    from trl_masked_sft import MaskedSFTTrainer
    from trl_masked_sft.tiny import build_tiny_model

    tokenizer = require("llama3")
    rows = BOUNDARY_ROWS[:4]
    dataset = Dataset.from_dict({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
    config = MaskedSFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    model = build_tiny_model(tokenizer, hidden_size=16, num_attention_heads=2)
    trainer = MaskedSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    for (_, completion), row in zip(rows, trainer.train_dataset, strict=True):
        trained = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == completion + tokenizer.eos_token
    assert trainer.audit_reports["train"].rows_merged_boundary >= 2
    before = [p.detach().clone() for p in model.parameters()]
    losses = [log["loss"] for log in trainer.train().metrics and trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    assert any(not b.equal(a) for b, a in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(
    TRANSFORMERS_MAJOR < 5,
    reason="transformers 4.x's PreTrainedTokenizerFast resets the pre-tokenizer's add_prefix_space: there this "
    "tokenizer does not space a text alone, so the rule of the other tests applies (checked on 4.57.6)",
)
def test_a_tokenizer_that_spaces_every_text_alone_falls_back_to_trls_rule_and_says_so(capture_logs):
    """A byte-level BPE with `add_prefix_space=True` puts `Ġ` before a completion alone, even after a special token:
    no tokenization alone gives the completion's bytes, so TRL's rule applies, said truthfully and counted."""
    from tokenizers import pre_tokenizers

    from trl_masked_sft.tiny import build_tiny_tokenizer

    base = build_tiny_tokenizer()
    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=base.bos_token, eos_token=base.eos_token, pad_token=base.pad_token
    )
    said = capture_logs("trl_masked_sft.text_rows")
    rows = [("What is 2 kg in gr", "am?"), ("How many?", " 3")]
    prepared = _prepare(tokenizer, rows)
    for (prompt, completion), row in zip(rows, prepared.dataset, strict=True):
        trained = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert trained == _trl_trained(tokenizer, prompt, completion)
    assert prepared.report.rows_merged_boundary == 1
    (line,) = [m for m in said if "merge" in m]
    assert "the merged token is trained, with its prompt bytes" in line and "' gram'" in line
