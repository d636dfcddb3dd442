"""Where the loss goes, how FSDP divides parameter memory, and clear errors for bad settings."""
import jax
import numpy as np
import pytest
from PIL import Image
from scipy.special import logsumexp

from codedance_jax import mesh as mesh_lib
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import preprocess_images
from codedance_jax.processing.tokenizer import load_tokenizer
from configs.sft import get_config
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from models.qwen2_5_vl import model as model_lib
from train.losses import cross_entropy_sum, shifted_targets
from train.experiment import micro_batch_rows

TINY = get_preset("tiny")


def test_loss_mask_covers_only_generated_tokens_and_matches_a_direct_computation():
    tokenizer = load_tokenizer()
    messages = [
        {"role": "user", "content": "<image>How many circles?"},
        {"role": "assistant", "content": "<code>\n```python\nprint(2)\n```\n</code>"},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "<answer>2</answer>"},
    ]
    chat = render_chat(messages, tokenizer, [Image.new("RGB", (56, 56), "red")])
    ids, loss_mask = chat.input_ids[None], chat.loss_mask[None]
    targets, mask = shifted_targets(ids, loss_mask)
    text = tokenizer.decode(ids[0][np.asarray(mask[0], bool).nonzero()[0] + 1])
    assert text == "<code>\n```python\nprint(2)\n```\n</code><|im_end|><answer>2</answer><|im_end|>"
    assert not np.asarray(mask)[0][np.asarray(chat.mm_token_type_ids) == 1].any()  # no loss on image pads

    model = Qwen2_5_VL(TINY)
    params = model.params()
    logits = np.asarray(model(ids, *_pixels(chat)), np.float64)
    log_probs = logits - logsumexp(logits, axis=-1, keepdims=True)
    picked = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
    expected = -(picked * np.asarray(mask)).sum()
    inputs = model_lib.prepare_inputs(TINY, ids, *_pixels(chat)).as_jax_tree()
    hidden = jax.jit(model_lib.forward_hidden, static_argnums=0)(TINY, params, inputs)[:, : ids.shape[1]]
    loss, _ = jax.jit(cross_entropy_sum, static_argnums=4)(params["text"], hidden, targets, mask, 8)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def _pixels(chat):
    return preprocess_images(chat.images)


def test_fsdp_divides_parameter_bytes_per_device():
    model = Qwen2_5_VL.abstract(TINY)
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(model.params()))

    def bytes_on_first_device(mesh_shape):
        shardings = mesh_lib.param_shardings(model, mesh_lib.make_mesh(mesh_shape))
        return sum(np.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
                   for a, s in zip(jax.tree.leaves(model.params()), jax.tree.leaves(shardings)))

    assert bytes_on_first_device((8, 1, 1)) == total  # pure data parallel: full replica
    fsdp8 = bytes_on_first_device((1, 8, 1))
    assert total / 8 <= fsdp8 < total / 7  # every large matrix split 8 ways; norms replicated
    assert bytes_on_first_device((1, 4, 2)) < bytes_on_first_device((2, 4, 1))  # tensor axis splits further


def test_bad_meshes_and_batches_are_refused_by_name():
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        mesh_lib.make_mesh((2, 6, 1))
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        mesh_lib.make_mesh((3, -1, 1))
    with pytest.raises(ValueError, match="num_key_value_heads=2 is not divisible by the 'tensor' mesh axis of size 4"):
        mesh_lib.check_model_fits_mesh(4, 2, mesh_lib.make_mesh((1, 2, 4)))
    with pytest.raises(ValueError, match=r"text/layers/k_bias \(4, 2, 32\): dimension 2 is not divisible"):
        mesh_lib.param_shardings(Qwen2_5_VL.abstract(TINY), mesh_lib.make_mesh((1, 2, 4)))
    config = get_config("tiny")
    config.batch_size = 6
    with pytest.raises(ValueError, match="micro-batch of 6 rows .* not divisible by the data-parallel mesh size 4"):
        micro_batch_rows(config, mesh_lib.make_mesh((1, 4, 2)))
    config.grad_accum_steps = 4
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by grad_accum_steps 4"):
        micro_batch_rows(config, mesh_lib.make_mesh((1, 4, 2)))


def test_text_only_micro_batch_stacks_with_image_ones():
    from train.inputs import stack_micro_batches
    tokens = {k: np.ones((2, 8), np.int32) for k in ("input_ids", "attention_mask", "loss_mask")}
    text_only = {**tokens, "positions": np.zeros((3, 2, 8), np.int32)}
    with_image = {**{k: np.ones((2, 16), np.int32) for k in tokens}, "positions": np.zeros((3, 2, 16), np.int32),
                  "pixel_values": np.ones((4, 1176), np.float32), "patch_index": np.arange(64, dtype=np.int32),
                  "rope_hw": np.ones((64, 2), np.int32), "frame_windows": np.zeros((1, 1), np.int32),
                  "merged_order": np.zeros(16, np.int32)}
    stacked = stack_micro_batches([text_only, with_image])
    assert stacked["input_ids"].shape == (2, 2, 16) and stacked["positions"].shape == (2, 3, 2, 16)
    assert (stacked["input_ids"][0, :, 8:] == 0).all() and (stacked["attention_mask"][0, :, 8:] == 0).all()
    assert stacked["pixel_values"].shape == (2, 4, 1176) and not stacked["pixel_values"][0].any()
    assert (stacked["patch_index"][0] == -1).all() and (stacked["frame_windows"][0] == -1).all()
