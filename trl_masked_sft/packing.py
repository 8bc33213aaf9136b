"""In-batch packing: the rows of one training batch laid end to end in fewer, fuller rows, so padding costs nothing.

The batch keeps its rows (the sampler's order, the same tokens, the same labels): only their layout changes. Each
packed row carries `position_ids` that restart at 0 where an original row starts and no `attention_mask`; from
these, transformers (>= 4.54, `masking_utils.find_packed_sequence_indices`) builds a block-diagonal causal mask for
the `sdpa`, `eager` and `flex_attention` implementations, so a token attends only to the tokens of its own row, at
the same positions as without packing. The flash-attention implementations read the same boundaries from
`position_ids` but only from a single row, so for them the batch is packed into one row. The first label of each
original row is set to `ignore_index`: after the causal shift it would be predicted from the previous row's last
token (unpacked, position 0 is never a target), so the supervised tokens, their count and the loss are unchanged.
transformers 4.x's `Trainer` counts a supervised first label in the loss's divisor all the same, so there a batch with
such a row (text or whole-sequence loss) is padded, not packed; completion-only batches are packed on both lines.

Whether a model honours packed `position_ids` is not assumed: `packing_is_exact` runs the model once on a few short
rows, packed and unpacked, and packing is used only when the two agree. Prompt-learning PEFT models (prompt tuning,
p-tuning, prefix tuning) are never packed: their virtual tokens are prepended (or given as a key/value prefix) once
per row of the batch, so in a packed row only the first original row would see them (`virtual_token_count`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch

from .hf_compat import COUNTS_UNSHIFTED_LABELS, active_peft_config
from .logs import get_logger
from .masking import IGNORE_INDEX

__all__ = [
    "PACKED_TOKENS_KEY",
    "PackingCollator",
    "pack_rows",
    "packing_blocker",
    "packing_is_exact",
    "virtual_token_count",
]

logger = get_logger(__name__)

#: Rows shorter than this are packed up to this width: attention over a few hundred positions costs little next to
#: the linear layers, and wider rows leave less padding. Rows longer than this are packed up to the longest row, so
#: no packed row is longer than the batch's longest row and attention never costs more than in the padded batch.
PACK_MIN_WIDTH = 128
#: Collator output key: the number of real (non-padding) tokens of a packed batch, a Python int (no device copy,
#: no host sync). The trainer pops it before the forward pass.
PACKED_TOKENS_KEY = "msft_packed_tokens"


def _bins(lengths: torch.Tensor, capacity: int) -> torch.Tensor:
    """Bin of each row: longest first, dealt out back and forth ("snake" order, which balances the bins' totals).

    Of the bin counts whose fullest bin holds at most `capacity` tokens, the one with the fewest padded positions
    (bins x fullest bin) wins; one row per bin always fits (`capacity` is at least the longest row). A few vectorised
    passes, no loop over the rows.
    """
    n = lengths.numel()
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order]
    rank = torch.arange(n)
    longest = int(sorted_lengths[0])
    best_cost, best_slot = None, None
    first = max(1, math.ceil(int(lengths.sum()) / capacity))
    for count in range(first, min(n, first + 16) + 1):
        if best_cost is not None and count * longest >= best_cost:
            break  # no larger count can pad less: each bin is at least as wide as the longest row
        turn, place = rank // count, rank % count
        slot = torch.where(turn % 2 == 0, place, count - 1 - place)
        width = int(torch.zeros(count, dtype=lengths.dtype).index_add_(0, slot, sorted_lengths).max())
        if width <= capacity and (best_cost is None or count * width < best_cost):
            best_cost, best_slot = count * width, slot
    if best_slot is None:  # nothing fit within the candidates tried: one row per bin
        best_slot = rank
    bins = torch.empty_like(best_slot)
    bins[order] = best_slot
    return bins


def _layout(lengths: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(bin, start inside its bin)` of each row and each bin's total: rows keep their batch order inside a bin."""
    bins = _bins(lengths, capacity)
    n = lengths.numel()
    order = torch.argsort(bins * n + torch.arange(n))
    ordered_lengths, ordered_bins = lengths[order], bins[order]
    starts = torch.cumsum(ordered_lengths, 0) - ordered_lengths
    bins_count = int(bins.max()) + 1
    total = int(lengths.sum())
    bin_starts = torch.full((bins_count,), total, dtype=torch.long).scatter_reduce_(0, ordered_bins, starts, "amin")
    offsets = torch.empty_like(starts)
    offsets[order] = starts - bin_starts[ordered_bins]
    totals = torch.zeros(bins_count, dtype=torch.long).index_add_(0, ordered_bins, ordered_lengths)
    return bins, offsets, totals


def pack_rows(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    ignore_index: int = IGNORE_INDEX,
    min_width: int = PACK_MIN_WIDTH,
    pad_to_multiple_of: int | None = None,
    single_row: bool = False,
) -> dict[str, Any]:
    """Pack rows into as few rows as fit `max(longest row, min_width)` tokens each (one row with `single_row`).

    Returns `input_ids`, `labels` and `position_ids` of shape `(packed rows, width)`, and under `PACKED_TOKENS_KEY`
    the number of real tokens (an int). Each original row is copied whole and contiguous; its positions run
    `0..len-1`; its first label becomes `ignore_index`. The tail of a packed row is padding: `pad_token_id`, label
    `ignore_index`, positions restarting at 0 (a segment of its own, which no real token can attend to).
    No Python loop runs over the rows or tokens.
    """
    if len(input_ids) == 0:
        raise ValueError("`pack_rows` received no rows; the batch is empty.")
    lengths = torch.tensor(list(map(len, input_ids)), dtype=torch.long)
    if int(lengths.min()) == 0:
        raise ValueError("`pack_rows` received an empty row; every row needs at least one token.")
    flat_ids = torch.tensor(list(chain.from_iterable(input_ids)), dtype=torch.long)
    flat_labels = torch.tensor(list(chain.from_iterable(labels)), dtype=torch.long)
    if flat_labels.numel() != flat_ids.numel():
        raise ValueError("`pack_rows`: every row's `labels` must have one entry per token of its `input_ids`.")
    total = int(lengths.sum())
    capacity = total if single_row else max(int(lengths.max()), min_width)
    bins, offsets, totals = _layout(lengths, capacity)

    # Token level, in the flat batch order: the packed row and column of each token, and its position in its row.
    within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    row = torch.repeat_interleave(bins, lengths)
    column = torch.repeat_interleave(offsets, lengths) + within

    width = int(totals.max())
    if pad_to_multiple_of:
        width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
    bins_count = totals.numel()
    packed_ids = torch.full((bins_count, width), pad_token_id, dtype=torch.long)
    packed_labels = torch.full((bins_count, width), ignore_index, dtype=torch.long)
    positions = (torch.arange(width).repeat(bins_count, 1) - totals[:, None]).clamp_(min=0)  # padding: 0, 1, ...
    packed_ids[row, column] = flat_ids
    packed_labels[row, column] = flat_labels.masked_fill(within == 0, ignore_index)
    positions[row, column] = within
    return {
        "input_ids": packed_ids,
        "labels": packed_labels,
        "position_ids": positions,
        PACKED_TOKENS_KEY: total,
    }


def virtual_token_count(model) -> int:
    """Number of virtual tokens a prompt-learning PEFT adapter (prompt tuning, p-tuning, prefix tuning) adds to each
    row; 0 for any other model (a plain model, LoRA and the other adapters that change weights only).

    Prompt tuning and p-tuning prepend that many embeddings to each row, so the logits are that much longer than
    `input_ids`; prefix tuning gives them as a key/value prefix instead. Wrappers with a `.module` (DDP) are looked
    through.
    """
    config = active_peft_config(model)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return int(getattr(config, "num_virtual_tokens", 0) or 0)


def _single_row(model) -> bool:
    """Flash-attention kernels find packed rows from `position_ids` only in a batch of one row."""
    config = getattr(model, "config", None)
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


class PackingCollator:
    """Collate prepared rows (`input_ids` and `labels`) into a packed batch (see `pack_rows`).

    Rows without `labels`, or already packed by TRL (`seq_lengths`), go to `fallback`, the collator that would have
    been used without packing.
    """

    def __init__(
        self,
        *,
        pad_token_id: int,
        fallback,
        ignore_index: int = IGNORE_INDEX,
        pad_to_multiple_of: int | None = None,
        single_row: bool = False,
    ):
        self.pad_token_id = pad_token_id
        self.fallback = fallback
        self.ignore_index = ignore_index
        self.pad_to_multiple_of = pad_to_multiple_of
        self.single_row = single_row

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        first = examples[0] if examples else {}
        if "labels" not in first or "seq_lengths" in first:
            return self.fallback(examples)
        if COUNTS_UNSHIFTED_LABELS and any(
            len(e["labels"]) and int(e["labels"][0]) != self.ignore_index for e in examples
        ):
            # transformers 4.x counts a supervised first label in the loss's divisor; packing masks it (it would be
            # a target in a packed row), which would change the loss: such batches are padded as TRL pads them.
            return self.fallback(examples)
        return pack_rows(
            [example["input_ids"] for example in examples],
            [example["labels"] for example in examples],
            pad_token_id=self.pad_token_id,
            ignore_index=self.ignore_index,
            pad_to_multiple_of=self.pad_to_multiple_of,
            single_row=self.single_row,
        )


@torch.no_grad()
def packing_is_exact(model, *, pad_token_id: int, tolerance: float | None = None) -> bool:
    """Whether `model` gives the same logits for short rows packed (as `PackingCollator` packs them) and alone.

    Runs the model (in eval mode, without gradients) on four deterministic rows of 3 to 7 tokens: once each alone,
    once packed into two rows with a padded tail (one row for flash attention). A model whose attention ignores the
    restarting `position_ids` lets packed rows see each other and fails. `tolerance` is relative to the largest
    logit (default 1e-4 in float32, 3e-2 in half precision). Any error in the packed forward, or logits of another
    length than the rows, counts as a failure.
    A prompt-learning PEFT model (`virtual_token_count` > 0) is never packed: its virtual tokens belong to each
    original row, which packing can't give them; that is said in the log and no forward pass is run.
    """
    if virtual_token_count(model):
        logger.info(
            "`pack_within_batch`: a prompt-learning PEFT adapter (prompt tuning, p-tuning or prefix tuning) adds "
            f"{virtual_token_count(model)} virtual tokens to each row, which a packed row can't give each of its "
            "rows; training batches stay padded."
        )
        return False
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    parameter = next(model.parameters(), None)
    if not vocab or parameter is None:
        return False
    device, dtype = parameter.device, parameter.dtype
    if tolerance is None:
        tolerance = 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 3e-2
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (5, 7, 3, 6)]
    single_row = _single_row(model)
    packed = pack_rows(rows, rows, pad_token_id=pad_token_id, min_width=12, single_row=single_row)
    was_training = model.training
    model.eval()
    try:
        alone = [
            model(input_ids=torch.tensor([row], device=device), use_cache=False).logits[0].float() for row in rows
        ]
        logits = model(
            input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device), use_cache=False
        ).logits.float()
    except Exception:  # a model that can't take packed rows trains unpacked
        return False
    finally:
        model.train(was_training)
    lengths_seen = [reference.shape[0] for reference in alone]
    if logits.shape[:2] != packed["input_ids"].shape or lengths_seen != [len(row) for row in rows]:
        return False  # one logit per token is what packing needs; more means tokens the model adds of its own
    lengths = torch.tensor([len(row) for row in rows])
    capacity = int(lengths.sum()) if single_row else max(int(lengths.max()), 12)
    bins, offsets, _ = _layout(lengths, capacity)
    for index, reference in enumerate(alone):
        start = int(offsets[index])
        got = logits[int(bins[index]), start : start + len(rows[index])]
        scale = float(reference.abs().max()) or 1.0
        if not torch.allclose(got, reference, rtol=0, atol=tolerance * scale):
            return False
    return True


