"""The homework module: question generator, data files, answer format, scoring, generation and the end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from homework import (
    ADAPTER_LIMIT_MB,
    BENCHMARK_QUESTIONS,
    QUESTION_TEMPLATES,
    RECIPES,
    batched_generate,
    build_demo_model,
    convert,
    format_answer,
    generate_examples,
    generate_rows,
    homework_splits,
    load_homework_data,
    load_model,
    parse_answer,
    run_homework,
    score,
    scores_text,
    to_prompt_completion,
)
from homework import _evaluate as evaluate
from homework_data import homework_statistics, measure_statistics
from rss import PhasePeaks, release_freed_memory

from trl_masked_sft import homework_lora_config
from trl_masked_sft.errors import DatasetFormatError

REPO = Path(__file__).resolve().parents[1]
HOMEWORK_DATA = REPO.parent / "shared" / "data" / "unit_conversion"
needs_homework_data = pytest.mark.skipif(
    not (HOMEWORK_DATA / "train.json").is_file(),
    reason=f"the homework's data files are not at {HOMEWORK_DATA} (they are not part of this repository)",
)


def _quiet(_message: str) -> None:
    pass


def _template_patterns() -> list[re.Pattern]:
    patterns = []
    for template in QUESTION_TEMPLATES:
        pattern = re.escape(template)
        for name, group in (("n", r"(?P<n>\d+)"), ("a", r"(?P<a>.+?)"), ("b", r"(?P<b>.+?)")):
            pattern = pattern.replace(re.escape("{" + name + "}"), group)
        patterns.append(re.compile(f"^{pattern}$"))
    return patterns


# ---------------------------------------------------------------------------------------------------- generator


def test_same_seed_generates_the_same_rows():
    """Two calls with one seed give identical rows."""
    assert generate_rows(50, seed=3) == generate_rows(50, seed=3)


def test_different_seeds_generate_different_rows():
    """Another seed gives other questions."""
    assert generate_rows(50, seed=3) != generate_rows(50, seed=4)


def test_generated_rows_are_question_strings_with_float_answers():
    """Each row is `[question: str, answer: float]`, a sentence about an amount from 1 to 10."""
    for question, answer in generate_rows(200, seed=0):
        assert isinstance(question, str) and question[-1] in "?."
        assert isinstance(answer, float) and math.isfinite(answer) and answer > 0
    assert all(1 <= example.amount <= 10 for example in generate_examples(200, seed=0))


def test_generated_answer_is_the_conversion_asked_by_its_question():
    """The answer equals `convert(amount, from, to)` and the question names that amount and both units."""
    for example in generate_examples(300, seed=1):
        assert example.answer == pytest.approx(convert(example.amount, example.from_unit, example.to_unit), rel=1e-12)
        assert example.from_unit in example.question and f" {example.to_unit}" in example.question
        assert str(example.amount) in example.question


def test_generator_covers_every_unit_family_and_phrasing():
    """A thousand questions use all six unit families and every phrasing template."""
    examples = generate_examples(1000, seed=0)
    assert {e.family for e in examples} == {"length", "mass", "time", "volume", "data size", "speed"}
    patterns = _template_patterns()
    used = {next(i for i, p in enumerate(patterns) if p.match(e.question)) for e in examples}
    assert used == set(range(len(QUESTION_TEMPLATES)))


def _shares(counts: dict) -> dict:
    total = sum(counts.values())
    return {key: count / total for key, count in counts.items()}


def _assert_shares_close(measured: dict, expected: dict, tolerance: float, what: str) -> None:
    measured, expected = _shares(measured), _shares(expected)
    gaps = {key: measured.get(key, 0.0) - expected.get(key, 0.0) for key in set(measured) | set(expected)}
    worst = max(gaps, key=lambda key: abs(gaps[key]))
    assert abs(gaps[worst]) <= tolerance, f"{what}: {worst!r} is off by {gaps[worst]:+.3f} (tolerance {tolerance})"


def test_generated_questions_follow_the_statistics_they_are_drawn_from():
    """4000 generated questions, measured as the homework's files are (`measure_statistics`): each conversion,
    amount and phrasing within 0.015 of its share in `homework_statistics.json`, and each unit spelt only as the
    table spells it there (no data files needed)."""
    table = homework_statistics()
    measured = measure_statistics(generate_rows(4000, seed=0))
    for part in ("pairs", "amounts", "templates"):
        _assert_shares_close(measured[part], table[part], 0.015, part)
    for key, spellings in measured["spellings"].items():
        assert set(spellings) <= set(table["spellings"][key]), key


def test_homework_splits_are_the_two_halves_of_one_seeded_stream():
    """`homework_splits(n_train, n_valid, seed)` returns the first n_train rows and the next n_valid rows."""
    train, valid = homework_splits(30, 20, seed=5)
    assert len(train) == 30 and len(valid) == 20
    assert train + valid == generate_rows(50, seed=5)


def test_convert_uses_the_homework_spellings_and_factors():
    """Known conversions, with `ounce` read as mass or fluid ounce by the other unit."""
    assert convert(2, "hour", "min") == pytest.approx(120.0)
    assert convert(10, "pint", "milliliter") == pytest.approx(4731.76473)
    assert convert(4, "centuries", "week") == pytest.approx(20870.9827875)
    assert convert(6, "mi/h", "in/s") == pytest.approx(105.6)
    assert convert(1, "ounce", "g") == pytest.approx(28.349523125)
    assert convert(1, "ounce", "mL") == pytest.approx(29.5735295625)


def test_convert_rejects_unknown_units_and_mixed_families():
    """An unknown spelling or a length-to-mass conversion raises, naming the units."""
    with pytest.raises(ValueError, match="Unknown unit 'furlong'"):
        convert(1, "furlong", "m")
    with pytest.raises(ValueError, match="'km' .* to 'kg'"):
        convert(1, "km", "kg")


def test_generator_rejects_a_negative_count():
    """`n` must be a non-negative int."""
    with pytest.raises(ValueError, match="got -1"):
        generate_rows(-1)


def _decade(value: float) -> int:
    return math.floor(math.log10(abs(value)))


@needs_homework_data
def test_the_generator_statistics_are_the_homework_files_measured():
    """`homework_statistics.json` is what `measure_statistics` finds in the homework's train.json + valid.json."""
    train, valid = load_homework_data(HOMEWORK_DATA)
    assert measure_statistics(train + valid) == homework_statistics()


