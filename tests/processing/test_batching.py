"""Collation: bucketed padding, per-row positions independent of padding, padded patches."""
import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from codedance_jax.processing.batching import choose_bucket, collate
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.rope_index import get_rope_index
from codedance_jax.processing.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def noise_image(seed, height, width):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def conversations(tokenizer):
    images = [noise_image(0, 100, 150), noise_image(1, 64, 64), noise_image(2, 90, 40)]
    return [
        render_chat([{"role": "user", "content": "<image>What is it?"},
                     {"role": "assistant", "content": "<answer>a cat</answer>"}], tokenizer, images[:1]),
        render_chat([{"role": "user", "content": "Hello"},
                     {"role": "assistant", "content": "Hi."}], tokenizer),
        render_chat([{"role": "user", "content": "<image> and <image>"},
                     {"role": "assistant", "content": "<code>\n```python\nprint(1)\n```\n</code>"},
                     {"role": "tool", "content": "1"}], tokenizer, images[1:]),
    ], images


def test_collate_pads_and_keeps_each_sequence(conversations):
    sequences, images = conversations
    batch = collate(sequences, length_buckets=(16, 64, 256), patch_buckets=(64, 512), batch_size=4)
    assert batch.input_ids.shape == (4, 64)
    assert batch.position_ids.shape == (3, 4, 64)
    for row, sequence in enumerate(sequences):
        n = len(sequence.input_ids)
        np.testing.assert_array_equal(batch.input_ids[row, :n], sequence.input_ids)
        assert (batch.input_ids[row, n:] == 151643).all()
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (64 - n)
        np.testing.assert_array_equal(batch.loss_mask[row, :n], sequence.loss_mask)
        np.testing.assert_array_equal(batch.mm_token_type_ids[row, :n], sequence.mm_token_type_ids)
        # Positions of a padded row equal those of the sequence alone; pads are 0.
        alone, delta = get_rope_index(sequence.input_ids[None], sequence.image_grid_thw)
        np.testing.assert_array_equal(batch.position_ids[:, row, :n], alone[:, 0])
        assert not batch.position_ids[:, row, n:].any()
        assert batch.rope_deltas[row, 0] == delta[0, 0]
    assert not (batch.attention_mask[3].any() or batch.loss_mask[3].any() or batch.position_ids[:, 3].any())
    assert not batch.loss_mask[batch.attention_mask == 0].any()


def test_collate_pixel_values_match_transformers(conversations):
    sequences, images = conversations
    batch = collate(sequences, length_buckets=(256,), patch_buckets=(64, 512))
    expected = Qwen2VLImageProcessorPil()(images=images, return_tensors="np")
    n = len(expected["pixel_values"])
    assert batch.num_valid_patches == n and batch.pixel_values.shape == (512, 1176)
    np.testing.assert_allclose(batch.pixel_values[:n], expected["pixel_values"], rtol=0, atol=1e-6)
    assert not batch.pixel_values[n:].any()
    np.testing.assert_array_equal(batch.image_grid_thw, expected["image_grid_thw"])


def test_collate_without_patch_buckets_or_images(conversations):
    sequences, _ = conversations
    batch = collate(sequences[1:2], length_buckets=(32, 64))
    assert batch.pixel_values.shape == (0, 1176) and batch.image_grid_thw.shape == (0, 3)
    assert batch.input_ids.shape == (1, 32)


def test_choose_bucket():
    assert choose_bucket(10, (8, 16, 32), "x") == 16
    assert choose_bucket(16, (8, 16, 32), "x") == 16
    with pytest.raises(ValueError, match="x 33 exceeds the largest bucket 32"):
        choose_bucket(33, (8, 16, 32), "x")
    with pytest.raises(ValueError, match="strictly increasing"):
        choose_bucket(1, (16, 8), "x")


def test_collate_errors(conversations):
    sequences, _ = conversations
    lengths = [len(s.input_ids) for s in sequences]
    assert lengths[2] > max(lengths[:2])
    limit = lengths[2] - 1
    message = f"sequence 2 has {lengths[2]} tokens, more than the largest length bucket {limit}"
    with pytest.raises(ValueError, match=message):
        collate(sequences, length_buckets=(limit,))
    with pytest.raises(ValueError, match=r"image patch rows \d+ exceeds the largest bucket 16"):
        collate(sequences, length_buckets=(256,), patch_buckets=(16,))
    with pytest.raises(ValueError, match="batch_size 2 is smaller than the 3 sequences"):
        collate(sequences, length_buckets=(256,), batch_size=2)
