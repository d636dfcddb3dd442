"""GRPO from rollouts to updates: the batch holds the sampled ids, per-turn advantages and the
sampler's log-probs; the trainer's recomputed log-probs agree with the sampler's; a sharded
update equals the single-device one; steps do not recompile; and a tiny model learns."""
import io

import jax
import numpy as np
import pytest
from PIL import Image

from codedance_jax import mesh as mesh_lib
from codedance_jax import rewards as rewards_lib
from codedance_jax.data.rl_prompts import PromptIterator, decode_prompt
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer, pad_token_id
from configs.grpo import get_config
from configs.sft import DEMO_TOKENIZER
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from rollout.engine import Engine, Request
from rollout.trajectory import TOOL_ERROR, TOOL_OK
from sandbox import InterpreterPool, IsolationUnavailable
from train import inputs as inputs_lib
from train.grpo import engine_config
from train.grpo_trainer import GRPOStep
from train.policy_loss import PolicyLossConfig
from train.rollout_batch import reward_items, token_advantages, update_batches
from train.state import init_state, learning_rate_schedule, make_optimizer, state_shardings
from train.step import jit_grpo_step, jit_old_log_probs, policy_log_probs

# The demo preset (1024-id vocabulary): the step is the model body, not a 152k-vocabulary LM head.
MODEL = get_preset("demo")
IMAGES = ImageProcessingConfig(max_pixels=12544)
PAD = pad_token_id(load_tokenizer(DEMO_TOKENIZER))
CROP = "<think>zoom</think>\n<code>\n```python\ninput_image.crop((0, 0, 56, 56))\n```\n</code>"
FAIL = "<think>try</think>\n<code>\n```python\n1 / 0\n```\n</code>"


def grpo_config(**overrides):
    c = get_config("tiny")
    c.learning_rate = 1e-3
    c.length_buckets = (128, 256)
    c.patch_buckets = (256, 512)
    c.loss_chunk_tokens = 256
    c.grpo.prompts_per_step, c.grpo.group_size = 2, 4
    c.batch_size = 8
    r = c.rollout
    r.num_slots, r.max_context, r.max_turns, r.max_turn_tokens, r.max_response_tokens = 8, 256, 3, 40, 200
    # A traceback takes ~130 of the demo tokenizer's ids (its merges were learned on the task suite).
    r.max_tool_tokens, r.decode_steps, r.prefill_chunk = 160, 8, 64
    for key, value in overrides.items():
        target = c
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return c


def setup_state(mesh_shape, config):
    mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    tx = make_optimizer(config)
    shardings = state_shardings(MODEL, tx, mesh, np.float32)
    return mesh, tx, shardings, init_state(MODEL, tx, shardings, seed=0, param_dtype=np.float32)


