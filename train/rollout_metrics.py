"""What a GRPO step's rollouts say about the policy: reward parts, tool use by how hard the
group found the prompt, turns, lengths, finish reasons and groups that teach nothing."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from codedance_jax.data.rl_prompts import RLPrompt
from codedance_jax.rewards import RewardBatch
from rollout.trajectory import Trajectory

DIFFICULTIES = ("hard", "medium", "easy")


def group_difficulty(mean_accuracy: float) -> str:
    """How hard a group found its prompt: at most 1 in 4 samples right is hard, at least 3 in 4 easy."""
    return "hard" if mean_accuracy <= 0.25 else "easy" if mean_accuracy >= 0.75 else "medium"


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def rollout_metrics(trajectories: Sequence[Trajectory], rewards: RewardBatch, group_ids: Sequence[int],
                    prompts: Sequence[RLPrompt]) -> dict[str, float]:
    """Step metrics; one that is undefined this step (a rate over no trajectories) is left out."""
    metrics = rewards.metrics()
    scored = [i for i, t in enumerate(rewards.trajectories) if t.score is not None]
    uses_tools = np.asarray([len(t.tool_calls) > 0 for t in trajectories])
    members = defaultdict(list)
    for i in scored:
        members[group_ids[i]].append(i)
    difficulty = {gid: group_difficulty(np.mean([rewards.trajectories[j].score.acc for j in idx]))
                  for gid, idx in members.items()}
    for name in DIFFICULTIES:
        groups = [gid for gid in members if difficulty[gid] == name]
        metrics[f"tool_call_rate_{name}_groups"] = _mean(uses_tools[[i for gid in groups for i in members[gid]]])
        metrics[f"groups_{name}"] = float(len(groups))
    for tag in sorted({p.difficulty for p in prompts if p.difficulty}):
        tagged = [i for i in scored if prompts[i].difficulty == tag]
        metrics[f"tool_call_rate_{tag}"] = _mean(uses_tools[tagged])
        metrics[f"accuracy_{tag}"] = _mean([rewards.trajectories[i].score.acc for i in tagged])
    advantages = rewards.advantages
    metrics["zero_advantage_groups"] = _mean([bool(np.all(advantages[idx] == 0)) for idx in members.values()])
    metrics["turns"] = _mean([t.num_turns for t in trajectories])
    metrics["response_length"] = _mean([t.response_length for t in trajectories])
    metrics["generated_tokens"] = float(sum(sum(t.loss_mask) for t in trajectories))
    reasons = Counter(t.finish_reason for t in trajectories)
    for reason, count in reasons.items():
        metrics[f"finish_{reason}"] = count / len(trajectories)
    return {name: value for name, value in metrics.items() if not np.isnan(value)}  # undefined this step
