"""Tool term, difficulty factor, step values, group advantages and the DeepEyes reward."""
import math

import numpy as np
import pytest

from codedance_jax import rewards


def test_outcome_names_equal_the_rollout_constants():
    from rollout import trajectory
    assert (rewards.TOOL_OK, rewards.TOOL_ERROR, rewards.TOOL_TIMEOUT, rewards.TOOL_PARSE_ERROR) == \
        (trajectory.TOOL_OK, trajectory.TOOL_ERROR, trajectory.TOOL_TIMEOUT, trajectory.TOOL_PARSE_ERROR)


@pytest.mark.parametrize("acc, outcomes, task, term", [
    (1, [], "general", 0.0), (0, [], "math", 0.0),
    (1, ["ok"], "general", 1.5), (0, ["ok"], "general", 0.5),
    (1, ["ok", "error"], "general", 0.75), (0, ["ok", "ok", "timeout", "parse_error"], "general", 0.25),
    (1, ["ok", "error"], "math", 1.0), (0, ["ok", "timeout"], "math", 0.5),
    (1, ["timeout"], "general", 0.0),  # a timeout is a failed call
])
def test_tool_term(acc, outcomes, task, term):
    assert rewards.tool_term(acc, outcomes, task) == pytest.approx(term)


def test_failure_comes_from_the_outcome_not_the_printed_text():
    # A program that printed "Error: not found" ran fine (outcome ok); a silent timeout failed.
    from rollout.trajectory import ToolCall
    printed_error = ToolCall(code="print('Error: not found')", outcome="ok", stdout="Error: not found\n")
    silent_timeout = ToolCall(code="while True: pass", outcome="timeout")
    outcomes = [printed_error.outcome, silent_timeout.outcome]
    assert rewards.success_rate(outcomes) == 0.5
    assert rewards.tool_term(1, outcomes) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown tool call outcome"):
        rewards.tool_term(1, ["Error"])


def test_difficulty_factor_spec_values():
    assert rewards.difficulty_factor(0.0) == pytest.approx(0.78, abs=5e-3)
    assert rewards.difficulty_factor(0.5) == pytest.approx(0.30)
    assert rewards.difficulty_factor(1.0) == pytest.approx(-0.18, abs=5e-3)
    assert abs(rewards.difficulty_factor(0.67)) < 0.01
    assert rewards.difficulty_factor(-0.4) == pytest.approx((1 + math.tanh(3.6)) / 2 - 0.2)  # not clipped
    assert rewards.difficulty_factor(0.5, gamma=1.0, beta=0.0) == pytest.approx(0.5)


def test_step_values_recursion_and_batch_normalisation():
    batch = [["ok", "error", "ok"], ["timeout"], [], ["ok"]]
    # c_i = s_i + 0.2 c_{i+1}, the answer turn's 0 after the last call.
    raw = [[0 + 0.2 * (-0.5 + 0.2 * 0), -0.5 + 0.2 * 0, 0], [-0.5], [], [0]]
    assert [list(v) for v in map(rewards.bat.discounted_step_scores, batch)] == \
        [pytest.approx(r) for r in raw]
    flat = np.array([v for r in raw for v in r])
    expected = [[(v - flat.mean()) / flat.std() for v in r] for r in raw]
    got = rewards.step_values(batch)
    assert [len(v) for v in got] == [3, 1, 0, 1]
    for g, e in zip(got, expected):
        assert g == pytest.approx(e)


def test_step_values_left_raw_when_the_batch_has_one_value():
    assert rewards.step_values([["error"], ["error"]]) == [[-0.5], [-0.5]]
    assert rewards.step_values([["ok"], ["ok", "ok"], []]) == [[0.0], [0.0, 0.0], []]
    assert rewards.step_values([[], []]) == [[], []]


def test_group_advantages_against_numpy():
    rng = np.random.default_rng(0)
    r = rng.normal(size=13)
    gids = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"]
    expected = np.empty_like(r)
    for g in set(gids):
        idx = np.array([i for i, x in enumerate(gids) if x == g])
        if len(idx) == 1:
            expected[idx] = r[idx] / (1.0 + 1e-6)
        else:
            expected[idx] = (r[idx] - r[idx].mean()) / (r[idx].std(ddof=1) + 1e-6)
    np.testing.assert_allclose(rewards.group_advantages(r, gids), expected, rtol=1e-12)
    np.testing.assert_array_equal(rewards.group_advantages([0.7, 0.7, 0.7], [1, 1, 1]), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        rewards.group_advantages([1.0, 2.0], [0])


def test_segment_advantages():
    assert rewards.segment_advantages(1.0, [0.5, -1.0], 3) == pytest.approx([1.1, 0.8, 1.0])
    assert rewards.segment_advantages(-0.3, [2.0], 1) == pytest.approx([0.1])  # ended on a call
    assert rewards.segment_advantages(0.7, [], 1) == [0.7]
    with pytest.raises(ValueError, match="2 tool calls but only 1"):
        rewards.segment_advantages(0.0, [0.1, 0.2], 1)


@pytest.mark.parametrize("acc, fmt, images, task, reward", [
    (1, False, 0, "general", 0.8), (1, False, 2, "general", 2.0), (0, False, 2, "general", 0.0),
    (1, True, 1, "general", 1.8), (0, True, 0, "general", -0.2),
    (1, False, 3, "math", 1.2), (0, True, 3, "math", -0.4), (1, True, 0, "math", 0.8),
])
def test_deepeyes_reward(acc, fmt, images, task, reward):
    assert rewards.deepeyes_reward(acc, fmt, images, task) == pytest.approx(reward)


def test_step_values_of_process_blocks_are_normalised_over_the_whole_batch():
    batch = [["ok", "error"], ["timeout"], [], ["ok", "ok", "error"], ["parse_error"]]
    blocks = (batch[:2], batch[2:])
    raws = [np.asarray([v for o in block for v in rewards.bat.discounted_step_scores(o)]) for block in blocks]
    joined = [v for i, block in enumerate(blocks)
              for v in rewards.step_values(block, gather=lambda mine, i=i: [raws[0], raws[1]])]
    assert joined == rewards.step_values(batch)
    assert rewards.step_values(blocks[0]) != joined[:2]  # normalised per block they would differ
