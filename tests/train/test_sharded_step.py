"""The sharded train step equals the single-device step (loss, gradients, optimizer steps)."""
import functools

import jax
import numpy as np
import pytest
from PIL import Image

from codedance_jax import mesh as mesh_lib
from codedance_jax.data.records import Record
from codedance_jax.processing.batching import collate
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer, pad_token_id
from configs.sft import DEMO_TOKENIZER, get_config
from models.qwen2_5_vl import get_preset
from train import inputs as inputs_lib
from train.state import init_state, learning_rate_schedule, make_optimizer, state_shardings
from train.step import jit_train_step, loss_and_grads

# The demo preset: every structural feature of the model with a 1024-id vocabulary, so the step's
# cost (and its compile time) is the sharded body, not a 152k-vocabulary LM head.
MODEL = get_preset("demo")
IMAGES = ImageProcessingConfig()
LOSS_CHUNK = 256  # several logit chunks: the chunked loss is part of what is sharded


def short_record(i: int) -> Record:
    """A short multi-turn record with one small image: cheap enough for 8 fake devices, while
    still exercising the vision tower, tool turns and the assistant-only loss mask."""
    image = Image.new("RGB", (56 + 28 * (i % 3), 56), color=(40 * i % 256, 90, 200))
    messages = [
        {"role": "user", "content": f"<image>What colour is shape {i}?"},
        {"role": "assistant", "content": "<code>\n```python\nprint(input_image.getpixel((0, 0)))\n```\n</code>"},
        {"role": "tool", "content": str(image.getpixel((0, 0)))},
        {"role": "assistant", "content": f"<think>pixel {i}</think><answer>blue {i}</answer>"},
    ]
    return Record(id=str(i), messages=messages, images=[image])


@pytest.fixture(scope="module")
def stacked():
    """Two micro-batches of 8 records (gradient accumulation over a global batch of 16)."""
    tokenizer = load_tokenizer(DEMO_TOKENIZER)
    rendered = [render_chat(r.messages, tokenizer, r.images, image_config=IMAGES) for r in map(short_record, range(16))]
    pad = pad_token_id(tokenizer)
    micro = [inputs_lib.model_inputs(MODEL, collate(rendered[i:i + 8], length_buckets=(128,), image_config=IMAGES,
                                                    pad_id=pad)) for i in (0, 8)]
    return inputs_lib.stack_micro_batches(micro)


def setup(mesh_shape):
    mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    c = get_config("tiny")
    c.learning_rate, c.warmup_steps, c.total_steps = 1e-2, 0, 10
    tx = make_optimizer(c)
    shardings = state_shardings(MODEL, tx, mesh, np.float32)
    state = init_state(MODEL, tx, shardings, seed=0, param_dtype=np.float32)
    return mesh, c, tx, shardings, state


def initial_grads(mesh_shape, stacked):
    """Loss and gradients of the train step at the initial parameters."""
    mesh, _, _, shardings, state = setup(mesh_shape)
    grad_fn = jax.jit(functools.partial(loss_and_grads, model_cfg=MODEL, loss_chunk=LOSS_CHUNK),
                      out_shardings=(shardings.params, None))
    grads, metrics = grad_fn(state.params, inputs_lib.global_batch(stacked, mesh))
    return jax.tree.map(np.asarray, grads), float(metrics["loss"])


def step_losses(mesh_shape, stacked, steps=3):
    mesh, c, tx, shardings, state = setup(mesh_shape)
    step = jit_train_step(MODEL, tx, learning_rate_schedule(c), shardings, remat=False, num_blocks=1,
                          loss_chunk=LOSS_CHUNK)
    batch = inputs_lib.global_batch(stacked, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_sharded_loss_and_gradients_match_single_device(stacked):
    """fsdp x tensor parallel (the optimizer test below shards over all three axes)."""
    ref_grads, ref_loss = initial_grads((1, 1, 1), stacked)
    grads, loss = initial_grads((1, 4, 2), stacked)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref_grads)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        np.testing.assert_allclose(g, flat_ref[path], atol=1e-5 * scale, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_sharded_optimizer_steps_match_single_device(stacked):
    """Three AdamW steps with parameters and moments sharded over data x fsdp x tensor follow the
    single-device run."""
    np.testing.assert_allclose(step_losses((2, 2, 2), stacked), step_losses((1, 1, 1), stacked), rtol=1e-4)
