"""The GRPO presets carry the release's settings, bad settings are refused before anything is
built, and the samples of a group get distinct seeds."""
import pytest

from codedance_jax.data.rl_prompts import RLPrompt
from configs.grpo import get_config
from train.grpo import check_config
from train.grpo_trainer import GRPOStep


@pytest.mark.parametrize("preset", ["3b", "7b"])
def test_release_presets_match_spec_section_5(preset):
    c = get_config(preset)
    assert (c.grpo.group_size, c.grpo.prompts_per_step, c.grpo.num_minibatches) == (8, 256, 1)
    assert (c.learning_rate, c.warmup_steps, c.min_lr_ratio) == (1e-6, 0, 1.0)  # constant
    assert (c.weight_decay, c.grad_clip) == (0.01, 1.0)
    assert (c.loss.kl_coef, c.loss.tis_cap) == (0.0, 0.0)
    assert (c.loss.clip_low, c.loss.clip_high, c.loss.dual_clip, c.loss.aggregation) == (0.2, 0.2, 3.0, "token-mean")
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.top_k) == (1.0, 1.0, 0)
    assert (c.rollout.max_turns, c.rollout.max_response_tokens, c.rollout.max_context) == (6, 10240, 20480)
    assert (c.sandbox.timeout_s, c.checkpoint_every, c.reward.kind) == (15.0, 20, "bat")
    check_config(c)


@pytest.mark.parametrize("key, value, message", [
    ("reward.kind", "bta", "reward.kind='bta'"),
    ("reward.invalid", "ignore", "reward.invalid='ignore'"),
    ("grpo.group_size", 1, "group_size must be >= 2"),
    ("rollout.max_context", 4096, "exceeds the largest length bucket"),
    ("grpo.num_minibatches", 3, "grpo.num_minibatches=3"),
])
def test_settings_that_cannot_run_are_refused_up_front(key, value, message):
    c = get_config("tiny")
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(c)


def test_the_samples_of_a_group_get_distinct_seeds_that_depend_on_step_and_global_index():
    c = get_config("tiny")
    step_fn = GRPOStep(c, engine=None, tokenizer=None, prompts=None, update_fn=None, mesh=None, image_config=None)
    prompts = [RLPrompt(id=f"p{i}", messages=[{"role": "user", "content": "q"}], images=[], ground_truth="1",
                        task="general") for i in range(3)]
    requests = step_fn._requests(prompts, step=5, first=0)
    assert len(requests) == 3 * c.grpo.group_size
    assert len({r.seed for r in requests}) == len(requests)
    # A process holding prompts 1..2 of the step samples exactly what one process does for them.
    assert [r.seed for r in step_fn._requests(prompts[1:], step=5, first=1)] == [r.seed for r in requests[c.grpo.group_size:]]
    assert {r.seed for r in step_fn._requests(prompts, step=6, first=0)}.isdisjoint(r.seed for r in requests)
