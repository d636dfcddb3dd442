"""M-RoPE position ids for Qwen2.5-VL, computed on the host in numpy.

Every token gets three positions (temporal, height, width). Text tokens advance all three
together; an image run starting at offset ``cur`` gets T=cur, H=cur+row, W=cur+col over its
merged grid, after which ``cur`` jumps by ``max(h, w) / merge``. The result equals transformers
5.x ``Qwen2_5_VLModel.get_rope_index`` (images only; videos are rejected).
"""
from __future__ import annotations

import numpy as np

from codedance_jax.processing.image import image_token_count

IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652

TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2


def mm_token_type_ids_from_ids(input_ids, image_token_id: int = IMAGE_TOKEN_ID,
                               video_token_id: int = VIDEO_TOKEN_ID) -> np.ndarray:
    """0 for text, 1 for image pads, 2 for video pads; int32, same shape as ``input_ids``."""
    input_ids = np.asarray(input_ids)
    token_types = (input_ids == image_token_id).astype(np.int32)
    token_types[input_ids == video_token_id] = VIDEO_TYPE
    return token_types


def _runs(token_types: np.ndarray) -> list[tuple[int, int, int]]:
    """Split a 1-D type array into maximal runs: (type, start, end)."""
    if token_types.size == 0:
        return []
    starts = np.flatnonzero(np.diff(token_types)) + 1
    bounds = np.concatenate([[0], starts, [token_types.size]])
    return [(int(token_types[s]), int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]


def _image_positions(grid_thw, start: int, spatial_merge_size: int) -> np.ndarray:
    """[3, t*h*w/merge^2] positions of one image's merged tokens, row-major over (t, h, w)."""
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // spatial_merge_size, w // spatial_merge_size
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt, hh, ww]).reshape(3, -1) + start


def _positions_for_sequence(token_types, grids, next_grid: int, start: int, spatial_merge_size: int,
                            where: str) -> tuple[np.ndarray, int, int]:
    """Positions of one unpadded sequence.

    Image runs consume ``grids`` in order from index ``next_grid``. Returns
    (positions [3, L], the offset after the sequence, the index of the next unused grid).
    """
    pieces = []
    cur = start
    for kind, begin, end in _runs(token_types):
        length = end - begin
        if kind == TEXT_TYPE:
            pieces.append(np.broadcast_to(np.arange(length) + cur, (3, length)))
            cur += length
            continue
        if kind != IMAGE_TYPE:
            kind_name = "video" if kind == VIDEO_TYPE else f"type-{kind}"
            raise ValueError(f"{where}: {kind_name} tokens at {begin} are not supported (text and images only)")
        if next_grid >= len(grids):
            raise ValueError(
                f"{where}: image {next_grid} at token {begin} has no grid "
                f"(only {len(grids)} image grids given)")
        grid = grids[next_grid]
        expected = image_token_count(grid, spatial_merge_size)
        if length != expected:
            raise ValueError(
                f"{where}: image {next_grid} at token {begin} has {length} image pad tokens but "
                f"its grid {[int(x) for x in grid]} needs {expected}")
        pieces.append(_image_positions(grid, cur, spatial_merge_size))
        cur += max(int(grid[1]), int(grid[2])) // spatial_merge_size
        next_grid += 1
    positions = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
    return positions, cur, next_grid


def _as_grids(image_grid_thw) -> np.ndarray:
    if image_grid_thw is None:
        return np.zeros((0, 3), np.int64)
    return np.asarray(image_grid_thw, np.int64).reshape(-1, 3)


def get_rope_index(input_ids, image_grid_thw=None, attention_mask=None, *, spatial_merge_size: int = 2,
                   image_token_id: int = IMAGE_TOKEN_ID, vision_start_token_id: int = VISION_START_TOKEN_ID,
                   video_token_id: int = VIDEO_TOKEN_ID, mm_token_type_ids=None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions for a batch, as transformers 5.x computes them.

    Args:
      input_ids: [B, L] token ids with image pads already expanded.
      image_grid_thw: [n_images, 3] grids of all images in the batch, in order of appearance
        (batch row by batch row).
      attention_mask: [B, L], 1 for real tokens. Positions are computed over the real tokens only;
        padded slots get position 0 (as in transformers 5.x). A row with no real token gets all
        zeros and delta 0.
      mm_token_type_ids: [B, L] 0 text / 1 image / 2 video; derived from ``image_token_id`` when
        not given. Video is not supported.
      vision_start_token_id: accepted for signature parity; runs are found from the token types.

    Returns:
      position_ids int32 [3, B, L] and rope_deltas int32 [B, 1] (max position + 1 - real length), which
      decoding adds to the cache index to continue the positions.

    Raises:
      ValueError: naming the batch row and counts when image pads and grids disagree, or when video
        tokens appear.
    """
    del vision_start_token_id
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if mm_token_type_ids is None:
        mm_token_type_ids = mm_token_type_ids_from_ids(input_ids, image_token_id, video_token_id)
    token_types = np.asarray(mm_token_type_ids)
    mask = (np.ones(input_ids.shape, bool) if attention_mask is None
            else np.asarray(attention_mask).astype(bool))
    if token_types.shape != input_ids.shape or mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {input_ids.shape}, mm_token_type_ids {token_types.shape} and "
                         f"attention_mask {mask.shape} must have the same shape")
    grids = _as_grids(image_grid_thw)

    batch, length = input_ids.shape
    position_ids = np.zeros((3, batch, length), np.int32)
    rope_deltas = np.zeros((batch, 1), np.int32)
    next_grid = 0
    for row in range(batch):
        where = f"batch index {row}"
        positions, _, next_grid = _positions_for_sequence(
            token_types[row][mask[row]], grids, next_grid, 0, spatial_merge_size, where)
        if positions.shape[1] == 0:
            continue
        position_ids[:, row, mask[row]] = positions
        rope_deltas[row, 0] = positions.max() + 1 - positions.shape[1]
    if next_grid != len(grids):
        raise ValueError(f"the batch has {next_grid} images but {len(grids)} image grids were given")
    return position_ids, rope_deltas


def continuation_positions(new_ids, image_grid_thw=None, start: int = 0, *, spatial_merge_size: int = 2,
                           image_token_id: int = IMAGE_TOKEN_ID, video_token_id: int = VIDEO_TOKEN_ID,
                           mm_token_type_ids=None) -> tuple[np.ndarray, int]:
    """Positions for tokens appended to a sequence whose next offset is ``start``.

    ``start`` is the sequence's max position + 1 (0 for an empty sequence); for a sequence of
    ``n`` tokens it equals ``n + rope_delta``. ``new_ids`` must begin at a run boundary (an image's
    pads are never split between the prefix and the continuation); ``image_grid_thw`` holds
    exactly the grids of the images inside ``new_ids``.

    Returns (positions int32 [3, len(new_ids)], the offset after the appended tokens).
    """
    new_ids = np.asarray(new_ids).reshape(-1)
    if mm_token_type_ids is None:
        mm_token_type_ids = mm_token_type_ids_from_ids(new_ids, image_token_id, video_token_id)
    token_types = np.asarray(mm_token_type_ids).reshape(-1)
    grids = _as_grids(image_grid_thw)
    positions, end, used = _positions_for_sequence(token_types, grids, 0, int(start), spatial_merge_size,
                                                   "continuation")
    if used != len(grids):
        raise ValueError(f"the continuation has {used} images but {len(grids)} image grids were given")
    return positions.astype(np.int32), end
