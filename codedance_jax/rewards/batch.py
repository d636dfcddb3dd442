"""Everything the GRPO trainer needs from one batch of trajectories, in one call.

`compute_rewards(items, kind, judge=None, invalid="raise", gather=None)` scores every `RewardItem` and returns a
`RewardBatch`: per trajectory the reward, its parts (`Score`, tool term, d, mu), the group
advantage and one step value per tool call. Reward kinds:

- "bat": base + d * tool_term, d from mu = mean base score of the trajectory's group (CodeDance);
  step values as in `bat.step_values`.
- "deepeyes": `deepeyes_reward` (acc, format error, tool images); step values all 0.
- "accuracy": acc alone (no format penalty, no tool term); step values all 0.

The tool term, d and mu are reported for every kind so runs can be compared. An item whose ground
truth cannot be used raises `RewardInputError` naming the record and field, or with
invalid="skip" is counted (`num_invalid`) and gets reward, advantage and step values 0, and stays
out of its group's statistics and of the step normalisation. The trainer adds `bat.STEP_WEIGHT`
(0.2) times a call's step value to the advantage of the assistant turn that wrote that call
(`advantages.segment_advantages(t.advantage, t.step_values, num_segments)` per trajectory).
Groups are whole within `items`; on a multi-host batch `gather` (`processes.gather_objects`) pools
the step normalisation over every process's items.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from codedance_jax.rewards.advantages import group_advantages
from codedance_jax.rewards.bat import OUTCOMES, difficulty_factor, failed_calls, step_values, tool_term
from codedance_jax.rewards.deepeyes import deepeyes_reward
from codedance_jax.rewards.extract import GENERAL, TASKS
from codedance_jax.rewards.match import GroundTruthError
from codedance_jax.rewards.score import Score, needs_judge, score_by_rules, with_judge_verdict

KINDS = ("bat", "deepeyes", "accuracy")


class RewardInputError(ValueError):
    """An item that cannot be scored; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class RewardItem:
    response: str | Sequence[str]       # the generated segments (or their text); never tool output
    ground_truth: object                # str, number or list of acceptable answers
    group_id: Hashable                  # the prompt's GRPO group
    task: str = GENERAL
    options: Sequence[str] | None = None
    outcomes: Sequence[str] = ()        # one per real tool call: "ok", "error", "timeout", "parse_error"
    tool_images: int = 0                # images the tool calls returned (DeepEyes)
    question: str = ""                  # shown to a judge
    record_id: object = None            # names the record in errors


@dataclasses.dataclass(frozen=True)
class TrajectoryReward:
    reward: float
    advantage: float
    step_values: list[float]            # one per tool call, in call order
    score: Score | None                 # None when the item was invalid
    tool: float                         # BAT tool term
    d: float                            # difficulty factor of the group
    mu: float                           # group mean base score
    num_calls: int = 0
    failed_calls: int = 0
    error: str | None = None            # why the item was skipped


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    kind: str
    trajectories: list[TrajectoryReward]
    num_invalid: int
    judge_fallbacks: int                # judged items whose judge failed and the rules decided

    @property
    def rewards(self) -> np.ndarray:
        return np.asarray([t.reward for t in self.trajectories], np.float64)

    @property
    def advantages(self) -> np.ndarray:
        return np.asarray([t.advantage for t in self.trajectories], np.float64)

    @property
    def valid(self) -> np.ndarray:
        return np.asarray([t.score is not None for t in self.trajectories], bool)

    def metrics(self) -> dict[str, float]:
        """Batch means of the reward and its parts over valid trajectories (NaN when there are none)."""
        scored = [t for t in self.trajectories if t.score is not None]
        steps = [v for t in scored for v in t.step_values]
        calls = sum(t.num_calls for t in scored)

        def mean(values):
            return float(np.mean(values)) if len(values) else float("nan")

        return {
            "reward": mean([t.reward for t in scored]), "accuracy": mean([t.score.acc for t in scored]),
            "format_error": mean([t.score.format_error for t in scored]),
            "base": mean([t.score.base for t in scored]), "tool_term": mean([t.tool for t in scored]),
            "difficulty": mean([t.d for t in scored]), "step_value": mean(steps),
            "tool_call_rate": mean([t.num_calls > 0 for t in scored]),
            "calls_per_trajectory": mean([t.num_calls for t in scored]),
            "tool_success_rate": 1.0 - sum(t.failed_calls for t in scored) / calls if calls else float("nan"),
            "num_invalid": float(self.num_invalid), "judge_fallbacks": float(self.judge_fallbacks),
        }


