"""Tokenization of rows that are plain text: prompt/completion strings (the `[question, answer]` rows become those),
or one text column, in batches, with the labels built in the same pass.

A prompt/completion row is tokenized as generation sees it: the prompt's ids (with the bos its tokenizer adds), then
the completion's ids (tokenized alone, no special token), then the eos. The model is given the prompt's ids and
generates the completion from there, so no token holds bytes of both: the prompt is never trained, every completion
byte and the eos are. Tokenized together instead, the two can merge into one token across the boundary
(`"…France is Par"` + `"is, of course."` gives `" Paris"` with Llama 3's vocabulary; a prompt ending in a space gives
`" hello"`), which TRL trains with its prompt bytes (`trl.data_utils.common_prefix_length`: the completion starts at
the first token where prompt+completion diverges from the prompt alone). Such rows are marked (`MERGED`) for the
audit. Where there is no merge, both tokenizations are the same ids.
"""

from __future__ import annotations

from datasets import Dataset, IterableDataset
from trl.data_utils import common_prefix_length

from .errors import DatasetTypeError
from .hf_compat import in_memory_kwargs
from .layout import Layout
from .logs import get_logger
from .masking import IGNORE_INDEX
from .options import MaskingOptions
from .policies import MERGED
from .row_checks import check_text, find_unencodable
from .text import clip_end, clip_start, token_pieces, visible

__all__ = ["appends_eos", "completion_anchor", "tokenize_text_rows"]

_PROBE = "x"


def tokenize_text_rows(
    dataset: Dataset | IterableDataset,
    tokenizer,
    layout: Layout,
    options: MaskingOptions,
    dataset_name: str,
) -> Dataset | IterableDataset:
    """Tokenize string prompt/completion or text rows, batched (1000 rows a tokenizer call), labels included.

    Text rows are TRL's (`SFTTrainer._prepare_dataset`, trl 1.16): the eos appended where the text lacks it, every
    token a label. Prompt/completion rows: `input_ids` = the prompt's ids + the completion's ids + eos (see the
    module's docstring); `labels` = `input_ids` with the prompt's ids set to `IGNORE_INDEX` when `completion_only`.
    The `completion` column gets its eos, as TRL's does; `MERGED` says whether prompt+completion tokenized together
    would have given other ids (a merge across the boundary), the same ids as TRL's where it is False.
    """
    pairs = layout is Layout.PROMPT_COMPLETION
    text_field, eos, eos_id = options.text_field, tokenizer.eos_token, tokenizer.eos_token_id
    own_eos = appends_eos(tokenizer)
    anchor = completion_anchor(tokenizer) if pairs else ""
    skip = len(tokenizer(anchor, add_special_tokens=False)["input_ids"]) if anchor else 0
    said: list[bool] = []

    def with_eos(values: list[str], indices: list[int]) -> list[str]:
        if not pairs:  # streamed text rows (prompt/completion rows were checked by `check_values`)
            check_text(values, text_field, dataset_name, start=indices[0])
        if own_eos:  # the tokenizer adds the eos itself: one more in the text would train two
            return [value[: -len(eos)] if value.endswith(eos) else value for value in values]
        return [value if eos is None or value.endswith(eos) else value + eos for value in values]

    def encode(texts: list[str], indices: list[int], special: bool = True) -> list[list[int]]:
        try:
            return tokenizer(text=texts, add_special_tokens=special)["input_ids"]
        except (TypeError, ValueError) as error:
            bad = find_unencodable(texts)
            if bad is None:
                raise
            raise DatasetTypeError(
                f"Row {indices[bad[0]]} of the {dataset_name} dataset: its text is not valid Unicode (a lone surrogate "
                f"at character {bad[1]}, as bytes decoded with errors='surrogateescape' leave). Fix: decode the source "
                "with errors='replace', or remove the row."
            ) from error

    def without_own_eos(rows: list[list[int]]) -> list[list[int]]:
        return [ids[:-1] if own_eos and ids and ids[-1] == eos_id else ids for ids in rows]

    def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        if not pairs:
            texts = with_eos(batch[text_field], indices)
            ids = encode(texts, indices)
            return {text_field: texts, "input_ids": ids, "labels": [list(row) for row in ids]}
        prompts, completions = batch["prompt"], with_eos(batch["completion"], indices)
        prompt_ids = without_own_eos(encode(prompts, indices))
        joint = encode([p + c for p, c in zip(prompts, completions, strict=True)], indices)
        if anchor is None:  # no way to tokenize a completion alone without a byte it lacks: TRL's rule
            starts = [
                common_prefix_length(prompt, together) for prompt, together in zip(prompt_ids, joint, strict=True)
            ]
            merged = [start < len(prompt) for start, prompt in zip(starts, prompt_ids, strict=True)]
            prompt_ids = [together[:start] for start, together in zip(starts, joint, strict=True)]
            completion_ids = [together[start:] for start, together in zip(starts, joint, strict=True)]
        else:
            alone = encode([anchor + c for c in completions], indices, special=False)
            completion_ids = [ids[skip:] for ids in alone]
            if own_eos:  # the eos the tokenizer appends to a whole text, taken off the text above
                completion_ids = [ids + [eos_id] for ids in completion_ids]
            merged = [p + c != j for p, c, j in zip(prompt_ids, completion_ids, joint, strict=True)]
        input_ids = [prompt + completion for prompt, completion in zip(prompt_ids, completion_ids, strict=True)]
        labels = [
            [IGNORE_INDEX] * len(prompt) + completion if options.completion_only else list(ids)
            for prompt, completion, ids in zip(prompt_ids, completion_ids, input_ids, strict=True)
        ]
        if any(merged) and not said:
            said.append(True)
            i = merged.index(True)
            _merge_warning(
                tokenizer, prompts[i], batch["completion"][i], joint[i], prompt_ids[i], apart=anchor is not None
            )
        return {"completion": completions, "input_ids": input_ids, "labels": labels, MERGED: merged}

    if isinstance(dataset, IterableDataset):
        return dataset.map(tokenize, batched=True, with_indices=True)
    num_proc = options.num_proc
    kwargs = in_memory_kwargs(dataset) if not num_proc or num_proc <= 1 else {}  # num_proc > 1 hashes per shard
    desc = f"Tokenizing {dataset_name} dataset"
    return dataset.map(tokenize, batched=True, with_indices=True, num_proc=num_proc, desc=desc, **kwargs)


