"""One GRPO step: P prompts x G samples rolled out with the current parameters (used in place),
scored by the reward, turned into per-token advantages and batches, then one or more optimizer
updates. Also greedy validation on held-out prompts through the same engine and scorer.

Everything a step does is a function of the train state and the step number (prompts from the
resumable iterator, sampling seeds from (seed, step, sample)), so a resumed run repeats exactly
what an uninterrupted one does.

On several processes every process draws the same prompts and rolls out its own contiguous
block of them (whole groups, seeds from the global sample index) on its own devices with its own
sandbox pool; it scores them and builds its block of the update batch. Only the step's metrics
(trajectories without images) and the update itself cross processes, so the samples equal a
single-process run's.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging

from codedance_jax import processes
from codedance_jax import rewards as rewards_lib
from codedance_jax.data.rl_prompts import PromptIterator, RLPrompt
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import pad_token_id
from rollout.engine import Engine, Request
from rollout.sampling import SamplingParams
from rollout.trajectory import Trajectory
from train import inputs as inputs_lib
from train.rollout_batch import reward_items, token_advantages, update_batches
from train.rollout_metrics import rollout_metrics
from train.state import TrainState

GREEDY = SamplingParams(temperature=0.0)


def derived_seed(*entropy: int) -> int:
    """A reproducible 31-bit seed from non-negative ints (the run seed, the step, a use, an index)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0] >> 1)


_SAMPLING, _MINIBATCH_SPLIT = 0, 1  # uses of a step's seeds


def gather_scored(trajectories: Sequence[Trajectory], rewards: rewards_lib.RewardBatch
                  ) -> tuple[list[Trajectory], rewards_lib.RewardBatch]:
    """Every process's scored trajectories, in process order, for the step's metrics (images
    and log-probs stay behind: metrics read neither)."""
    light = [dataclasses.replace(t, images=[], log_probs=[]) for t in trajectories]
    parts = processes.gather_objects((light, rewards))
    merged = rewards_lib.RewardBatch(
        rewards.kind, [r for _, part in parts for r in part.trajectories],
        num_invalid=sum(part.num_invalid for _, part in parts),
        judge_fallbacks=sum(part.judge_fallbacks for _, part in parts))
    return [t for part, _ in parts for t in part], merged


def with_system_prompt(prompt: RLPrompt, system_prompt: str) -> list[dict]:
    if not system_prompt or any(m["role"] == "system" for m in prompt.messages):
        return prompt.messages
    return [{"role": "system", "content": system_prompt}] + prompt.messages


@dataclasses.dataclass
class StepTimes:
    rollout_s: float = 0.0
    tool_wait_s: float = 0.0
    scoring_s: float = 0.0
    update_s: float = 0.0


