"""The DeepEyes reward, kept as a second reward kind to measure what the BAT term adds (SPEC 4).

general: 0.8 * acc + 0.2 * format + 1.2 * tool, format = -1 on a format error else 0, tool = 1 iff
at least one tool image came back and acc > 0.5; math: 1.2 * acc + 0.4 * format (no tool term).
"""
from __future__ import annotations

from codedance_jax.rewards.extract import GENERAL, check_task


def deepeyes_reward(acc: float, format_error: bool, tool_images: int, task: str = GENERAL) -> float:
    fmt = -1.0 if format_error else 0.0
    if check_task(task) == GENERAL:
        tool = 1.0 if tool_images >= 1 and acc > 0.5 else 0.0
        return 0.8 * acc + 0.2 * fmt + 1.2 * tool
    return 1.2 * acc + 0.4 * fmt
