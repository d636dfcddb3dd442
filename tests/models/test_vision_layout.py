"""Window ordering and slot layout of the vision tower against transformers and SPEC vectors."""
import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from models.qwen2_5_vl import get_preset
from models.qwen2_5_vl.vision_layout import build_layout, window_index

CFG = get_preset("7b").vision


def test_spec_vector_for_grid_12x20():
    index, cu = window_index(np.array([[1, 12, 20]]), CFG)
    expected_head = [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33, 4, 5, 6, 7, 14]
    assert index[: len(expected_head)].tolist() == expected_head
    assert index[32:40].tolist() == [8, 9, 18, 19, 28, 29, 38, 39]
    assert index[40:48].tolist() == [40, 41, 42, 43, 50, 51, 52, 53]
    assert index[-4:].tolist() == [48, 49, 58, 59]
    assert cu.tolist() == [0, 64, 128, 160, 192, 224, 240]


@pytest.mark.parametrize("grids", [
    [[1, 12, 20]], [[1, 16, 16]], [[1, 2, 2]], [[1, 4, 38]], [[1, 12, 20], [1, 8, 8], [1, 30, 6]], [[2, 8, 12]],
])
def test_window_index_equals_transformers(grids):
    ref_index, ref_cu = get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=112,
                                                patch_size=14)
    index, cu = window_index(np.array(grids), CFG)
    np.testing.assert_array_equal(index, ref_index.numpy())
    np.testing.assert_array_equal(cu, ref_cu.numpy())


@pytest.mark.parametrize("grids", [[[1, 12, 20]], [[1, 12, 20], [1, 8, 8], [1, 30, 6]], [[2, 8, 12]]])
def test_slot_layout_is_window_order_with_gaps(grids):
    """Real slots, in order, are the reference's window-ordered patches; each window starts on a
    slot boundary; merged_order un-permutes back to image order."""
    grids = np.array(grids)
    layout = build_layout(grids, CFG, window_bucket=32)
    index, cu = window_index(grids, CFG)
    real = layout.patch_index[layout.patch_index >= 0]
    expected_rows = (index[:, None] * 4 + np.arange(4)).reshape(-1)
    np.testing.assert_array_equal(real, expected_rows)
    # Every window's frame list is the run of windows holding that frame's patches.
    window_rows = layout.patch_index.reshape(-1, CFG.window_patches)
    frame_of_row = np.repeat(np.arange(grids[:, 0].sum()), np.repeat(grids.prod(-1) // grids[:, 0], grids[:, 0]))
    for w, row in enumerate(window_rows):
        frames = set(frame_of_row[row[row >= 0]])
        if not frames:
            assert (layout.frame_windows[w] == -1).all()
            continue
        assert len(frames) == 1
        members = [v for v in range(len(window_rows)) if set(frame_of_row[window_rows[v][window_rows[v] >= 0]]) == frames]
        assert sorted(layout.frame_windows[w][layout.frame_windows[w] >= 0]) == members
    n = layout.num_merged
    np.testing.assert_array_equal(np.sort(layout.merged_order[:n]), np.flatnonzero(layout.patch_index[::4] >= 0))
    # merged slot of image-order token u holds rows 4u..4u+3
    np.testing.assert_array_equal(layout.patch_index[layout.merged_order[:n] * 4], np.arange(n) * 4)


def test_rejects_bad_grids_and_small_buckets():
    with pytest.raises(ValueError, match=r"image_grid_thw\[1\]"):
        build_layout(np.array([[1, 4, 4], [1, 3, 4]]), CFG)
    with pytest.raises(ValueError, match="more than the bucket"):
        build_layout(np.array([[1, 12, 20]]), CFG, window_bucket=4)
