"""The GRPO policy loss per token: PPO clipping with separate low/high epsilon and a dual clip,
truncated importance weights against the sampler, an optional KL penalty to a frozen reference,
and the two aggregations (the release's token-mean and Tunix's sequence-mean-token-mean).

Every function here is pure jnp on per-token arrays [B, L] so it can be checked against numpy.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token-mean", "sequence-mean-token-mean")
KL_ESTIMATORS = ("k1", "k3")


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    clip_low: float = 0.2          # ratio floor 1 - clip_low
    clip_high: float = 0.2         # ratio ceiling 1 + clip_high (DAPO's "clip higher" when larger)
    dual_clip: float = 3.0         # caps the loss of negative-advantage tokens at -A * c; 0 = off
    aggregation: str = "token-mean"
    kl_coef: float = 0.0           # 0 = no reference model (the release)
    kl_estimator: str = "k3"
    tis_cap: float = 0.0           # truncated importance weight cap, min(exp(old - sampler), cap); 0 = off
    temperature: float = 1.0       # the sampling temperature; log-probs are recomputed at it

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"loss aggregation {self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.kl_estimator!r} is not one of {KL_ESTIMATORS}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or 0 for off), got {self.dual_clip}")
        if self.temperature <= 0:
            raise ValueError(f"the loss temperature must be > 0, got {self.temperature}")


def clipped_surrogate(log_probs, old_log_probs, advantages, cfg: PolicyLossConfig):
    """(per-token loss, clipped indicator): max(-A r, -A clip(r, 1-lo, 1+hi)), then for A < 0
    at most -A * dual_clip."""
    ratio = jnp.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = jnp.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if cfg.dual_clip:
        cap = -advantages * cfg.dual_clip
        dual = (advantages < 0) & (loss > cap)
        loss = jnp.where(dual, cap, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped


def kl_penalty(log_probs, ref_log_probs, estimator: str):
    """Per-token KL(policy || reference) estimate on sampled tokens: k1 = log p - log q;
    k3 = q/p - log(q/p) - 1 (non-negative, low variance)."""
    delta = ref_log_probs - log_probs
    if estimator == "k1":
        return -delta
    return jnp.exp(delta) - delta - 1.0


def truncated_importance_weights(old_log_probs, sampler_log_probs, cap: float):
    """min(exp(trainer - sampler), cap): corrects for the sampler's numerics differing from the
    trainer's; no gradient flows through it."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(old_log_probs - sampler_log_probs), cap))


def token_weights(mask, aggregation: str):
    """(per-token weights, denominator contribution) of one micro-batch; the loss is
    sum(weights * token loss) over the global batch divided by the summed denominator.
    token-mean: every generated token counts once. sequence-mean-token-mean: each sequence's
    tokens share weight 1, so the mean is over sequences."""
    if aggregation == "token-mean":
        return mask, mask.sum()
    counts = mask.sum(axis=1, keepdims=True)
    return mask / jnp.maximum(counts, 1.0), (counts > 0).sum().astype(jnp.float32)


def policy_loss_terms(log_probs, old_log_probs, advantages, mask, cfg: PolicyLossConfig, *,
                      sampler_log_probs=None, ref_log_probs=None):
    """(weighted loss sum, denominator, metric sums) for one micro-batch of per-token arrays.

    Metric sums are over generated tokens; divide by `tokens` for means."""
    loss, was_clipped = clipped_surrogate(log_probs, old_log_probs, advantages, cfg)
    if cfg.tis_cap:
        loss = loss * truncated_importance_weights(old_log_probs, sampler_log_probs, cfg.tis_cap)
    sums = {"tokens": mask.sum(), "clip_fraction": (was_clipped * mask).sum()}
    if ref_log_probs is not None:
        kl = kl_penalty(log_probs, ref_log_probs, cfg.kl_estimator)
        loss = loss + cfg.kl_coef * kl
        sums["kl"] = jax.lax.stop_gradient(kl * mask).sum()
    if sampler_log_probs is not None:
        gap = jax.lax.stop_gradient(old_log_probs - sampler_log_probs)
        sums["logprob_gap_abs"] = (jnp.abs(gap) * mask).sum()
    weights, denominator = token_weights(mask, cfg.aggregation)
    return (loss * weights).sum(), denominator, sums
