"""GRPO advantages (SPEC section 4).

`group_advantages`: per group (r - mean) / (std + 1e-6), unbiased std; a group of one has mean 0
and std 1 (so its advantage is r / (1 + 1e-6)), as in the release. A larger group whose rewards are
all equal gets exactly 0 (the float mean of equal values can be off by one ulp, which the 1e-6
denominator would blow up to a spurious ~1e-10 advantage).

`segment_advantages`: the advantage of each generated segment (assistant turn) of a trajectory:
turn i, which wrote call i, gets advantage + STEP_WEIGHT * step value i; turns after the last call
(the answer turn) get the advantage alone. Every token of a segment carries its segment's value.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from codedance_jax.rewards.bat import STEP_WEIGHT

EPS = 1e-6


def group_advantages(rewards: Sequence[float], group_ids: Sequence[Hashable]) -> np.ndarray:
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1 or len(group_ids) != len(rewards):
        raise ValueError(f"rewards {rewards.shape} and group_ids ({len(group_ids)}) must be 1-D and equally long")
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(i)
    out = np.zeros_like(rewards)
    for idx in members.values():
        r = rewards[idx]
        if len(r) == 1:
            out[idx] = r / (1.0 + EPS)
        elif np.ptp(r) > 0:
            out[idx] = (r - r.mean()) / (r.std(ddof=1) + EPS)
    return out


def segment_advantages(advantage: float, step_values: Sequence[float], num_segments: int) -> list[float]:
    if num_segments < len(step_values):
        raise ValueError(f"{len(step_values)} tool calls but only {num_segments} generated segments; "
                         "each call is written by its own assistant turn")
    steps = list(step_values) + [0.0] * (num_segments - len(step_values))
    return [advantage + STEP_WEIGHT * value for value in steps]