def _score_all(items: Sequence[RewardItem], invalid: str, judge) -> tuple[list, list, int]:
    scores, errors = [], []
    for i, item in enumerate(items):
        record = item.record_id if item.record_id is not None else i
        # A wrong task or outcome name is a bug upstream, never skipped.
        if item.task not in TASKS:
            raise RewardInputError(f"record {record}: task: {item.task!r} is not one of {TASKS}")
        if not set(item.outcomes) <= set(OUTCOMES):
            raise RewardInputError(f"record {record}: outcomes: {list(item.outcomes)} has names outside {OUTCOMES}")
        try:
            scores.append(score_by_rules(item.response, item.ground_truth, item.task, item.options))
            errors.append(None)
        except GroundTruthError as e:
            message = f"record {record}: ground_truth: {e}"
            if invalid == "raise":
                raise RewardInputError(message) from e
            scores.append(None)
            errors.append(message)
    to_judge = [i for i, s in enumerate(scores) if judge is not None and s is not None and needs_judge(s)]
    fallbacks = 0
    if to_judge:
        verdicts = judge.verdicts([(items[i].question, scores[i].answer, items[i].ground_truth) for i in to_judge])
        for i, verdict in zip(to_judge, verdicts):
            fallbacks += verdict is None
            scores[i] = with_judge_verdict(scores[i], verdict)
    return scores, errors, fallbacks


def _reward(kind: str, score: Score, tool: float, d: float, tool_images: int) -> float:
    if kind == "bat":
        return score.base + d * tool
    if kind == "deepeyes":
        return deepeyes_reward(score.acc, score.format_error, tool_images, score.task)
    return float(score.acc)


def compute_rewards(items: Sequence[RewardItem], kind: str = "bat", judge=None, invalid: str = "raise",
                    gather: Callable[[object], list] | None = None) -> RewardBatch:
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")
    if invalid not in ("raise", "skip"):
        raise ValueError(f"invalid must be 'raise' or 'skip', not {invalid!r}")
    scores, errors, fallbacks = _score_all(items, invalid, judge)
    valid = [i for i, s in enumerate(scores) if s is not None]

    group_bases: dict[Hashable, list[float]] = {}
    for i in valid:
        group_bases.setdefault(items[i].group_id, []).append(scores[i].base)
    mu = {gid: float(np.mean(bases)) for gid, bases in group_bases.items()}

    rewards = {}
    for i in valid:
        tool = tool_term(scores[i].acc, items[i].outcomes, items[i].task)
        d = difficulty_factor(mu[items[i].group_id])
        rewards[i] = (_reward(kind, scores[i], tool, d, items[i].tool_images), tool, d)
    advantages = dict(zip(valid, group_advantages([rewards[i][0] for i in valid], [items[i].group_id for i in valid])))
    steps = dict(zip(valid, step_values([items[i].outcomes for i in valid], gather)))

    trajectories = []
    for i, item in enumerate(items):
        if scores[i] is None:
            trajectories.append(TrajectoryReward(0.0, 0.0, [0.0] * len(item.outcomes), None, 0.0, 0.0, 0.0,
                                                 error=errors[i]))
            continue
        reward, tool, d = rewards[i]
        values = steps[i] if kind == "bat" else [0.0] * len(item.outcomes)
        trajectories.append(TrajectoryReward(reward, float(advantages[i]), values, scores[i], tool, d,
                                             mu[item.group_id], len(item.outcomes), failed_calls(item.outcomes)))
    return RewardBatch(kind, trajectories, num_invalid=len(items) - len(valid), judge_fallbacks=fallbacks)

