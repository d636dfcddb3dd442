"""Logits parity with transformers' Qwen2.5-VL (float32, random tiny models, tolerance 1e-4)."""
import jax
import numpy as np
import pytest
import torch

from hf_reference import hf_logits, random_pixels, sequence
from models.qwen2_5_vl import model as model_lib
from models.qwen2_5_vl.layers import attention, causal_attention
from models.qwen2_5_vl.vision import vision_hidden

ATOL = 1e-4


def assert_close(ours, ref, mask=None):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    if mask is not None:
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    assert np.abs(ref).max() > 1.0, "reference activations are near zero; the test would prove little"
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("tie,flat", [(True, False), (False, False), (True, True), (False, True)])
def test_text_only(hf_pair, tie, flat):
    hf, ours, _ = hf_pair(tie=tie, flat=flat)
    ids = np.array([sequence(np.random.default_rng(1), [37])])
    assert_close(ours(ids), hf_logits(hf, ids))


@pytest.mark.parametrize("grid", [
    (1, 12, 20),  # merged 6x10: not a multiple of the 4x4 window
    (1, 16, 16),  # merged 8x8: exactly 2x2 windows
    (1, 4, 4),    # smaller than one window
    (1, 2, 38),   # one merged row, long
])
def test_one_image(hf_pair, grid):
    hf, ours, _ = hf_pair(tie=False)
    rng = np.random.default_rng(2)
    grids = np.array([grid])
    ids = np.array([sequence(rng, [5, grid, 7])])
    pixels = random_pixels(rng, grids)
    assert_close(ours(ids, pixels, grids), hf_logits(hf, ids, pixels, grids))


def test_several_images_of_different_sizes(hf_pair):
    hf, ours, _ = hf_pair(tie=True)
    rng = np.random.default_rng(3)
    grids = np.array([[1, 12, 20], [1, 8, 8], [1, 16, 10]])
    ids = np.array([sequence(rng, [3, grids[0], 4, grids[1], 2, grids[2], 6])])
    pixels = random_pixels(rng, grids)
    assert_close(ours(ids, pixels, grids), hf_logits(hf, ids, pixels, grids))


def test_right_padded_batch_with_attention_mask(hf_pair):
    hf, ours, _ = hf_pair(tie=False)
    rng = np.random.default_rng(4)
    grids = np.array([[1, 8, 12], [1, 4, 8]])
    rows = [sequence(rng, [4, grids[0], 9]), sequence(rng, [2, grids[1], 3])]
    length = max(map(len, rows))
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    pixels = random_pixels(rng, grids)
    ours_logits = ours(ids, pixels, grids, attention_mask=mask)
    ref = hf_logits(hf, ids, pixels, grids, attention_mask=mask)
    assert_close(ours_logits, ref, mask)


def test_vision_tower_and_decoder_layer_by_layer(hf_pair):
    """Localises a failure: vision blocks, merged features, then decoder hidden states."""
    hf, ours, _ = hf_pair(tie=True)
    cfg, params = ours.config, ours.params()
    rng = np.random.default_rng(5)
    grids = np.array([[1, 12, 20], [1, 8, 8]])
    pixels = random_pixels(rng, grids)
    padded, layout, _ = model_lib.vision_inputs(cfg, pixels, grids)

    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(pixels), grid_thw=torch.tensor(grids))
    hidden = np.asarray(jax.jit(vision_hidden, static_argnums=0)(cfg.vision, params["vision"], padded, layout))
    # Slots in order are the reference's window-ordered patch sequence, with empty slots between.
    assert_close(hidden[layout["patch_index"] >= 0], ref.last_hidden_state.numpy())

    merged = model_lib.image_features(cfg, params, padded, layout)
    n = int(grids.prod(-1).sum()) // 4
    assert_close(np.asarray(merged)[:n], ref.pooler_output.numpy())

    ids = np.array([sequence(rng, [3, grids[0], 2, grids[1], 4])])
    inputs = model_lib.prepare_inputs(cfg, ids, pixels, grids)
    ours_hidden = jax.jit(model_lib.forward_hidden, static_argnums=0)(cfg, params, inputs.as_jax_tree())
    with torch.no_grad():
        t_ids = torch.tensor(ids)
        ref_hidden = hf.model(input_ids=t_ids, pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                              mm_token_type_ids=(t_ids == cfg.image_token_id).int()).last_hidden_state
    assert_close(np.asarray(ours_hidden)[:, : ids.shape[1]], ref_hidden.numpy())


def test_bucketing_does_not_recompile(hf_pair):
    """Different text lengths and image sizes inside the same buckets reuse one compilation."""
    _, ours, _ = hf_pair(tie=True)
    rng = np.random.default_rng(6)

    def run(text_len, grid):
        grids = np.array([grid])
        ids = np.array([sequence(rng, [text_len, grid, 2])])
        ours(ids, random_pixels(rng, grids), grids)

    run(5, (1, 12, 20))  # warm-up: 6 windows -> bucket 8, 69 tokens -> bucket 128
    before = model_lib.forward_logits._cache_size()
    run(3, (1, 16, 20))   # 6 windows, 85 tokens
    run(11, (1, 20, 12))  # 6 windows, 73 tokens
    run(20, (1, 28, 12))  # 8 windows, 106 tokens
    assert model_lib.forward_logits._cache_size() == before


def test_query_chunked_causal_attention_equals_dense():
    """Long sequences attend a chunk of queries at a time; values and gradients are unchanged."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 96, n, 8)).astype(np.float32) for n in (4, 2, 2))
    valid = np.ones((2, 96), bool)
    valid[1, 70:] = False  # right padding
    dense_mask = np.tril(np.ones((96, 96), bool))[None] & valid[:, None, :]

    def dense(q):
        return attention(q, k, v, dense_mask)

    def chunked(q):
        return causal_attention(q, k, v, valid, query_chunk=40)  # chunks of 40, 40 and 16 queries

    np.testing.assert_allclose(chunked(q), dense(q), atol=1e-5, rtol=0)
    grad = lambda f: jax.grad(lambda q: (f(q)[:, :70] ** 2).sum())(q)  # noqa: E731
    np.testing.assert_allclose(grad(chunked), grad(dense), atol=1e-4, rtol=0)