def appends_eos(tokenizer) -> bool:
    """Whether the tokenizer's post-processor appends the eos token to every text by itself (T5, some Llama and
    Gemma setups): then the eos must not be appended to the text as well, or each row would train two."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    added = tokenizer("a")["input_ids"]
    return len(added) > len(plain) and added[-1] == eos_id and plain[-1:] != [eos_id]


def _text_bytes(tokenizer, ids: list[int]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in token_pieces(tokenizer, ids))


def completion_anchor(tokenizer) -> str | None:
    """The text put before a completion tokenized alone, whose ids are then dropped: `""` where a text tokenized
    alone holds exactly its own bytes (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM2, DeepSeek); a special token
    where the tokenizer puts a space before a text that starts the input (SentencePiece's `▁`), a byte the
    completion does not have; `None` where neither gives the completion's bytes (then TRL's rule applies)."""
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if _text_bytes(tokenizer, plain) == _PROBE.encode():
        return ""
    # A SentencePiece-style tokenizer puts a space (`▁`) before a text that starts it (`prepend_scheme="first"`,
    # Llama 2, Mistral, Gemma): after a special token the text is no longer first, so it keeps its own bytes.
    for anchor in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token, tokenizer.pad_token):
        if not anchor:
            continue
        skip = len(tokenizer(anchor, add_special_tokens=False)["input_ids"])
        ids = tokenizer(anchor + _PROBE, add_special_tokens=False)["input_ids"][skip:]
        if _text_bytes(tokenizer, ids) == _PROBE.encode():
            return anchor
    return None


def _merge_warning(
    tokenizer, prompt: str, completion: str, together: list[int], prompt_ids: list[int], *, apart: bool
):
    """Said once: a row whose prompt and completion merge into other tokens when tokenized together."""
    same = common_prefix_length(prompt_ids, together)
    where = (
        f"(prompt ends {visible(clip_end(prompt, 30))!r}, completion starts {visible(clip_start(completion, 30))!r}; "
        f"together: the token {visible(tokenizer.decode(together[same : same + 1]))!r})"
    )
    if apart:
        said = (
            "They are tokenized as generation sees them: the prompt's ids, then the completion's, so the prompt is "
            "not trained and every byte of the completion is (TRL would train the merged token, prompt bytes and all)."
        )
    else:
        said = (
            "This tokenizer puts a space before any text tokenized alone, so they are tokenized together and the "
            "completion starts where that differs from the prompt alone (TRL's rule): the merged token is trained, "
            "with its prompt bytes. To avoid it, end the prompt on a token boundary (start the completion with a space)."
        )
    get_logger(__name__).warning(
        f"A prompt and its completion merge across their boundary when tokenized together {where}. {said} The "
        "pre-flight audit counts these rows (`rows_merged_boundary`). Shown once."
    )
