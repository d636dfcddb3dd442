"""Host-side (numpy) layout of image patches for the vision tower's window attention.

The reference implementation reorders patches so each attention window is contiguous and runs
variable-length attention over `cu_window_seqlens`. Under `jit` every shape must be static, so
we lay patches out in fixed-size *slots* instead: window k owns slots [k*W, (k+1)*W) with
W = window_patches (64 for Qwen2.5-VL); a partial window is padded with empty slots. Window
attention is then a batched [num_windows, W, W] attention, full attention is masked by frame,
and the number of windows is padded to a bucket so varied image sizes reuse one compilation.

Merge units (2x2 patches) never straddle windows, so groups of 4 consecutive slots are exactly
the merger's input groups; `merged_order` un-permutes the merged tokens back to image order.
Full attention stays within a frame: each window lists the windows of its frame
(`frame_windows`), so its cost grows with the largest image, not with the whole batch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from models.qwen2_5_vl.config import VisionConfig


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Static-shape description of one batch of images, all arrays numpy int32.

    patch_index:  [S] row of `pixel_values` that fills each slot, -1 for an empty slot.
    rope_hw:      [S, 2] (row, col) of the slot's patch inside its image, for the 2-D RoPE.
    frame_windows: [num_windows, F] for each window, the windows of its frame (full attention
                  attends to exactly these), -1 padded; F is the largest frame's window count
                  rounded up to a power of two.
    merged_order: [M] for each merged output token in image order, its merged slot (slot // 4);
                  entries past `num_merged` repeat 0 and are ignored.
    num_merged:   real merged tokens (what the text sequence's image pads must count).
    """
    patch_index: np.ndarray
    rope_hw: np.ndarray
    frame_windows: np.ndarray
    merged_order: np.ndarray
    num_merged: int

    @property
    def num_slots(self) -> int:
        return int(self.patch_index.shape[0])


def window_index(grid_thw: np.ndarray, cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Window order of merged tokens and window boundaries, as the reference defines them.

    Returns (window_index, cu_window_seqlens): merged-token indices in window order and the
    cumulative patch counts per non-empty window. Used to build the slot layout and to check
    it against the reference's own vectors.
    """
    win = cfg.window_merged
    order, cu = [], [0]
    offset = 0
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3):
        lh, lw = h // cfg.spatial_merge_size, w // cfg.spatial_merge_size
        ids = np.arange(t * lh * lw).reshape(t, lh, lw)
        # The reference always pads by `win - L % win`, adding a whole empty window when L is
        # divisible; empty windows are dropped below, so padding to a multiple is equivalent.
        nh, nw = -(-lh // win), -(-lw // win)
        padded = np.full((t, nh * win, nw * win), -1, dtype=np.int64)
        padded[:, :lh, :lw] = ids
        windows = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, -1)
        for window in windows:
            real = window[window >= 0]
            if real.size:
                order.append(real + offset)
                cu.append(cu[-1] + real.size * cfg.merge_unit)
        offset += t * lh * lw
    return np.concatenate(order) if order else np.zeros(0, np.int64), np.asarray(cu, np.int32)


def validate_grids(grid_thw: np.ndarray, cfg: VisionConfig, num_patch_rows: int | None = None) -> np.ndarray:
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    m = cfg.spatial_merge_size
    for i, (t, h, w) in enumerate(grid):
        if t < 1 or h < m or w < m or h % m or w % m:
            raise ValueError(f"image_grid_thw[{i}] = {[int(t), int(h), int(w)]}: h and w must be positive "
                             f"multiples of spatial_merge_size {m}")
    if num_patch_rows is not None and int(grid.prod(-1).sum()) != num_patch_rows:
        raise ValueError(f"pixel_values has {num_patch_rows} rows but image_grid_thw describes "
                         f"{int(grid.prod(-1).sum())} patches")
    return grid


def num_windows(grid_thw: np.ndarray, cfg: VisionConfig) -> int:
    win = cfg.window_merged
    m = cfg.spatial_merge_size
    return int(sum(t * -(-(h // m) // win) * -(-(w // m) // win)
                   for t, h, w in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)))


def build_layout(grid_thw: np.ndarray, cfg: VisionConfig, *, window_bucket: int | None = None,
                 merged_bucket: int | None = None) -> VisionLayout:
    """Slot layout for the images of `grid_thw`, padded to `window_bucket` windows (default: the
    exact count) and `merged_bucket` merged output tokens (default: one per merged slot, so the
    output shape depends on the window bucket only)."""
    grid = validate_grids(grid_thw, cfg)
    m, unit, wp = cfg.spatial_merge_size, cfg.merge_unit, cfg.window_patches
    n_windows = num_windows(grid, cfg)
    window_bucket = n_windows if window_bucket is None else window_bucket
    if window_bucket < n_windows:
        raise ValueError(f"images need {n_windows} attention windows, more than the bucket {window_bucket}")
    num_merged = int(grid.prod(-1).sum()) // unit
    merged_bucket = window_bucket * wp // unit if merged_bucket is None else merged_bucket
    if merged_bucket < num_merged:
        raise ValueError(f"images give {num_merged} merged tokens, more than the bucket {merged_bucket}")

    slots = window_bucket * wp
    patch_index = np.full(slots, -1, np.int32)
    rope_hw = np.zeros((slots, 2), np.int32)
    merged_order = np.zeros(max(merged_bucket, 1), np.int32)
    frame_ranges = []  # (first window, window count) of each frame

    win = cfg.window_merged
    window_slot = 0  # first slot of the current window
    merged_base = 0  # first merged-token index of the current image
    for t, h, w in grid:
        lh, lw = h // m, w // m
        for ti in range(t):
            frame_ranges.append((window_slot // wp, -(-lh // win) * -(-lw // win)))
            for wy in range(0, lh, win):
                for wx in range(0, lw, win):
                    slot = window_slot
                    for my in range(wy, min(wy + win, lh)):
                        for mx in range(wx, min(wx + win, lw)):
                            unit_id = (ti * lh + my) * lw + mx  # merged index inside this image
                            merged_order[merged_base + unit_id] = slot // unit
                            rows = (merged_base + unit_id) * unit + np.arange(unit)
                            patch_index[slot:slot + unit] = rows
                            rope_hw[slot:slot + unit, 0] = my * m + np.arange(unit) // m
                            rope_hw[slot:slot + unit, 1] = mx * m + np.arange(unit) % m
                            slot += unit
                    window_slot += wp
        merged_base += t * lh * lw
    return VisionLayout(patch_index, rope_hw, frame_windows(frame_ranges, window_bucket),
                        merged_order[:max(merged_bucket, 1)], num_merged)


def frame_windows(frame_ranges: list[tuple[int, int]], window_bucket: int) -> np.ndarray:
    """[window_bucket, F] windows of each window's frame, -1 padded (empty windows: all -1)."""
    widest = int(max((count for _, count in frame_ranges), default=1))
    table = np.full((window_bucket, 1 << (widest - 1).bit_length()), -1, np.int32)
    for first, count in frame_ranges:
        table[first:first + count, :count] = np.arange(first, first + count)
    return table
