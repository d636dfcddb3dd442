"""The GRPO policy loss against a numpy reference: every clip branch, the dual clip, truncated
importance weights, both KL estimators and both aggregations."""
import numpy as np
import pytest

from train.policy_loss import PolicyLossConfig, kl_penalty, policy_loss_terms, token_weights


def reference_token_loss(logp, old, adv, lo, hi, dual):
    """PPO's clipped surrogate written out branch by branch."""
    out = np.zeros_like(logp)
    for i, (lp, o, a) in enumerate(zip(logp.ravel(), old.ravel(), adv.ravel())):
        r = np.exp(lp - o)
        loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
        if dual and a < 0:
            loss = min(loss, -a * dual)
        out.ravel()[i] = loss
    return out


def test_each_clip_branch_matches_the_reference():
    # ratio 1.5 and 0.5 with positive and negative advantages, 1.0 (inside the trust region),
    # and a ratio of 10 with a negative advantage (the dual clip).
    ratios = np.array([[1.5, 0.5, 1.5, 0.5, 1.0, 10.0]])
    adv = np.array([[1.0, 1.0, -1.0, -1.0, 2.0, -1.0]])
    old = np.full_like(ratios, -1.0)
    logp = old + np.log(ratios)
    mask = np.ones_like(ratios)
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss, denominator, sums = policy_loss_terms(logp, old, adv, mask, cfg)
    expected = reference_token_loss(logp, old, adv, 0.2, 0.28, 3.0)
    # Hand values: 1.5 & A=1 clips to -1.28; 0.5 & A=1 keeps -0.5; 1.5 & A=-1 keeps 1.5;
    # 0.5 & A=-1 clips to 0.8; 1.0 & A=2 is -2; 10 & A=-1 is capped at 3.
    np.testing.assert_allclose(expected, [[-1.28, -0.5, 1.5, 0.8, -2.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(float(loss), expected.sum(), rtol=1e-5)
    assert float(denominator) == 6
    assert float(sums["clip_fraction"]) == 3  # the 1.5/A=1, 0.5/A=-1 and dual-clipped tokens

    no_dual = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=0.0)
    loss, _, _ = policy_loss_terms(logp, old, adv, mask, no_dual)
    np.testing.assert_allclose(float(loss), reference_token_loss(logp, old, adv, 0.2, 0.28, 0).sum(), rtol=1e-5)


def test_aggregations_weigh_tokens_or_sequences():
    rng = np.random.default_rng(0)
    logp, old = rng.normal(size=(2, 2, 5)) * 0.1 - 2
    adv = rng.normal(size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 0], [0, 1, 0, 0, 0]], np.float32)
    per_token = reference_token_loss(logp, old, adv, 0.2, 0.2, 3.0)

    loss, denominator, _ = policy_loss_terms(logp, old, adv, mask, PolicyLossConfig(aggregation="token-mean"))
    np.testing.assert_allclose(float(loss) / float(denominator), (per_token * mask).sum() / 5, rtol=1e-5)

    cfg = PolicyLossConfig(aggregation="sequence-mean-token-mean")
    loss, denominator, _ = policy_loss_terms(logp, old, adv, mask, cfg)
    expected = np.mean([(per_token[0] * mask[0]).sum() / 4, (per_token[1] * mask[1]).sum() / 1])
    np.testing.assert_allclose(float(loss) / float(denominator), expected, rtol=1e-5)
    # A sequence with no generated tokens neither weighs nor counts.
    _, denominator = token_weights(np.zeros((3, 4), np.float32), "sequence-mean-token-mean")
    assert float(denominator) == 0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_estimators(estimator):
    logp = np.array([-1.0, -2.0, -0.5])
    ref = np.array([-1.5, -1.0, -0.5])
    expected = logp - ref if estimator == "k1" else np.exp(ref - logp) - (ref - logp) - 1
    np.testing.assert_allclose(np.asarray(kl_penalty(logp, ref, estimator)), expected, rtol=1e-6)
    if estimator == "k3":
        assert np.all(expected >= 0)

    mask = np.ones_like(logp)
    adv = np.array([0.5, -0.5, 1.0])
    cfg = PolicyLossConfig(kl_coef=0.1, kl_estimator=estimator)
    loss, _, sums = policy_loss_terms(logp, logp, adv, mask, cfg, ref_log_probs=ref)
    np.testing.assert_allclose(float(loss), (-adv + 0.1 * expected).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["kl"]), expected.sum(), rtol=1e-5)


def test_truncated_importance_weights_cap_the_trainer_sampler_ratio():
    old = np.array([-1.0, -1.0, -1.0])
    sampler = np.array([-1.0, -3.0, -0.5])  # weights 1, e^2 capped at 2, e^-0.5
    adv = np.ones(3)
    mask = np.ones(3)
    loss, _, sums = policy_loss_terms(old, old, adv, mask, PolicyLossConfig(tis_cap=2.0), sampler_log_probs=sampler)
    np.testing.assert_allclose(float(loss), -(1.0 + 2.0 + np.exp(-0.5)), rtol=1e-5)
    np.testing.assert_allclose(float(sums["logprob_gap_abs"]), 0 + 2 + 0.5, rtol=1e-5)
    # Off (the release): the sampler's log-probs are only compared, never used.
    loss, _, _ = policy_loss_terms(old, old, adv, mask, PolicyLossConfig(), sampler_log_probs=sampler)
    np.testing.assert_allclose(float(loss), -3.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(aggregation="seq-mean"), dict(kl_estimator="k2"), dict(clip_low=1.0),
                                 dict(dual_clip=0.5), dict(temperature=0.0)])
def test_bad_loss_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        PolicyLossConfig(**bad)