@needs_homework_data
def test_generated_questions_match_the_homework_files_units_phrasings_and_number_ranges():
    """2000 generated rows against the homework's 2000: each unit family, phrasing and answer decade (the number
    range: 0.1-1, 1-10, ... 10,000-100,000) within 0.03 of its share in the files; the same amounts (1 to 10) and
    the same spellings of each unit."""
    train, valid = load_homework_data(HOMEWORK_DATA)
    files = measure_statistics(train + valid)
    rows = generate_rows(2000, seed=0)
    generated = measure_statistics(rows)

    def families(stats):
        counts: dict[str, int] = {}
        for key, count in stats["pairs"].items():
            counts[key.split("|")[0]] = counts.get(key.split("|")[0], 0) + count
        return counts

    _assert_shares_close(families(generated), families(files), 0.03, "unit families")
    _assert_shares_close(generated["templates"], files["templates"], 0.03, "phrasings")
    decades_files: dict[int, int] = {}
    decades_generated: dict[int, int] = {}
    for table, source in ((decades_files, train + valid), (decades_generated, rows)):
        for _, answer in source:
            table[_decade(answer)] = table.get(_decade(answer), 0) + 1
    _assert_shares_close(decades_generated, decades_files, 0.03, "answer decades")
    assert set(generated["amounts"]) == set(files["amounts"]) == {str(n) for n in range(1, 11)}
    spelt = {name for spellings in generated["spellings"].values() for name in spellings}
    assert spelt == {name for spellings in files["spellings"].values() for name in spellings}


@needs_homework_data
def test_templates_and_units_reproduce_every_real_homework_row():
    """Every question of the homework's files matches a template, and its answer is our conversion (1e-9)."""
    patterns = _template_patterns()
    rows = json.loads((HOMEWORK_DATA / "train.json").read_text()) + json.loads(
        (HOMEWORK_DATA / "valid.json").read_text()
    )
    for question, answer in rows:
        match = next((m for p in patterns if (m := p.match(question))), None)
        assert match is not None, question
        assert convert(int(match["n"]), match["a"], match["b"]) == pytest.approx(answer, rel=1e-9), question


