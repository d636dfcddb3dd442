"""From a step's trajectories to GRPO training batches: rewards on what the model generated,
per-token advantages, and micro-batches in the one batch schema SFT uses (train/inputs.py).

The model trains on the token ids the sampler produced (never re-tokenised text); tool turns,
prompts and padding carry loss mask 0. Each token of assistant turn i carries the trajectory's
group advantage plus 0.2 x the step value of the call that turn wrote (the answer turn: the
advantage alone).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from codedance_jax import rewards as rewards_lib
from codedance_jax.data.rl_prompts import RLPrompt
from codedance_jax.processing.batching import collate
from codedance_jax.processing.chat import RenderedChat
from codedance_jax.processing.image import ImageProcessingConfig
from models.qwen2_5_vl.config import ModelConfig
from rollout.trajectory import Trajectory
from train import inputs as inputs_lib


def reward_items(trajectories: Sequence[Trajectory], prompts: Sequence[RLPrompt], group_ids: Sequence[int],
                 tokenizer: PreTrainedTokenizerBase) -> list[rewards_lib.RewardItem]:
    """What the reward sees of each trajectory: its generated segments (never tool output), the
    structured outcome of each real call and how many images the calls returned."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    return [rewards_lib.RewardItem(
        response=rewards_lib.generated_segments(t.tokens, t.loss_mask, decode), ground_truth=p.ground_truth,
        group_id=g, task=p.task, options=p.options, outcomes=[c.outcome for c in t.tool_calls],
        tool_images=sum(c.num_images for c in t.tool_calls), question=p.question, record_id=p.id)
        for t, p, g in zip(trajectories, prompts, group_ids)]


def token_advantages(trajectory: Trajectory, reward: rewards_lib.TrajectoryReward) -> np.ndarray:
    """float32 [len(tokens)]: each generated segment's advantage on its tokens, 0 elsewhere."""
    mask = np.asarray(trajectory.loss_mask, np.int8)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([mask, [0]])) == -1) + 1
    values = rewards_lib.segment_advantages(reward.advantage, reward.step_values, len(starts))
    out = np.zeros(len(mask), np.float32)
    for start, end, value in zip(starts, ends, values):
        out[start:end] = value
    return out


def as_rendered(trajectory: Trajectory, image_token_id: int) -> RenderedChat:
    tokens = np.asarray(trajectory.tokens, np.int32)
    return RenderedChat(input_ids=tokens, loss_mask=np.asarray(trajectory.loss_mask, np.int32),
                        mm_token_type_ids=(tokens == image_token_id).astype(np.int32),
                        images=list(trajectory.images), image_grid_thw=trajectory.image_grid_thw)


def micro_batch(model_cfg: ModelConfig, trajectories: Sequence[Trajectory], advantages: Sequence[np.ndarray], *,
                rows: int, length_buckets: Sequence[int], patch_buckets: Sequence[int] | None,
                image_config: ImageProcessingConfig, pad_id: int) -> dict[str, np.ndarray]:
    """One micro-batch of `rows` rows (trajectories, then empty rows) in the batch schema."""
    batch = collate([as_rendered(t, model_cfg.image_token_id) for t in trajectories], length_buckets=length_buckets,
                    patch_buckets=patch_buckets, batch_size=rows, image_config=image_config, pad_id=pad_id)
    inputs = inputs_lib.model_inputs(model_cfg, batch)
    shape = batch.input_ids.shape
    inputs["advantages"] = inputs_lib.token_floats(advantages, shape)
    inputs["sampler_log_probs"] = inputs_lib.token_floats([t.log_probs for t in trajectories], shape)
    return inputs


def update_batches(model_cfg: ModelConfig, trajectories: Sequence[Trajectory], advantages: Sequence[np.ndarray], *,
                   num_minibatches: int, micro_batches: int, length_buckets: Sequence[int],
                   patch_buckets: Sequence[int] | None, image_config: ImageProcessingConfig,
                   seed: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """The step's trajectories as `num_minibatches` stacked mini-batches (one optimizer update
    each) of `micro_batches` micro-batches. Mini-batches are a seeded random split; within one,
    trajectories are ordered by length so each micro-batch pads little. pad_id: the tokenizer's
    (codedance_jax.processing.tokenizer.pad_token_id); it differs between vocabularies."""
    count = len(trajectories)
    if count % (num_minibatches * micro_batches):
        raise ValueError(f"{count} trajectories do not split into {num_minibatches} mini-batches of "
                         f"{micro_batches} micro-batches")
    order = (np.random.default_rng(seed).permutation(count) if num_minibatches > 1 else np.arange(count))
    rows = count // (num_minibatches * micro_batches)
    stacked = []
    for mini in np.split(order, num_minibatches):
        mini = sorted(mini, key=lambda i: len(trajectories[i].tokens))
        micro = [micro_batch(model_cfg, [trajectories[i] for i in part], [advantages[i] for i in part], rows=rows,
                             length_buckets=length_buckets, patch_buckets=patch_buckets, image_config=image_config,
                             pad_id=pad_id)
                 for part in np.split(np.asarray(mini), micro_batches)]
        stacked.append(inputs_lib.stack_micro_batches(micro))
    return stacked
