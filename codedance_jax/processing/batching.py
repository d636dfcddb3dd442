"""Collate rendered conversations into fixed-shape numpy batches.

Sequences are right-padded to the smallest length bucket that fits the longest one, and the
image patch rows to the smallest patch bucket that fits them all, so a jitted step sees only a
few distinct shapes. Nothing is ever truncated: an input that does not fit is an error.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from codedance_jax.processing.chat import RenderedChat
from codedance_jax.processing.image import ImageProcessingConfig, preprocess_images
from codedance_jax.processing.rope_index import get_rope_index

ENDOFTEXT_ID = 151643  # Qwen's pad token


@dataclasses.dataclass
class Batch:
    """Padded model inputs. Padded tokens have attention, loss and position 0."""
    input_ids: np.ndarray          # int32 [B, L]
    attention_mask: np.ndarray     # int32 [B, L]
    position_ids: np.ndarray       # int32 [3, B, L], M-RoPE (T, H, W)
    rope_deltas: np.ndarray        # int32 [B, 1]
    loss_mask: np.ndarray          # int32 [B, L]
    mm_token_type_ids: np.ndarray  # int32 [B, L]: 0 text, 1 image pad
    pixel_values: np.ndarray       # float32 [P, 1176]; rows past num_valid_patches are zero
    image_grid_thw: np.ndarray     # int64 [n_images, 3], unpadded (host-side metadata)
    num_valid_patches: int         # real rows of pixel_values: sum of t*h*w over the images


def _checked_buckets(buckets: Sequence[int], what: str) -> tuple[int, ...]:
    buckets = tuple(buckets)
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"{what} buckets must be strictly increasing positive ints, got {buckets}")
    return buckets


def choose_bucket(size: int, buckets: Sequence[int], what: str) -> int:
    """The smallest bucket >= size. ``buckets`` must be strictly increasing positive ints."""
    buckets = _checked_buckets(buckets, what)
    for bucket in buckets:
        if size <= bucket:
            return bucket
    raise ValueError(f"{what} {size} exceeds the largest bucket {buckets[-1]}")


def collate(sequences: Sequence[RenderedChat], *, length_buckets: Sequence[int],
            patch_buckets: Sequence[int] | None = None, batch_size: int | None = None,
            pad_id: int = ENDOFTEXT_ID, image_config: ImageProcessingConfig = ImageProcessingConfig()
            ) -> Batch:
    """Pads ``sequences`` into one batch and preprocesses their images in order.

    Args:
      sequences: outputs of ``render_chat``.
      length_buckets: allowed padded lengths L (increasing).
      patch_buckets: allowed pixel_values row counts P (increasing); None keeps the exact count.
      batch_size: pad the batch with empty rows (all masks 0) up to this many; None keeps
        ``len(sequences)``.
      pad_id: token id written into padded slots.
    """
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    rows = len(sequences) if batch_size is None else batch_size
    if rows < len(sequences):
        raise ValueError(f"batch_size {batch_size} is smaller than the {len(sequences)} sequences given")
    longest_allowed = _checked_buckets(length_buckets, "sequence length")[-1]
    for index, sequence in enumerate(sequences):
        if len(sequence.input_ids) > longest_allowed:
            raise ValueError(f"sequence {index} has {len(sequence.input_ids)} tokens, more than the largest "
                             f"length bucket {longest_allowed}")
    length = choose_bucket(max(len(s.input_ids) for s in sequences), length_buckets, "sequence length")

    input_ids = np.full((rows, length), pad_id, np.int32)
    attention_mask = np.zeros((rows, length), np.int32)
    loss_mask = np.zeros((rows, length), np.int32)
    mm_token_type_ids = np.zeros((rows, length), np.int32)
    for row, sequence in enumerate(sequences):
        n = len(sequence.input_ids)
        input_ids[row, :n] = sequence.input_ids
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = sequence.loss_mask
        mm_token_type_ids[row, :n] = sequence.mm_token_type_ids

    pixel_values, grids = preprocess_images([image for s in sequences for image in s.images], image_config)
    num_valid_patches = len(pixel_values)
    if patch_buckets is not None:
        patch_rows = choose_bucket(num_valid_patches, patch_buckets, "image patch rows")
        pixel_values = np.pad(pixel_values, ((0, patch_rows - num_valid_patches), (0, 0)))

    position_ids, rope_deltas = get_rope_index(
        input_ids, grids, attention_mask, spatial_merge_size=image_config.merge_size,
        mm_token_type_ids=mm_token_type_ids)
    return Batch(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 rope_deltas=rope_deltas, loss_mask=loss_mask, mm_token_type_ids=mm_token_type_ids,
                 pixel_values=pixel_values, image_grid_thw=grids, num_valid_patches=num_valid_patches)