class GRPOStep:
    """Callable train step for `train.loop.run_training`: state -> (state, metrics)."""

    def __init__(self, config, *, engine: Engine, tokenizer, prompts: PromptIterator, update_fn, mesh,
                 image_config: ImageProcessingConfig, ref_params=None, old_log_probs_fn=None, judge=None,
                 eval_prompts: Sequence[RLPrompt] = (), eval_benchmarks: Sequence = (), workdir: str = "",
                 sampling_weights: Callable[[dict], dict] = lambda params: params):
        """eval_benchmarks: (Benchmark, Dataset) pairs of codedance_jax.eval, validated like
        eval.main (greedy, the benchmark's own scorer); their records go to
        workdir/validation/step_N/NAME.
        sampling_weights: the train state's parameters -> the engine's (rollout/weights.py)."""
        self.sampling_weights = sampling_weights
        self.config, self.engine, self.tokenizer, self.prompts = config, engine, tokenizer, prompts
        self.update_fn, self.mesh, self.image_config = update_fn, mesh, image_config
        self.ref_params, self.old_log_probs_fn, self.judge = ref_params, old_log_probs_fn, judge
        self.eval_prompts, self.eval_benchmarks, self.workdir = list(eval_prompts), list(eval_benchmarks), workdir

    def _requests(self, prompts: Sequence[RLPrompt], step: int, first: int) -> list[Request]:
        """Requests for prompts[first:first + len(prompts)] of the step (seeded by global index)."""
        group_size = self.config.grpo.group_size
        system = self.config.data.system_prompt
        return [Request(messages=with_system_prompt(p, system), images=p.images, request_id=f"{p.id}#{g}",
                        seed=derived_seed(self.config.seed, step, _SAMPLING, (first + i) * group_size + g))
                for i, p in enumerate(prompts) for g in range(group_size)]

    def _score(self, trajectories, prompts, group_ids) -> rewards_lib.RewardBatch:
        items = reward_items(trajectories, prompts, group_ids, self.tokenizer)
        rewards = rewards_lib.compute_rewards(items, self.config.reward.kind, judge=self.judge,
                                              invalid=self.config.reward.invalid, gather=processes.gather_objects)
        for reward in rewards.trajectories:
            if reward.error:
                logging.warning("GRPO skipped a trajectory (counted in num_invalid): %s", reward.error)
        return rewards

    def __call__(self, state: TrainState) -> tuple[TrainState, dict]:
        config, times = self.config, StepTimes()
        step = int(state.step)
        started = time.perf_counter()
        prompts = self.prompts.next_prompts(config.grpo.prompts_per_step)  # the same on every process
        mine = processes.share(len(prompts))
        local_prompts = [prompts[i] for i in mine]
        trajectories = self.engine.generate(self._requests(local_prompts, step, mine.start),
                                            params=self.sampling_weights(state.params))
        times.rollout_s, times.tool_wait_s = time.perf_counter() - started, self.engine.stats.tool_wait_s

        scored_at = time.perf_counter()
        group_size = config.grpo.group_size
        rewards = self._score(trajectories, [p for p in local_prompts for _ in range(group_size)],
                              [i // group_size for i in range(len(trajectories))])
        advantages = [token_advantages(t, r) for t, r in zip(trajectories, rewards.trajectories)]
        everyone, all_rewards = gather_scored(trajectories, rewards)
        metrics = rollout_metrics(everyone, all_rewards, [i // group_size for i in range(len(everyone))],
                                  [p for p in prompts for _ in range(group_size)])
        times.scoring_s = time.perf_counter() - scored_at

        updated_at = time.perf_counter()
        # A skipped trajectory (no usable ground truth) keeps its row but is out of the token mean.
        trajectories = [t if r.score is not None else dataclasses.replace(t, loss_mask=[0] * len(t.loss_mask))
                        for t, r in zip(trajectories, rewards.trajectories)]
        minibatches = update_batches(
            self.engine.model_config, trajectories, advantages, num_minibatches=config.grpo.num_minibatches,
            micro_batches=config.grad_accum_steps, length_buckets=config.length_buckets,
            patch_buckets=config.patch_buckets, image_config=self.image_config,
            seed=derived_seed(config.seed, step, _MINIBATCH_SPLIT), pad_id=pad_token_id(self.tokenizer))
        batches = [inputs_lib.global_batch(inputs_lib.agree_across_processes(mb), self.mesh) for mb in minibatches]
        if self.old_log_probs_fn is not None:  # several updates: freeze the old policy first
            for batch in batches:
                batch["old_log_probs"] = self.old_log_probs_fn(state.params, batch)
        update_metrics = []
        for batch in batches:
            state, device_metrics = self.update_fn(state, batch, self.ref_params)
            update_metrics.append(device_metrics)
        update_metrics = jax.device_get(update_metrics)
        times.update_s = time.perf_counter() - updated_at

        for name in update_metrics[0]:
            metrics[name] = float(np.mean([m[name] for m in update_metrics]))
        metrics["update_refused"] = float(sum(m["update_refused"] for m in update_metrics))
        metrics.update(dataclasses.asdict(times), step_s=time.perf_counter() - started,
                       tokens=metrics["generated_tokens"])
        return state, metrics

    def validate(self, state: TrainState) -> dict[str, float]:
        """Greedy rollouts on the held-out prompts, scored like training, and on the configured
        benchmarks, scored by their own rules; metrics prefixed val_."""
        metrics = self._validate_prompts(state) if self.eval_prompts else {}
        for benchmark, dataset in self.eval_benchmarks:
            metrics.update(self._validate_benchmark(state, benchmark, dataset))
        return metrics

    def _validate_prompts(self, state: TrainState) -> dict[str, float]:
        system = self.config.data.system_prompt
        local_prompts = [self.eval_prompts[i] for i in processes.share(len(self.eval_prompts))]
        requests = [Request(messages=with_system_prompt(p, system), images=p.images, request_id=p.id, sampling=GREEDY)
                    for p in local_prompts]
        trajectories = self.engine.generate(requests, params=self.sampling_weights(state.params))
        rewards = self._score(trajectories, local_prompts, list(range(len(trajectories))))
        everyone, all_rewards = gather_scored(trajectories, rewards)
        metrics = rollout_metrics(everyone, all_rewards, list(range(len(everyone))), self.eval_prompts)
        keep = ("reward", "accuracy", "format_error", "tool_call_rate", "tool_success_rate", "turns",
                "response_length")
        tagged = [k for k in metrics if k.startswith(("accuracy_", "tool_call_rate_")) and not k.endswith("_groups")]
        return {f"val_{k}": metrics[k] for k in (*keep, *tagged) if k in metrics}

    def _validate_benchmark(self, state: TrainState, benchmark, dataset) -> dict[str, float]:
        from codedance_jax.eval import summary
        from codedance_jax.eval.runner import Runner

        items = dataset.items[: self.config.eval_limit]
        out_dir = os.path.join(self.workdir, "validation", f"step_{int(state.step)}", benchmark.name)
        records = []
        runner = Runner(self.engine, self.tokenizer, benchmark, out_dir, self.config.data.system_prompt or None,
                        self.judge, sampling=GREEDY)
        runner.run([items[i] for i in processes.share(len(items))], records.append, progress=False,
                   params=self.sampling_weights(state.params))
        records = [record for part in processes.gather_objects(records) for record in part]
        result = summary.summarize(benchmark, dataset, records, [item.id for item in items])
        return {f"val_{benchmark.name}_{k}": float(result[k]) for k in ("overall", "tool_call_rate") if k in result}
