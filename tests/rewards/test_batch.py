"""compute_rewards over a GRPO batch and the data_source -> task mapping, hand-computed."""
import math
import subprocess
import sys

import numpy as np
import pytest

from codedance_jax import rewards
from codedance_jax.rewards import RewardItem

RIGHT, WRONG, BROKEN = "<think>t</think><answer>5</answer>", "<think>t</think><answer>6</answer>", "<think>t"


def d(mu):
    return (1 + math.tanh(4 * (0.5 - mu))) / 2 - 0.2


def make_batch():
    # Group "g": right with a good call, right without calls, wrong with a timeout, a format error.
    # Group "m" (math): right with one failed then one good call, wrong without calls.
    return [
        RewardItem([RIGHT], "5", "g", outcomes=["ok"], tool_images=1),
        RewardItem([RIGHT], "5", "g"),
        RewardItem([WRONG], "5", "g", outcomes=["timeout"], tool_images=0),
        RewardItem([BROKEN], "5", "g"),
        RewardItem([RIGHT], "5", "m", task="math", outcomes=["error", "ok"], tool_images=2),
        RewardItem([WRONG], "5", "m", task="math"),
    ]


def test_bat_batch_by_hand():
    batch = rewards.compute_rewards(make_batch(), kind="bat")
    base = [1.0, 1.0, 0.0, -0.2, 1.2, 0.0]
    assert [t.score.base for t in batch.trajectories] == pytest.approx(base)
    mu_g, mu_m = np.mean(base[:4]), np.mean(base[4:])
    tool = [1.5, 0.0, 0.0, 0.0, 2.0 * 0.5, 0.0]
    expected = [b + d(mu) * t for b, t, mu in zip(base, tool, [mu_g] * 4 + [mu_m] * 2)]
    np.testing.assert_allclose(batch.rewards, expected)
    assert [t.mu for t in batch.trajectories] == pytest.approx([mu_g] * 4 + [mu_m] * 2)
    np.testing.assert_allclose(batch.advantages, rewards.group_advantages(expected, list("ggggmm")))
    # Calls in the batch: [ok], [timeout], [error, ok] -> raw c = [0], [-0.5], [-0.5, 0].
    raw = np.array([0.0, -0.5, -0.5, 0.0])
    z = (raw - raw.mean()) / raw.std()
    assert [t.step_values for t in batch.trajectories] == [[z[0]], [], [z[1]], [], [z[2], z[3]], []]
    metrics = batch.metrics()
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["format_error"] == pytest.approx(1 / 6)
    assert metrics["tool_call_rate"] == pytest.approx(3 / 6)
    assert metrics["tool_success_rate"] == pytest.approx(2 / 4)


def test_deepeyes_and_accuracy_kinds():
    deepeyes = rewards.compute_rewards(make_batch(), kind="deepeyes")
    np.testing.assert_allclose(deepeyes.rewards, [2.0, 0.8, 0.0, -0.2, 1.2, 0.0])
    accuracy = rewards.compute_rewards(make_batch(), kind="accuracy")
    np.testing.assert_allclose(accuracy.rewards, [1, 1, 0, 0, 1, 0])
    for batch in (deepeyes, accuracy):
        assert [t.step_values for t in batch.trajectories] == [[0.0], [], [0.0], [], [0.0, 0.0], []]
    # Tool term and d are still reported, for comparison across kinds.
    assert accuracy.trajectories[0].tool == pytest.approx(1.5)
    with pytest.raises(ValueError, match="'ppo'"):
        rewards.compute_rewards(make_batch(), kind="ppo")


def test_equal_rewards_give_zero_advantages():
    items = [RewardItem([RIGHT], "5", 0, outcomes=["ok"]) for _ in range(4)]
    batch = rewards.compute_rewards(items)
    np.testing.assert_array_equal(batch.advantages, 0.0)


def test_bad_ground_truth_raises_naming_the_record_or_is_counted():
    items = make_batch() + [RewardItem([RIGHT], None, "g", outcomes=["error"], record_id="vstar-17")]
    with pytest.raises(rewards.RewardInputError, match="record vstar-17: ground_truth"):
        rewards.compute_rewards(items)
    batch = rewards.compute_rewards(items, invalid="skip")
    assert batch.num_invalid == 1 and batch.metrics()["num_invalid"] == 1.0
    bad = batch.trajectories[-1]
    assert (bad.reward, bad.advantage, bad.step_values, bad.score) == (0.0, 0.0, [0.0], None)
    assert "vstar-17" in bad.error
    assert batch.valid.tolist() == [True] * 6 + [False]
    # The skipped item changes neither its group's statistics nor the step normalisation.
    clean = rewards.compute_rewards(make_batch())
    np.testing.assert_allclose(batch.rewards[:6], clean.rewards)
    np.testing.assert_allclose(batch.advantages[:6], clean.advantages)
    assert [t.step_values for t in batch.trajectories[:6]] == [t.step_values for t in clean.trajectories]


def test_wrong_task_or_outcome_names_the_record():
    with pytest.raises(rewards.RewardInputError, match="record r1: task: 'chart'"):
        rewards.compute_rewards([RewardItem([RIGHT], "5", 0, task="chart", record_id="r1")])
    with pytest.raises(rewards.RewardInputError, match="record 1: outcomes"):
        rewards.compute_rewards([RewardItem([RIGHT], "5", 0), RewardItem([RIGHT], "5", 0, outcomes=["Error"])],
                                invalid="skip")


@pytest.mark.parametrize("source, extra, task", [
    ("vstar", None, "general"), ("chart", {}, "general"), ("SA1B", None, "general"), ("vl_agent", None, "general"),
    ("thinklite_eureka", None, "math"), ("xince", None, "math"), ("anything", {"task": "math"}, "math"),
])
def test_task_for_record(source, extra, task):
    assert rewards.task_for_record(source, extra) == task


def test_unknown_data_source():
    with pytest.raises(ValueError, match="record 12: unknown data_source 'geoqa'"):
        rewards.task_for_record("geoqa", {}, record_id=12)
    assert rewards.task_for_record("geoqa", {}, default="math") == "math"
    with pytest.raises(ValueError, match="extra_info.task"):
        rewards.task_for_record("vstar", {"task": "counting"}, record_id=3)


def test_rewards_import_neither_jax_nor_sympy():
    code = ("import sys; from codedance_jax import rewards; "
            "print(sorted(m for m in ('jax', 'sympy', 'math_verify', 'openai', 'rollout') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
