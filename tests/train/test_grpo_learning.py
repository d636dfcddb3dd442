"""GRPO learns: a small model taught the answer format by a short SFT, with "yes" and "no" equally
likely, is moved by GRPO with the BAT reward toward the right answer. From a fixed seed, the
mean reward of the last steps clearly exceeds that of the first (measured with the demo preset:
0.61 over the first five steps, 0.82 over the last five)."""
import jax
import numpy as np
import pytest

from codedance_jax import mesh as mesh_lib
from codedance_jax.data.rl_prompts import PromptIterator
from codedance_jax.processing.batching import collate
from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer, pad_token_id
from configs.grpo import get_config
from configs.sft import DEMO_TOKENIZER
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from rollout.engine import Engine
from sandbox import InterpreterPool, IsolationUnavailable
from train import inputs as inputs_lib
from train.grpo import engine_config
from train.grpo_trainer import GRPOStep
from train.policy_loss import PolicyLossConfig
from train.state import TrainState, init_state, learning_rate_schedule, make_optimizer, state_shardings
from train.step import jit_grpo_step, jit_train_step

# The demo preset (1024-id vocabulary): the step is the model body, not a 152k-vocabulary LM head.
MODEL = get_preset("demo")
QUESTION = "Is the answer yes? Answer yes or no."
SFT_STEPS, GRPO_STEPS = 40, 15


def sft_warm_start(state, mesh, tokenizer):
    """The answer format, with both answers equally likely: the policy starts near 50% right."""
    config = get_config("tiny")
    config.learning_rate = 5e-3
    tx = make_optimizer(config)
    shardings = state_shardings(MODEL, tx, mesh, np.float32)
    sft_state = init_state(MODEL, tx, shardings, seed=0, param_dtype=np.float32)
    step = jit_train_step(MODEL, tx, learning_rate_schedule(config), shardings, remat=False, num_blocks=1,
                          loss_chunk=512)
    chats = [render_chat([{"role": "user", "content": QUESTION},
                          {"role": "assistant", "content": f"<answer>{answer}</answer>"}], tokenizer)
             for answer in ("yes", "no") * 4]
    micro = inputs_lib.model_inputs(MODEL, collate(chats, length_buckets=(64,), pad_id=pad_token_id(tokenizer)))
    batch = inputs_lib.global_batch(inputs_lib.stack_micro_batches([micro]), mesh)
    for _ in range(SFT_STEPS):
        sft_state, metrics = step(sft_state, batch)
    assert float(metrics["loss"]) < 0.2
    return TrainState(step=state.step, params=sft_state.params, opt_state=state.opt_state)


def test_mean_reward_rises_over_a_short_grpo_run():
    config = get_config("tiny")
    config.learning_rate = 3e-4
    config.length_buckets, config.loss_chunk_tokens = (64,), 512
    config.grpo.prompts_per_step, config.grpo.group_size = 2, 8
    config.batch_size = 16
    r = config.rollout
    r.num_slots, r.max_context, r.max_turns, r.max_turn_tokens, r.max_response_tokens = 16, 64, 1, 10, 10
    mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(config)
    shardings = state_shardings(MODEL, tx, mesh, np.float32)
    tokenizer = load_tokenizer(DEMO_TOKENIZER)
    state = sft_warm_start(init_state(MODEL, tx, shardings, seed=0, param_dtype=np.float32), mesh, tokenizer)
    prompts = PromptIterator([{"id": f"q{i}", "data_source": "synthetic", "prompt": [{"role": "user",
                                                                                      "content": QUESTION}],
                               "reward_model": {"ground_truth": "yes"}} for i in range(4)], seed=0)
    update = jit_grpo_step(MODEL, PolicyLossConfig(), tx, learning_rate_schedule(config), shardings, remat=False,
                           num_blocks=1, loss_chunk=512)
    try:
        pool = InterpreterPool(num_workers=1, timeout_s=5.0, memory_mb=256, uid_base=1_730_000_000)
    except IsolationUnavailable as exc:
        pytest.skip(str(exc))
    with pool:
        engine = Engine(Qwen2_5_VL.abstract(MODEL), tokenizer, pool, engine_config(config, ImageProcessingConfig()))
        step = GRPOStep(config, engine=engine, tokenizer=tokenizer, prompts=prompts, update_fn=update, mesh=mesh,
                        image_config=ImageProcessingConfig())
        rewards = []
        for _ in range(GRPO_STEPS):
            state, metrics = step(state)
            rewards.append(metrics["reward"])
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.15, rewards
