"""M-RoPE positions: the SPEC vector, parity with transformers 5.x, and continuations."""
import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from codedance_jax.processing.rope_index import continuation_positions, get_rope_index

VS, VE, IMG = 151652, 151653, 151655


@pytest.fixture(scope="module")
def hf_model():
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=152064,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                          "rope_theta": 1e6}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0]))
    return Qwen2_5_VLModel(config).eval()


def spec_sequence():
    ids = [1, 2, 3, VS] + [IMG] * 6 + [VE, 4, 5, VS] + [IMG] * 4 + [VE, 6]
    return np.array(ids), np.array([[1, 4, 6], [1, 4, 4]])


def test_spec_vector():
    ids, grids = spec_sequence()
    positions, deltas = get_rope_index(ids[None], grids)
    np.testing.assert_array_equal(positions[0, 0], [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9, 10, 11, 11, 11, 11, 13, 14])
    np.testing.assert_array_equal(positions[1, 0], [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9, 10, 11, 11, 12, 12, 13, 14])
    np.testing.assert_array_equal(positions[2, 0], [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9, 10, 11, 12, 11, 12, 13, 14])
    np.testing.assert_array_equal(deltas, [[-5]])


def random_sequence(rng, max_images=3):
    """Text runs and images (with vision start/end) in random order; returns ids and grids."""
    ids, grids = [], []
    for _ in range(rng.integers(0, max_images + 1)):
        ids += list(rng.integers(0, 1000, rng.integers(0, 5)))
        grid = [1, 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))]
        ids += [VS] + [IMG] * (grid[0] * grid[1] * grid[2] // 4) + [VE]
        grids.append(grid)
    ids += list(rng.integers(0, 1000, rng.integers(1, 5)))
    return ids, grids


def pad_batch(sequences, side, pad_id=0):
    length = max(len(s) for s in sequences) + 2  # at least two pads on every row
    ids = np.full((len(sequences), length), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        ids[row, cols], mask[row, cols] = seq, 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_transformers(hf_model, side, seed):
    rng = np.random.default_rng(seed)
    sequences, grids = zip(*(random_sequence(rng) for _ in range(3)))
    ids, mask = pad_batch(sequences, side)
    all_grids = np.array([g for gs in grids for g in gs], np.int64).reshape(-1, 3)

    ours, our_deltas = get_rope_index(ids, all_grids, mask)
    with torch.no_grad():
        theirs, their_deltas = hf_model.get_rope_index(
            torch.from_numpy(ids), mm_token_type_ids=torch.from_numpy((ids == IMG).astype(np.int64)),
            image_grid_thw=torch.from_numpy(all_grids), attention_mask=torch.from_numpy(mask))
    np.testing.assert_array_equal(ours, theirs.numpy())
    np.testing.assert_array_equal(our_deltas, their_deltas.numpy())


def test_matches_transformers_without_mask(hf_model):
    ids, grids = spec_sequence()
    ids = np.stack([ids, ids[::-1].copy()])
    grids = np.concatenate([grids, grids[::-1]])
    ours, our_deltas = get_rope_index(ids, grids)
    with torch.no_grad():
        theirs, their_deltas = hf_model.get_rope_index(
            torch.from_numpy(ids), mm_token_type_ids=torch.from_numpy((ids == IMG).astype(np.int64)),
            image_grid_thw=torch.from_numpy(grids))
    np.testing.assert_array_equal(ours, theirs.numpy())
    np.testing.assert_array_equal(our_deltas, their_deltas.numpy())


@pytest.mark.parametrize("seed", range(4))
def test_continuation_equals_whole_sequence(seed):
    rng = np.random.default_rng(seed)
    prefix, prefix_grids = random_sequence(rng)
    suffix, suffix_grids = random_sequence(rng)
    whole, _ = get_rope_index(np.array([prefix + suffix]), np.array(prefix_grids + suffix_grids).reshape(-1, 3))
    head, delta = get_rope_index(np.array([prefix]), np.array(prefix_grids).reshape(-1, 3))
    start = len(prefix) + int(delta[0, 0])
    tail, end = continuation_positions(np.array(suffix), np.array(suffix_grids).reshape(-1, 3), start)
    np.testing.assert_array_equal(np.concatenate([head[:, 0], tail], axis=1), whole[:, 0])
    assert end == whole.max() + 1


def test_fully_padded_row_is_zero():
    ids, grids = spec_sequence()
    batch = np.stack([ids, np.zeros_like(ids)])
    mask = np.stack([np.ones_like(ids), np.zeros_like(ids)])
    positions, deltas = get_rope_index(batch, grids, mask)
    assert not positions[:, 1].any() and deltas[1, 0] == 0


def test_pad_count_mismatch_names_row_and_counts():
    ids, grids = spec_sequence()
    batch = np.stack([ids, ids])
    with pytest.raises(ValueError, match=r"batch index 1: image 2 .* 6 image pad tokens .* needs 4"):
        get_rope_index(batch, np.array([[1, 4, 6], [1, 4, 4], [1, 4, 4], [1, 4, 4]]))


def test_missing_and_extra_grids():
    ids, grids = spec_sequence()
    with pytest.raises(ValueError, match=r"batch index 0: image 1 .* \(only 1 image grids"):
        get_rope_index(ids[None], grids[:1])
    with pytest.raises(ValueError, match="2 images but 3 image grids"):
        get_rope_index(ids[None], np.concatenate([grids, grids[:1]]))


def test_video_rejected():
    with pytest.raises(ValueError, match="batch index 0: video tokens at 2 are not supported"):
        get_rope_index(np.array([[1, VS, 151656, VE]]))
    with pytest.raises(ValueError, match="continuation: video"):
        continuation_positions(np.array([151656]))
    with pytest.raises(ValueError, match="the continuation has 0 images but 1 image grids"):
        continuation_positions(np.array([1, 2]), np.array([[1, 2, 2]]))