# ---------------------------------------------------------------------------------------------------- data files


@needs_homework_data
def test_load_homework_data_reads_both_real_files():
    """The homework's folder gives 1000 train and 1000 valid `[str, float]` rows."""
    train, valid = load_homework_data(HOMEWORK_DATA)
    assert len(train) == 1000 and len(valid) == 1000
    assert train[0] == ["Can you change 2 hour to its equivalent in min?", 120.0]


def test_load_homework_data_names_a_missing_folder(tmp_path):
    """A folder that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_homework_data(tmp_path / "nope")


def test_load_homework_data_names_a_missing_file(tmp_path):
    """A folder without valid.json raises FileNotFoundError naming that file and the fix."""
    (tmp_path / "train.json").write_text('[["What is 1 kg in g?", 1000.0]]')
    with pytest.raises(FileNotFoundError, match=r"valid\.json.*--data-dir"):
        load_homework_data(tmp_path)


def test_load_homework_data_names_a_file_that_is_not_json(tmp_path):
    """Broken JSON raises DatasetFormatError naming the file."""
    (tmp_path / "train.json").write_text('[["What is 1 kg in g?", 1000.0]')
    (tmp_path / "valid.json").write_text("[]")
    with pytest.raises(DatasetFormatError, match=r"train\.json is not valid JSON"):
        load_homework_data(tmp_path)


def test_load_homework_data_names_a_malformed_row(tmp_path):
    """A row that is not `[str, number]` raises DatasetFormatError naming its index and file."""
    (tmp_path / "train.json").write_text('[["What is 1 kg in g?", 1000.0], ["What is 2 kg in g?", "2000"]]')
    (tmp_path / "valid.json").write_text('[["What is 1 kg in g?", 1000.0]]')
    with pytest.raises(DatasetFormatError, match=r"Row 1 of .*train\.json"):
        load_homework_data(tmp_path)


def test_load_homework_data_rejects_an_empty_list(tmp_path):
    """A file holding `[]` raises DatasetFormatError."""
    (tmp_path / "train.json").write_text('[["What is 1 kg in g?", 1000.0]]')
    (tmp_path / "valid.json").write_text("[]")
    with pytest.raises(DatasetFormatError, match=r"valid\.json must hold a non-empty JSON list"):
        load_homework_data(tmp_path)


# ---------------------------------------------------------------------------------------------------- answers


def test_format_answer_rounds_to_three_decimals():
    """`format_answer` writes `<answer>{round(a, 3)}</answer>`."""
    assert format_answer(20870.982787499997) == "<answer>20870.983</answer>"
    assert format_answer(120.0) == "<answer>120.0</answer>"


def test_prompt_is_the_question_and_completion_a_spaced_answer():
    """`to_prompt_completion` puts the question in `prompt` and `" <answer>…</answer>"` in `completion`."""
    dataset = to_prompt_completion([["What is 1 kg in g?", 1000.0]])
    assert dataset[0] == {"prompt": "What is 1 kg in g?", "completion": " <answer>1000.0</answer>"}


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion():
    """With the demo tokenizer the question tokenizes the same alone and followed by its answer."""
    rows = generate_rows(300, seed=2)
    _, tokenizer = build_demo_model(rows)
    for row in to_prompt_completion(rows):
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert full[: len(prompt)] == prompt


def test_to_prompt_completion_names_a_row_that_is_not_a_pair():
    """A row whose answer is text raises DatasetFormatError naming its index."""
    with pytest.raises(DatasetFormatError, match="Row 1 is"):
        to_prompt_completion([["What is 1 kg in g?", 1000.0], ["What is 2 kg in g?", "2000"]])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" <answer>120.0</answer>", 120.0),
        ("<answer>-3.5</answer>", -3.5),
        ("The result is <answer> 42 </answer> units.", 42.0),
        ("<answer>1.5</answer><answer>2.5</answer>", 1.5),
        ("<answer>1e3</answer>", 1000.0),
    ],
)
def test_parse_answer_reads_the_number_between_the_tags(text, expected):
    """The float between the first `<answer>` and `</answer>` is returned, sign and exponent included."""
    assert parse_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "120.0",
        "",
        "<answer>120.0",
        "120.0</answer>",
        "<answer>12o.0</answer>",
        "<answer></answer>",
        "<answer>inf</answer>",
    ],
)
def test_parse_answer_gives_nan_without_a_well_formed_answer(text):
    """No tags, an unclosed tag, a malformed or infinite number: NaN."""
    assert math.isnan(parse_answer(text))


def test_score_counts_an_answer_exactly_five_percent_off_as_wrong():
    """The rule is strict: |p - t| == 5% of |t| is wrong, on either side."""
    assert abs(105.0 - 100.0) == 0.05 * 100.0  # the boundary is exact in floating point
    assert score([105.0], [100.0])["accuracy"] == 0.0
    assert score([95.0], [100.0])["accuracy"] == 0.0


def test_score_counts_an_answer_just_inside_five_percent_as_right():
    """104.999 and 95.001 against 100 are within 5%."""
    assert score([104.999, 95.001], [100.0, 100.0])["accuracy"] == 1.0


def test_score_rounds_both_values_to_three_decimals_first():
    """104.9996 rounds onto the boundary (wrong); a target of 0.0014 is scored as 0.001."""
    assert score([104.9996], [100.0])["accuracy"] == 0.0
    assert score([0.00104, 0.0011], [0.0014, 0.0014])["accuracy"] == 1.0  # all round to 0.001


def test_score_counts_negative_answers_by_their_magnitude():
    """A negative target is within 5% of its absolute value."""
    assert score([-10.4, -10.6, 10.0], [-10.0, -10.0, -10.0])["accuracy"] == pytest.approx(1 / 3)


def test_score_never_counts_an_answer_of_zero_as_right():
    """A target that rounds to 0 cannot be matched, not even by 0."""
    assert score([0.0, 0.0001], [0.0, 0.0002]) == {"accuracy": 0.0, "answer_rate": 1.0}


def test_score_answer_rate_is_the_share_of_non_nan_predictions():
    """NaN predictions are wrong and lower `answer_rate`."""
    assert score([math.nan, 120.0, math.nan, 1.0], [120.0, 120.0, 3.0, 1.0]) == {"accuracy": 0.5, "answer_rate": 0.5}


def test_score_rejects_mismatched_or_empty_inputs():
    """One prediction per target, and at least one."""
    with pytest.raises(ValueError, match="2 values but `targets` has 1"):
        score([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        score([], [])


# ---------------------------------------------------------------------------------------------------- generation


@pytest.fixture
def one_thread():
    """Tiny models run faster, and steadier on a busy machine, on one intra-op thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demo():
    rows = generate_rows(200, seed=0)
    model, tokenizer = build_demo_model(rows)
    return model, tokenizer, rows


