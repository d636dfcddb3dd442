"""Next-token cross-entropy on the tokens the model generated, without materialising the
full [B, L, vocab] logits (vocab is 152k: one 8k-token sequence would need 5 GB of float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.qwen2_5_vl.text import lm_logits


def shifted_targets(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets for position t are token t+1; the mask says whether token t+1 is one the model
    generated (assistant content), so prompts, tool turns and image pads carry no loss."""
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    return targets, mask.astype(jnp.float32)


def cross_entropy_sum(text_params: dict, hidden: jax.Array, targets: jax.Array, mask: jax.Array,
                      chunk_tokens: int = 2048) -> tuple[jax.Array, jax.Array]:
    """Sum of masked token losses and of correct greedy predictions.

    Works over sequence chunks of about `chunk_tokens` tokens (whole batch), each rematerialised
    in the backward pass, so only one chunk's logits are alive at a time.
    """
    b, length, d = hidden.shape
    chunk = max(1, min(length, chunk_tokens // b))
    while length % chunk:  # the largest chunk that divides the (bucketed) length
        chunk -= 1
    n = length // chunk
    split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731

    @jax.checkpoint
    def one_chunk(args):
        h, t, m = args
        logits = lm_logits(text_params, h)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == t).astype(jnp.float32)
        return ((log_z - target_logit) * m).sum(), (correct * m).sum()

    losses, correct = jax.lax.map(one_chunk, (split(hidden), split(targets), split(mask)))
    return losses.sum(), correct.sum()
