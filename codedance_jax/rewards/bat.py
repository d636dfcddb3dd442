"""The tool-use-balancing (BAT) terms of CodeDance (SPEC section 4).

A call failed when its structured outcome is not "ok" (a timeout fails; a program that printed
"Error" and ran fine succeeds); the tool text is never searched. Only real calls are passed in.

- `tool_term(acc, outcomes, task)`: 0 without calls, else
  (acc > 0.5 ? 1.5 : 0.5) * success_rate for general tasks, (2.0 : 1.0) for math.
- `difficulty_factor(mu)`: (1 + tanh(gamma * (0.5 - mu))) / 2 - beta, not clipped; mu is the
  group's mean base score. BAT reward = base + d * tool_term.
- `step_values(outcomes_per_trajectory)`: per call s_i = -0.5 if failed else 0, a trailing 0 for the
  answer turn, c_i = s_i + 0.2 * c_{i+1}; the c_i of every call in the batch (the trailing 0s are
  not among them) are z-normalised together with the population std, or left raw when that std is
  <= 1e-8. The trainer adds STEP_WEIGHT * c_i to the advantage of the turn that wrote call i.
  On a multi-host batch, `gather` brings every process's c_i so all are normalised together.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from codedance_jax.rewards.extract import GENERAL, check_task

# Tool call outcomes; equal to rollout.trajectory's TOOL_* (a test checks), kept here so rewards
# needs neither JAX nor the rollout package.
TOOL_OK, TOOL_ERROR, TOOL_TIMEOUT, TOOL_PARSE_ERROR = "ok", "error", "timeout", "parse_error"
OUTCOMES = (TOOL_OK, TOOL_ERROR, TOOL_TIMEOUT, TOOL_PARSE_ERROR)

# (scale when correct, scale when wrong) of the success rate, per task.
TOOL_SCALES = {GENERAL: (1.5, 0.5), "math": (2.0, 1.0)}
GAMMA, BETA = 4.0, 0.2
FAILED_CALL_SCORE = -0.5
STEP_DISCOUNT = 0.2
STEP_WEIGHT = 0.2
STD_FLOOR = 1e-8


def failed_calls(outcomes: Sequence[str]) -> int:
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown tool call outcome(s) {unknown}; expected one of {OUTCOMES}")
    return sum(outcome != TOOL_OK for outcome in outcomes)


def success_rate(outcomes: Sequence[str]) -> float | None:
    """Share of calls that succeeded; None without calls."""
    return (len(outcomes) - failed_calls(outcomes)) / len(outcomes) if outcomes else None


def tool_term(acc: float, outcomes: Sequence[str], task: str = GENERAL) -> float:
    rate = success_rate(outcomes)
    if rate is None:
        return 0.0
    correct_scale, wrong_scale = TOOL_SCALES[check_task(task)]
    return (correct_scale if acc > 0.5 else wrong_scale) * rate


def difficulty_factor(mu: float, gamma: float = GAMMA, beta: float = BETA) -> float:
    return (1.0 + math.tanh(gamma * (0.5 - mu))) / 2.0 - beta


def discounted_step_scores(outcomes: Sequence[str]) -> list[float]:
    """c_i of each call before normalisation (the answer turn's trailing 0 not included)."""
    failed_calls(outcomes)  # refuses unknown outcomes
    values, later = [], 0.0  # `later` starts as the answer turn's 0
    for outcome in reversed(outcomes):
        later = (FAILED_CALL_SCORE if outcome != TOOL_OK else 0.0) + STEP_DISCOUNT * later
        values.append(later)
    return values[::-1]


def step_values(outcomes_per_trajectory: Sequence[Sequence[str]],
                gather: Callable[[np.ndarray], list[np.ndarray]] | None = None) -> list[list[float]]:
    """gather: this process's raw c_i -> every process's, in process order
    (`processes.gather_objects`); the batch is then the union of the processes' trajectories.
    Every process must call it, also with no calls of its own."""
    raw = [discounted_step_scores(outcomes) for outcomes in outcomes_per_trajectory]
    flat = np.asarray([v for values in raw for v in values], np.float64)
    if gather is not None:
        flat = np.concatenate([np.asarray(part, np.float64) for part in gather(flat)])
    if flat.size == 0:
        return raw
    mean, std = flat.mean(), flat.std()
    if std <= STD_FLOOR:
        return raw
    return [[float((v - mean) / std) for v in values] for values in raw]