def test_batched_generation_matches_one_prompt_at_a_time(demo, one_thread):
    """Left padding: greedy replies to prompts of different lengths are the same batched and one by one."""
    model, tokenizer, rows = demo
    prompts = ["What is 1 kg in g?", "Could you give the conversion from mi to ft for 7 units?", "Convert 2 B to bit?"]
    batched = batched_generate(model, tokenizer, prompts, max_new_tokens=8)
    single = [batched_generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(not reply.startswith(prompt) for reply, prompt in zip(batched, prompts, strict=True))


def test_batched_generation_restores_padding_side_and_training_mode(demo):
    """The tokenizer's padding side and the model's train mode are as before the call."""
    model, tokenizer, _ = demo
    tokenizer.padding_side = "right"
    model.train()
    batched_generate(model, tokenizer, ["What is 1 kg in g?"], max_new_tokens=2)
    assert tokenizer.padding_side == "right" and model.training
    model.eval()


def test_batched_generation_works_through_a_peft_model(demo, one_thread):
    """A freshly wrapped PeftModel (LoRA B = 0) answers exactly as its base model."""
    from peft import get_peft_model

    model, tokenizer, _ = demo
    prompts = ["What is 1 kg in g?", "Express 4 centuries as a quantity of week."]
    base = batched_generate(model, tokenizer, prompts, max_new_tokens=6)
    peft_model = get_peft_model(build_demo_model(generate_rows(200, seed=0))[0], homework_lora_config())
    assert batched_generate(peft_model, tokenizer, prompts, max_new_tokens=6) == base


def test_batched_generation_needs_a_pad_token(demo):
    """A tokenizer without a pad token raises, with the fix."""
    import copy

    model, tokenizer, _ = demo
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        batched_generate(model, tokenizer, ["What is 1 kg in g?"])


def test_scoring_more_than_the_homeworks_100_questions_also_scores_its_first_100(demo, one_thread):
    """Over 120 questions the metrics hold the score of all 120 and, under `first_100`, that of the first 100 (the
    homework's `benchmark()` count), equal to scoring those 100 on their own; at 100 or fewer there is no second
    score."""
    model, tokenizer, rows = demo
    questions = rows[:120]
    metrics, _ = evaluate(model, tokenizer, questions, 8)
    alone, _ = evaluate(model, tokenizer, questions[:BENCHMARK_QUESTIONS], 8)
    assert metrics["first_100"] == alone and "first_100" not in alone
    replies = batched_generate(model, tokenizer, [q for q, _ in questions], max_new_tokens=8)
    assert {k: metrics[k] for k in ("accuracy", "answer_rate")} == score(
        [parse_answer(r) for r in replies], [t for _, t in questions]
    )
    text = scores_text({"accuracy": 0.592, "answer_rate": 1.0, "first_100": {"accuracy": 0.63, "answer_rate": 0.99}})
    assert text == (
        "accuracy 0.592, answer_rate 1.000 (the first 100, the homework's benchmark: accuracy 0.630, answer_rate 0.990)"
    )
    assert scores_text(alone) == f"accuracy {alone['accuracy']:.3f}, answer_rate {alone['answer_rate']:.3f}"


def test_load_model_names_the_model_and_the_fix_when_it_cannot_load():
    """An unreachable model name raises OSError pointing to a local folder or the demo model."""
    with pytest.raises(OSError, match=r"(?s)'no-such-org/no-such-model'.*leave out --model"):
        load_model("no-such-org/no-such-model")


# ---------------------------------------------------------------------------------------------------- the run


def _check_outputs(output_dir: Path, metrics: dict) -> None:
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert list(output_dir.rglob("events.out.tfevents*")), "no TensorBoard event file under the output dir"
    assert json.loads((output_dir / "metrics.json").read_text())["after"] == metrics["after"]
    for when in ("before", "after"):
        assert set(metrics[when]) == {"accuracy", "answer_rate"}
        assert all(0.0 <= value <= 1.0 for value in metrics[when].values())
    assert 0 < metrics["adapter_mb"] < metrics["adapter_limit_mb"]


def test_a_short_run_writes_adapter_tensorboard_events_and_metrics(tmp_path, monkeypatch):
    """A few steps on generated rows leave the adapter, an event file and metrics.json under the output dir."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    messages = []
    metrics = run_homework(
        tmp_path / "run", max_steps=3, num_eval=4, num_generated=(64, 8), progress_bar=False, log=messages.append
    )
    _check_outputs(tmp_path / "run", metrics)
    assert metrics["steps"] == 3 and metrics["num_eval"] == 4 and metrics["demo_model"]
    assert list(metrics["peak_rss"]["phases_gb"]) == [
        "loading",
        "trainer setup",
        "scoring before",
        "training",
        "scoring after",
        "saving",
    ]
    assert any(m.startswith("Peak RSS (GB) per phase") for m in messages)
    assert any("OFFLINE DEMO model" in m and "NOT a real language model" in m for m in messages)


def test_a_run_can_score_each_epoch_and_skip_the_untrained_model(tmp_path, monkeypatch):
    """`score_each_epoch` adds a point per finished epoch (the last one is the final score, not scored twice);
    `score_before=False` leaves the untrained model unscored, and its phase out of the memory report."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    messages = []
    metrics = run_homework(
        tmp_path / "run",
        max_steps=3,
        batch_size=32,
        num_eval=4,
        num_generated=(64, 8),
        score_each_epoch=True,
        score_before=False,
        progress_bar=False,
        log=messages.append,
    )
    assert metrics["before"] is None and "scoring before" not in metrics["peak_rss"]["phases_gb"]
    assert [point["epoch"] for point in metrics["curve"]] == [1.0, 1.5]
    assert {k: metrics["curve"][-1][k] for k in ("accuracy", "answer_rate")} == metrics["after"]
    assert any(m.startswith("Epoch 1.00 (") for m in messages)


def test_a_local_model_folder_trains_through_the_model_path(tmp_path, monkeypatch, one_thread):
    """`model_name_or_path` loads with the Auto classes (here a saved demo model) and trains a few steps."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model, tokenizer = build_demo_model(generate_rows(64, seed=0))
    model.save_pretrained(tmp_path / "local-model")
    tokenizer.save_pretrained(tmp_path / "local-model")
    metrics = run_homework(
        tmp_path / "run",
        model_name_or_path=str(tmp_path / "local-model"),
        max_steps=2,
        num_eval=2,
        num_generated=(32, 4),
        progress_bar=False,
        log=_quiet,
    )
    _check_outputs(tmp_path / "run", metrics)
    assert not metrics["demo_model"] and metrics["learning_rate"] == 2e-4


@pytest.mark.slow
def test_the_demo_model_learns_the_answer_format(tmp_path, monkeypatch):
    """Three epochs on 320 generated rows: loss falls at least 30% and more replies carry an answer."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    metrics = run_homework(tmp_path / "run", num_eval=20, num_generated=(320, 20), progress_bar=False, log=_quiet)
    assert metrics["loss_fall_pct"] >= 30, metrics
    assert metrics["after"]["answer_rate"] > metrics["before"]["answer_rate"], metrics


@pytest.mark.slow
def test_the_example_script_runs_on_the_real_homework_files(tmp_path, monkeypatch, smollm2_dir):
    """`examples/train_homework.py --data-dir` in a subprocess: the default model (the real SmolLM2-135M), a few
    steps (skipped without the data)."""
    if not (HOMEWORK_DATA / "train.json").is_file():
        pytest.skip(f"the homework's data files are not at {HOMEWORK_DATA}")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    output_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "examples" / "train_homework.py"),
        "--data-dir",
        str(HOMEWORK_DATA),
        "--output-dir",
        str(output_dir),
        "--max-steps",
        "3",
        "--num-eval",
        "4",
        "--no-progress-bar",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model: smollm2-135m (134.5M parameters); prompt format: plain" in result.stdout
    metrics = json.loads((output_dir / "metrics.json").read_text())
    _check_outputs(output_dir, metrics)
    assert metrics["data"] == str(HOMEWORK_DATA.resolve()) and metrics["num_train"] == 1000
    assert metrics["demo_model"] is False and metrics["parameters"] == 134_515_008 and metrics["steps"] == 3
    assert metrics["train_tokens"] > 0 and metrics["train_tokens_per_second"] > 0
    # the default recipe is the sweep's best, with activation checkpointing on (the main job's memory)
    assert metrics["recipe"] == "best" and metrics["activation_checkpointing"] is True
    best = RECIPES["best"]
    assert (metrics["learning_rate"], metrics["batch_size"], metrics["lora_r"]) == (
        best["learning_rate"],
        best["batch_size"],
        best["lora_r"],
    )
    assert metrics["lr_scheduler_type"] == "cosine" and metrics["adapter_mb"] < ADAPTER_LIMIT_MB