def image(i):
    return Image.new("RGB", (84, 56 + 28 * (i % 2)), color=(30 * i % 256, 120, 200))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def engine(tokenizer):
    try:
        with InterpreterPool(num_workers=2, timeout_s=5.0, memory_mb=512, uid_base=1_720_000_000) as pool:
            yield Engine(Qwen2_5_VL.abstract(MODEL), tokenizer, pool, engine_config(grpo_config(), IMAGES))
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rollout(engine):
    """Eight trajectories of two prompts: scripted tool calls (a crop with an image result, a
    failing call) before sampled turns, with the initial parameters."""
    _, _, _, state = setup_state((1, 1, 1), grpo_config())
    scripts = [[CROP, "<answer>blue</answer>"], [FAIL, CROP, "<answer>red</answer>"], [CROP], [],
               ["<answer>blue</answer>"], [FAIL], [CROP, FAIL], []]
    requests = [Request.from_question("What colour is it?", image(i // 4), system_prompt=None, seed=i,
                                      forced_turns=script) for i, script in enumerate(scripts)]
    trajectories = engine.generate(requests, params=state.params)
    items = reward_items(trajectories, [decode_prompt(_raw(i // 4)) for i in range(8)], [i // 4 for i in range(8)],
                         engine.tokenizer)
    batch = rewards_lib.compute_rewards(items, "bat")
    return state, trajectories, batch


def _raw(i):
    png = io.BytesIO()
    image(i).save(png, format="PNG")
    return {"id": f"p{i}", "data_source": "synthetic", "images": [png.getvalue()],
            "prompt": [{"role": "user", "content": "<image>\nWhat colour is it?"}],
            "reward_model": {"ground_truth": "blue"}}


def test_rollouts_call_tools_and_rewards_read_only_generated_text(rollout):
    _, trajectories, batch = rollout
    assert [c.outcome for c in trajectories[1].tool_calls][:2] == [TOOL_ERROR, TOOL_OK]
    assert trajectories[0].tool_calls[0].num_images == 1
    assert batch.trajectories[0].score.acc == 1 and batch.trajectories[1].score.acc == 0
    # The tool turn's text (with "ZeroDivisionError") never reaches the reward.
    assert all("tool_response" not in s for s in reward_items(trajectories[1:2], [decode_prompt(_raw(0))], [0],
                                                               load_tokenizer(DEMO_TOKENIZER))[0].response)


def test_batch_holds_sampled_ids_turn_advantages_and_sampler_log_probs(rollout):
    _, trajectories, batch = rollout
    advantages = [token_advantages(t, r) for t, r in zip(trajectories, batch.trajectories)]
    (stacked,) = update_batches(MODEL, trajectories, advantages, num_minibatches=1, micro_batches=2,
                                length_buckets=(128, 256), patch_buckets=(256, 512), image_config=IMAGES, seed=0, pad_id=PAD)
    rows = {}  # trajectories are ordered by length inside the mini-batch: find each one's row
    for m in range(2):
        for b in range(4):
            ids = stacked["input_ids"][m, b][stacked["attention_mask"][m, b] > 0]
            rows[tuple(ids)] = (m, b)
    for t, adv, reward in zip(trajectories, advantages, batch.trajectories):
        m, b = rows[tuple(t.tokens)]
        n = len(t.tokens)
        np.testing.assert_array_equal(stacked["loss_mask"][m, b, :n], t.loss_mask)
        np.testing.assert_allclose(stacked["sampler_log_probs"][m, b, :n], t.log_probs, rtol=1e-6)
        np.testing.assert_array_equal(stacked["advantages"][m, b, :n], adv)
        assert not stacked["advantages"][m, b, n:].any()
        # Turn i carries advantage + 0.2 x step value i; the answer turn the advantage alone.
        mask = np.asarray(t.loss_mask)
        turn_values = [float(adv[s]) for s in np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)]
        expected = [reward.advantage + rewards_lib.STEP_WEIGHT * v for v in reward.step_values]
        np.testing.assert_allclose(turn_values[: len(expected)], expected, rtol=1e-5)
        np.testing.assert_allclose(turn_values[len(expected):], reward.advantage, rtol=1e-5)
        assert not adv[mask == 0].any()
    # The failing call's turn is pushed below the group advantage by its negative step value.
    assert batch.trajectories[1].step_values[0] < batch.trajectories[1].step_values[1]


def test_trainer_log_probs_equal_the_samplers(rollout):
    """Recomputing log-probs on the training batch (full forward, tool images through the vision
    tower, M-RoPE over the whole sequence) reproduces what the sampler recorded token by token."""
    state, trajectories, batch = rollout
    advantages = [token_advantages(t, r) for t, r in zip(trajectories, batch.trajectories)]
    (stacked,) = update_batches(MODEL, trajectories, advantages, num_minibatches=1, micro_batches=1,
                                length_buckets=(256,), patch_buckets=(512,), image_config=IMAGES, seed=0, pad_id=PAD)
    micro = jax.tree.map(lambda x: x[0], stacked)
    log_probs, _ = jax.jit(lambda p, m: policy_log_probs(p, m, model_cfg=MODEL, temperature=1.0, remat=False,
                                                         num_blocks=1, loss_chunk=256))(state.params, micro)
    mask = micro["loss_mask"][:, 1:] > 0
    np.testing.assert_allclose(np.asarray(log_probs)[:, :-1][mask], micro["sampler_log_probs"][:, 1:][mask],
                               atol=2e-4)


def test_process_blocks_with_different_image_counts_score_like_one_batch(rollout):
    """A multi-host batch is one block per process, each with its own vision layout (padded
    merged tokens at its end): every block's image pads must still get their own features."""
    state, trajectories, batch = rollout
    advantages = [token_advantages(t, r) for t, r in zip(trajectories, batch.trajectories)]
    blocks = [update_batches(MODEL, trajectories[i: i + 4], advantages[i: i + 4], num_minibatches=1, micro_batches=1,
                             length_buckets=(256,), patch_buckets=(512,), image_config=IMAGES, seed=0, pad_id=PAD)[0]
              for i in (0, 4)]
    assert blocks[0]["merged_order"].shape == blocks[1]["merged_order"].shape
    micro = {k: np.concatenate([b[k][0] for b in blocks], axis=1 if k == "positions" else 0) for k in blocks[0]}
    log_probs, _ = jax.jit(lambda p, m: policy_log_probs(p, m, model_cfg=MODEL, temperature=1.0, remat=False,
                                                         num_blocks=2, loss_chunk=256))(state.params, micro)
    mask = micro["loss_mask"][:, 1:] > 0
    np.testing.assert_allclose(np.asarray(log_probs)[:, :-1][mask], micro["sampler_log_probs"][:, 1:][mask],
                               atol=2e-4)


def _update(mesh_shape, config, stacked_batches, ref):
    mesh, tx, shardings, state = setup_state(mesh_shape, config)
    loss_cfg = PolicyLossConfig(**config.loss.to_dict())
    step = jit_grpo_step(MODEL, loss_cfg, tx, learning_rate_schedule(config), shardings, remat=False, num_blocks=1,
                         loss_chunk=config.loss_chunk_tokens)
    old_fn = jit_old_log_probs(MODEL, shardings, temperature=1.0, num_blocks=1, loss_chunk=config.loss_chunk_tokens)
    ref_params = jax.tree.map(lambda x: x.copy(), state.params) if ref else None  # not the donated buffers
    batches = [inputs_lib.global_batch(s, mesh) for s in stacked_batches]
    for b in batches:
        b["old_log_probs"] = old_fn(state.params, b)
    metrics = []
    for b in batches:
        state, m = step(state, b, ref_params)
        metrics.append(jax.device_get(m))
    return jax.tree.map(np.asarray, state.params), metrics


def test_sharded_update_equals_single_device(rollout):
    """Two mini-batch updates (old log-probs frozen first), KL to a reference and the
    sequence-mean aggregation, on a (1, 4, 2) mesh of 8 devices (fsdp and tensor parallel) and on one device."""
    _, trajectories, batch = rollout
    config = grpo_config(**{"loss.kl_coef": 0.05, "loss.aggregation": "sequence-mean-token-mean"})
    advantages = [token_advantages(t, r) for t, r in zip(trajectories, batch.trajectories)]
    minibatches = update_batches(MODEL, trajectories, advantages, num_minibatches=2, micro_batches=1,
                                 length_buckets=(256,), patch_buckets=(512,), image_config=IMAGES, seed=3, pad_id=PAD)
    ref_params, ref_metrics = _update((1, 1, 1), config, minibatches, ref=True)
    params, metrics = _update((1, 4, 2), config, minibatches, ref=True)
    for a, b in zip(ref_metrics, metrics):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
        assert a["update_refused"] == 0 and a["grad_norm"] > 0
    assert ref_metrics[1]["kl"] > 0  # the second update moved away from the reference
    # Adam moves each parameter by about the learning rate; where a gradient is ~0 the summation
    # order of the sharded reduction can flip its direction, so compare within 2% of one step.
    flat = dict(jax.tree_util.tree_flatten_with_path(ref_params)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        np.testing.assert_allclose(leaf, flat[path], atol=0.02 * config.learning_rate, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_non_finite_update_is_refused(rollout):
    _, trajectories, batch = rollout
    advantages = [np.full(len(t.tokens), np.nan, np.float32) for t in trajectories]
    minibatches = update_batches(MODEL, trajectories, advantages, num_minibatches=1, micro_batches=1,
                                 length_buckets=(256,), patch_buckets=(512,), image_config=IMAGES, seed=0, pad_id=PAD)
    config = grpo_config()
    _, _, _, before = setup_state((1, 1, 1), config)
    params, (metrics,) = _update((1, 1, 1), config, minibatches, ref=False)
    assert metrics["update_refused"] == 1
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_steps_do_not_recompile_after_warm_up(engine):
    config = grpo_config()
    mesh, tx, shardings, state = setup_state((1, 1, 1), config)
    update = jit_grpo_step(MODEL, PolicyLossConfig(), tx, learning_rate_schedule(config), shardings, remat=False,
                           num_blocks=1, loss_chunk=config.loss_chunk_tokens)
    prompts = PromptIterator([_raw(i) for i in range(6)], seed=0)
    step = GRPOStep(config, engine=engine, tokenizer=engine.tokenizer, prompts=prompts, update_fn=update, mesh=mesh,
                    image_config=IMAGES)
    state, metrics = step(state)
    compiled = update._cache_size()
    for _ in range(2):
        state, metrics = step(state)
    assert update._cache_size() == compiled == 1
    assert metrics["update_refused"] == 0 and metrics["generated_tokens"] > 0
    assert {"rollout_s", "scoring_s", "update_s", "clip_fraction", "entropy", "logprob_gap_abs",
            "zero_advantage_groups", "reward", "tool_call_rate"} <= set(metrics)
    assert metrics["logprob_gap_abs"] < 1e-3


def test_a_pad_id_outside_the_vocabulary_is_refused(rollout):
    """Qwen's <|endoftext|> (151643) padding a 1024-id model's batch would be gathered as NaN."""
    _, trajectories, _ = rollout
    advantages = [np.zeros(len(t.tokens), np.float32) for t in trajectories]
    with pytest.raises(ValueError, match="token id 151643 is outside the model's vocabulary of 1024"):
        update_batches(MODEL, trajectories, advantages, num_minibatches=1, micro_batches=1, length_buckets=(256,),
                       patch_buckets=(512,), image_config=IMAGES, seed=0, pad_id=151643)
