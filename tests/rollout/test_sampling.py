"""Token choice in the jit (greedy, temperature, top-k, top-p, per-slot keys) and stop triggers."""
import jax
import numpy as np
import pytest

from rollout.sampling import SamplingParams, choose_tokens
from rollout.stops import StopDetector

choose = jax.jit(choose_tokens)
VOCAB = 50


def _logits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, VOCAB)).astype(np.float32) * 3


def _keys(rows: int, seed: int = 0) -> np.ndarray:
    return np.asarray(jax.random.split(jax.random.PRNGKey(seed), rows))


def _params(rows, temperature, top_p=1.0, top_k=0):
    return (np.full(rows, temperature, np.float32), np.full(rows, top_p, np.float32), np.full(rows, top_k, np.int32))


def test_greedy_and_degenerate_filters_pick_the_argmax_with_policy_log_probs():
    logits = _logits(4)
    expected = logits.argmax(-1)
    for temperature, top_p, top_k in [(0.0, 1.0, 0), (1.5, 1.0, 1), (1.0, 1e-6, 0)]:
        tokens, log_probs = choose(logits, _keys(4), *_params(4, temperature, top_p, top_k))
        np.testing.assert_array_equal(tokens, expected)
    scaled = logits / 1.0  # temperature 0 scores under the untempered policy
    reference = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    tokens, log_probs = choose(logits, _keys(4), *_params(4, 0.0))
    np.testing.assert_allclose(log_probs, reference, atol=1e-5)
    _, log_probs = choose(logits, _keys(4), *_params(4, 2.0))
    np.testing.assert_allclose(log_probs, jax.nn.log_softmax(logits / 2.0), atol=1e-5)


def test_filters_restrict_the_support_per_slot():
    rows = 400
    logits = np.broadcast_to(_logits(1, seed=1), (rows, VOCAB))
    top3 = set(np.argsort(-logits[0])[:3].tolist())
    temperature, top_p, top_k = _params(rows, 1.0)
    top_k[: rows // 2] = 3                    # first half: top-k 3
    top_p[rows // 2:] = 0.5                   # second half: nucleus 0.5
    tokens, _ = choose(logits, _keys(rows), temperature, top_p, top_k)
    tokens = np.asarray(tokens)
    assert set(tokens[: rows // 2].tolist()) == top3
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = set(order[: np.searchsorted(np.cumsum(probs[order]), 0.5) + 1].tolist())
    assert set(tokens[rows // 2:].tolist()) <= nucleus and len(set(tokens[rows // 2:].tolist())) > 1


def test_samples_follow_the_tempered_distribution_across_blocks():
    """The draw inverts the CDF block by block; over a vocabulary of several blocks the sample
    frequencies match softmax(logits / temperature)."""
    rows, vocab, temperature = 20000, 1300, 1.5
    logits = np.random.default_rng(3).normal(size=vocab).astype(np.float32) * 4
    tokens, _ = choose(np.broadcast_to(logits, (rows, vocab)), _keys(rows, seed=4), *_params(rows, temperature))
    expected = np.asarray(jax.nn.softmax(logits / temperature))
    observed = np.bincount(np.asarray(tokens), minlength=vocab) / rows
    # The mass of each block and of the 20 likeliest tokens, each within 4 standard errors.
    groups = [np.arange(vocab) // 512 == b for b in range(3)] + [np.arange(vocab) == t
                                                                  for t in np.argsort(-expected)[:20]]
    for group in groups:
        p, q = expected[group].sum(), observed[group].sum()
        assert abs(q - p) < 4 * np.sqrt(p * (1 - p) / rows) + 1e-3


def test_a_slot_sample_depends_only_on_its_own_key():
    logits = _logits(3)
    keys = _keys(3)
    alone, _ = choose(logits[1:2], keys[1:2], *_params(1, 1.0))
    together, _ = choose(logits, keys, *_params(3, 1.0))
    assert int(alone[0]) == int(together[1])


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_stop_triggers_and_host_check(tokenizer):
    detector = StopDetector(tokenizer, vocab_size=151936, always_trigger=[151655])
    stops = ("</code>", "<|im_end|>")
    mask = detector.trigger_mask(stops)
    ids = tokenizer("x = 3</code>", add_special_tokens=False)["input_ids"]
    assert mask[ids[-1]] and not mask[ids[:-1]].any()
    assert mask[151645] and mask[151655] and not mask[151900]  # im_end, image pad; beyond the tokenizer
    assert detector.stop_at_end(ids, stops) == "</code>"
    assert detector.stop_at_end(ids + tokenizer("a > b", add_special_tokens=False)["input_ids"], stops) is None
    assert detector.stop_at_end(ids[:-1], stops) is None
    assert detector.stop_at_end([1, 2, 151645], stops) == "<|im_end|>"
