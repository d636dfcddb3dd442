"""Step metrics from trajectories: tool use by group difficulty and by tag, finish reasons, and
groups whose rewards are all equal (they teach nothing)."""
import pytest

from codedance_jax import rewards as rewards_lib
from codedance_jax.data.rl_prompts import RLPrompt
from rollout.trajectory import ToolCall, Trajectory
from train.rollout_metrics import group_difficulty, rollout_metrics


def trajectory(calls: int, finish="stop") -> Trajectory:
    t = Trajectory(request_id=0, tokens=[1, 2, 3, 4], loss_mask=[0, 1, 1, 0], prompt_length=1, num_turns=calls + 1)
    t.tool_calls = [ToolCall(code="print(1)", outcome="ok") for _ in range(calls)]
    t.finish(finish)
    return t


@pytest.mark.parametrize("mean,name", [(0.0, "hard"), (0.25, "hard"), (0.5, "medium"), (0.75, "easy"), (1.0, "easy")])
def test_group_difficulty(mean, name):
    assert group_difficulty(mean) == name


def test_tool_use_is_reported_by_group_difficulty_and_by_tag():
    # Group 0 is hard (all wrong) and calls tools; group 1 is easy (all right) and does not.
    answers = ["<answer>no</answer>"] * 2 + ["<answer>yes</answer>"] * 2
    calls = [1, 1, 0, 0]
    items = [rewards_lib.RewardItem(a, "yes", i // 2, outcomes=["ok"] * c)
             for i, (a, c) in enumerate(zip(answers, calls))]
    batch = rewards_lib.compute_rewards(items, "bat")
    prompts = [RLPrompt(id=str(i // 2), messages=[], images=[], ground_truth="yes", task="general",
                        difficulty=("hard", "easy")[i // 2]) for i in range(4)]
    metrics = rollout_metrics([trajectory(c, "max_turns" if c else "stop") for c in calls], batch,
                              [0, 0, 1, 1], prompts)
    assert metrics["tool_call_rate_hard_groups"] == 1.0 and metrics["tool_call_rate_easy_groups"] == 0.0
    assert "tool_call_rate_medium_groups" not in metrics  # no medium group: undefined, left out
    assert metrics["groups_hard"] == metrics["groups_easy"] == 1 and metrics["groups_medium"] == 0
    assert metrics["tool_call_rate_hard"] == 1.0 and metrics["accuracy_easy"] == 1.0
    assert metrics["zero_advantage_groups"] == 1.0  # each group's rewards are equal
    assert metrics["finish_stop"] == metrics["finish_max_turns"] == 0.5
    assert metrics["generated_tokens"] == 8 and metrics["turns"] == 1.5
