"""The stop set of a run, from the model: its `generation_config.eos_token_id`, the tokenizer's eos, and the chat
template's end-of-turn token when the model would not stop on it (said before training, saved with the model).

The end-of-turn rule itself (which stop token each trained turn ends with) is `chat.end_of_turn.settle`; this module
only decides which ids the run passes to it (`MaskingOptions.stop_token_ids`) and writes them where generation reads
them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .chat.end_of_turn import GENERATION_CONFIG, GIVEN, TEMPLATE_EOT, TOKENIZER_EOS, template_closing
from .logs import get_logger, warn
from .options import MaskingOptions

__all__ = ["model_stop_ids", "read_generation_config", "generation_config_saved", "with_model_stops"]

logger = get_logger(__name__)


def _ids(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [int(i) for i in (value if isinstance(value, list | tuple) else [value]) if i is not None]


def read_generation_config(folder: str | Path) -> list[int] | None:
    """`eos_token_id` of a local model folder's `generation_config.json` (every id), or None where there is none."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    return _ids(json.loads(path.read_text(encoding="utf-8")).get("eos_token_id"))


def model_stop_ids(model: Any) -> list[int] | None:
    """The ids that end the model's generation (`generation_config.eos_token_id`, an int or a list; None where it
    has none). A model given as a path is read from its local folder."""
    if isinstance(model, str | Path):
        return read_generation_config(model)
    config = getattr(model, "generation_config", None)
    return _ids(getattr(config, "eos_token_id", None))


def with_model_stops(tokenizer: Any, options: MaskingOptions, model_ids: list[int] | None) -> MaskingOptions:
    """`options` with the run's stop set: the config's `stop_token_ids`, else the model's generation config, plus
    the tokenizer's eos. With the model's set, a template end-of-turn token it lacks (a base model trained with an
    Instruct template) is said once and added: it is trained, and `generation_config_saved` writes it."""
    if not options.chat or (options.stop_token_ids is None and model_ids is None):
        return options  # the default: the tokenizer's eos and the template's own end-of-turn token
    given = options.stop_token_ids is not None
    ids = list(options.stop_token_ids if given else model_ids)
    sources = [GIVEN if given else GENERATION_CONFIG] * len(ids)
    if (eos := tokenizer.eos_token_id) is not None and eos not in ids:
        ids, sources = [*ids, eos], [*sources, TOKENIZER_EOS]
    missing = [] if given else [i for i in template_closing(tokenizer)[:1] if i not in ids]
    if missing:
        names = ", ".join(repr(tokenizer.decode([i])) for i in ids)
        warn(
            f"The chat template ends each assistant turn with {tokenizer.decode(missing)!r}, which is not in the "
            f"model's stop set (generation_config.eos_token_id and the tokenizer's eos: {names}): a model trained to "
            "end its turns with it would not stop there. It is trained as each turn's stop token and added to the "
            "model's generation config (saved as generation_config.json beside the model or adapter). Fix, if the "
            "model should stop elsewhere: pass `stop_token_ids`, or a chat template that ends turns with a stop "
            "token (`chat_template_path`).",
            stacklevel=3,
        )
        ids, sources = ids + missing, sources + [TEMPLATE_EOT] * len(missing)
    return dataclasses.replace(options, stop_token_ids=tuple(ids), stop_sources=tuple(sources))


def _generation_config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "generation_config", None)


def add_to_generation_config(model: Any, options: MaskingOptions) -> None:
    """Put the template's end-of-turn tokens the run added (`with_model_stops`) into the model's generation config,
    so that generation from the trained model stops where its turns end."""
    added = [i for i, s in zip(options.stop_token_ids or (), options.stop_sources, strict=False) if s == TEMPLATE_EOT]
    config = _generation_config(model)
    if not added or config is None:
        return
    ids = _ids(config.eos_token_id) or []
    config.eos_token_id = ids + [i for i in added if i not in ids]


@contextmanager
def generation_config_saved(model: Any, output_dir: str | Path, options: MaskingOptions) -> Iterator[None]:
    """Around a save: the model's stop ids listed once (transformers 4.57's `_align_special_tokens` prepends the
    tokenizer's eos to `generation_config.eos_token_id` even when the list holds it), and afterwards the generation
    config written beside a saved PEFT adapter (`save_pretrained` writes it for a whole model, not for an adapter)
    when the run added stop tokens to it."""
    config = _generation_config(model)
    if config is not None and isinstance(config.eos_token_id, list):
        config.eos_token_id = list(dict.fromkeys(config.eos_token_id))
    yield
    if config is not None and hasattr(model, "get_base_model") and TEMPLATE_EOT in options.stop_sources:
        config.save_pretrained(output_dir)