def packing_blocker(trainer, *, custom_collator: bool, base: type) -> str | None:
    """Why `trainer`'s training batches can't be packed exactly, or `None`. `custom_collator`: the user passed a
    `data_collator`; `base`: the trainer class whose `compute_loss`/`training_step` take packed batches."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    args, collator = trainer.args, trainer.data_collator
    split = getattr(getattr(args, "accelerator_config", None), "split_batches", False)
    if custom_collator or not isinstance(collator, DataCollatorForLanguageModeling):
        return "a custom `data_collator` is used"
    if args.packing or getattr(trainer, "padding_free", False) or getattr(trainer, "_is_vision_dataset", False):
        return "`packing`/`padding_free` or a vision dataset lays out the batches"
    if trainer.compute_loss_func is not None:
        return "a `compute_loss_func` may expect one row per example"
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return "DeepSpeed/FSDP are not supported by the packing check"
    if args.world_size > 1 and (isinstance(trainer.train_dataset, torch.utils.data.IterableDataset) or split):
        return "batches are split or dispatched across processes"
    if type(trainer).compute_loss is not base.compute_loss or type(trainer).training_step is not base.training_step:
        return "a subclass overrides `compute_loss`/`training_step`, which get TRL's batch (a row per example)"
    if virtual_token_count(trainer.model):
        return "a prompt-learning PEFT adapter (prompt tuning, p-tuning, prefix tuning) adds virtual tokens"
    if not packing_is_exact(trainer.model, pad_token_id=collator.pad_token_id):
        return "the model gives different logits for rows packed and alone (its attention ignores position ids)"
    return None
