"""Length-sorted, left-padded batches for scoring and generation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import torch
from tqdm import tqdm

# How often (seconds) a scorer's progress bar writes a line: often enough to see a long
# generation job move in its log, seldom enough to keep the log short.
PROGRESS_SECONDS = 30


def progress(total: int, desc: str) -> tqdm:
    """A progress bar over a scorer's items, updated per batch, written to the job's log (stderr)."""
    return tqdm(total=total, desc=desc, unit="item", mininterval=PROGRESS_SECONDS, leave=False)


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``, without waiting for the work queued there.

    A plain host-to-GPU copy waits until the GPU has finished everything queued before it, so a
    scorer that builds its next batch while the GPU runs the last one would stall at every copy;
    from pinned memory the copy is queued like a kernel instead. Scorers then read their results
    back once, after the last batch.
    """
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first (fails early on memory)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


_DEFAULT_MAX_LENGTH = 2048
# transformers' placeholder for "no limit" in tokenizer.model_max_length.
_UNSET_TOKENIZER_LENGTH = int(1e30)


def model_max_length(model, tokenizer=None) -> int:
    """The model's context window, found as lm-evaluation-harness's HF backend finds it."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value is not None:
            return int(value)
    tok_len = getattr(tokenizer, "model_max_length", None)
    if tok_len is not None and tok_len < _UNSET_TOKENIZER_LENGTH:
        return int(tok_len)
    return _DEFAULT_MAX_LENGTH


def context_limit(model, reserve: int = 0) -> int:
    """Most prompt tokens the model can take while leaving ``reserve`` positions to generate."""
    return max(1, model_max_length(model) - reserve)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids of left-padded sequences.

    Position ids count real tokens only, so an example's scores do not depend on how much
    padding its batch needed.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of right-padded sequences (on the CPU)."""
    lengths = torch.tensor([len(s) for s in seqs])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    # Boolean-mask assignment fills row by row, i.e. in the order of the concatenated sequences;
    # one tensor for the whole batch instead of one per row keeps the host ahead of the GPU.
    ids[mask] = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.long)
    return ids, mask.long()