def _example_cli():
    spec = importlib.util.spec_from_file_location("train_homework_cli", REPO / "examples" / "train_homework.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_runs_the_best_recipe_for_smollm2_135m_and_the_homeworks_for_other_models():
    """`--recipe`: unset, SmolLM2-135M gets the sweep's best settings, the demo model the homework's (with its own
    learning rate) and any other model the homework's; `--recipe homework` gives the homework's; any flag given wins
    over the recipe."""
    cli = _example_cli()
    real = cli.settings(cli.parse_args([]))
    assert real == {key: RECIPES["best"][key] for key in real}
    demo = cli.settings(cli.parse_args(["--model", "tiny-demo"]))
    assert demo == {**{key: RECIPES["homework"][key] for key in demo}, "learning_rate": None}
    other = cli.settings(cli.parse_args(["--model", "HuggingFaceTB/SmolLM2-360M-Instruct"]))
    assert other == {key: RECIPES["homework"][key] for key in other}
    homework = cli.settings(cli.parse_args(["--recipe", "homework", "--epochs", "2", "--lora-r", "4"]))
    assert homework == {**{key: RECIPES["homework"][key] for key in homework}, "epochs": 2.0, "lora_r": 4}
    assert cli.settings(cli.parse_args(["--batch-size", "8"]))["batch_size"] == 8
    with pytest.raises(SystemExit):
        cli.parse_args(["--recipe", "fastest"])


@pytest.mark.parametrize("given", [None, "1024"])
def test_the_example_bounds_onednns_kernel_cache_unless_the_user_set_it(given):
    """Importing the example script sets `ONEDNN_PRIMITIVE_CACHE_CAPACITY` to 32 before torch loads, and keeps a
    value set outside; torch loads after it."""
    script = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('cli', {str(REPO / 'examples' / 'train_homework.py')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if given is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = given
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "examples"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [given or "32", "True"]


def test_the_sweep_scores_the_homeworks_100_questions_whatever_the_examples_default():
    """The sweep's table is on the first 100 valid questions (the homework's `benchmark()`); the example now scores 500
    by default, so each sweep run asks for 100, and the example's parser reads it so."""
    from homework_sweep import PLAN, sweep_command

    name, flags = next(iter(PLAN.items()))
    command = sweep_command(flags, "data", Path("out") / name)
    args = _example_cli().parse_args(command[2:])
    assert args.num_eval == BENCHMARK_QUESTIONS and args.score_each_epoch and args.no_score_before
    assert _example_cli().parse_args([]).num_eval == 500


def test_the_best_recipes_adapter_fits_the_homeworks_limit():
    """The best recipe's LoRA rank on all linear layers of SmolLM2-135M (30 layers, 576 wide, MLP 1536, 3 KV heads
    of 64) in float32 stays under the homework's 20 MB."""
    r, layers = RECIPES["best"]["lora_r"], 30
    per_layer = sum(
        i + o for i, o in [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
    )
    assert r * per_layer * layers * 4 / 1e6 < ADAPTER_LIMIT_MB


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_release_freed_memory_gives_back_what_the_allocator_keeps():
    """200 MB freed in the middle of the heap (a live block above them keeps glibc from trimming its top by itself)
    stays resident until `release_freed_memory` gives it back."""
    blocks = [bytearray(64 * 1024) for _ in range(3200)]  # below glibc's mmap threshold: on the heap
    keep = bytearray(64 * 1024)  # the heap's top stays in use
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    del blocks
    before = _rss_bytes()
    assert release_freed_memory() is True
    after = _rss_bytes()
    assert before - after > 150e6, (before, after)
    del keep


def test_phase_peaks_report_each_phase_its_child_processes_and_the_run_peak():
    """`PhasePeaks`: one entry per phase, in order, in GB; phases run in a child process are named as such; the
    run's peak is the largest phase's. (The structure only: the values depend on the machine.)"""
    peaks = PhasePeaks()
    with peaks.phase("load"):
        block = bytearray(20_000_000)
        del block
    with peaks.phase("train"):
        pass
    peaks.add("conversion", 123_000_000)
    report = peaks.report()
    assert set(report) == {"phases_gb", "peak_gb", "per_phase", "child_processes"}
    assert list(report["phases_gb"]) == ["load", "train", "conversion"]
    assert all(isinstance(gb, float) and gb > 0 for gb in report["phases_gb"].values())
    assert report["peak_gb"] == max(report["phases_gb"].values())
    assert report["child_processes"] == ["conversion"] and isinstance(report["per_phase"], bool)
    summary = peaks.summary()
    assert summary.startswith("Peak RSS (GB) per phase") and "conversion (child process)" in summary


def test_written_generated_data_reads_back_as_the_homework_files(tmp_path):
    """`homework_data.py --out DIR` writes train.json / valid.json in the homework's format: `load_homework_data`
    reads back the generated splits (what the CLI recipe trains on)."""
    from homework_data import main as write_main

    out = write_main(["--out", str(tmp_path / "data"), "--train", "5", "--valid", "3", "--seed", "2"])
    assert load_homework_data(out) == homework_splits(5, 3, seed=2)
